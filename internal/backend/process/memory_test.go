package process

import (
	"context"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

func TestMemoryUsage(t *testing.T) {
	rt := New(Options{})
	spec := backend.Spec{Name: "mem", Command: []string{"/bin/sh", "-c", "exec sleep 60"}, Port: 1234}
	ctx := context.Background()
	if _, err := rt.MemoryUsage(ctx, spec); err == nil {
		t.Error("a process that does not run has a memory use")
	}
	inst, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rt.Stop(ctx, spec, time.Second); <-inst.Exited }()
	// Start returns once the process is forked: until it has exec'd sleep, it is a few
	// pages of the forking sact (16 KiB seen), so the first reads may be that.
	var n int64
	for deadline := time.Now().Add(10 * time.Second); ; {
		n, err = rt.MemoryUsage(ctx, spec)
		if err != nil {
			t.Fatal(err)
		}
		if n >= 64<<10 || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if n < 64<<10 || n > 64<<20 {
		t.Errorf("sleep uses %d bytes", n)
	}
}

func TestResidentBytes(t *testing.T) {
	if n, err := residentBytes("1000 250 10 1 0 100 0\n", 4096); err != nil || n != 250*4096 {
		t.Errorf("residentBytes = %d, %v", n, err)
	}
	for _, bad := range []string{"", "12", "1 -3 4", "1 x 2"} {
		if _, err := residentBytes(bad, 4096); err == nil {
			t.Errorf("residentBytes(%q) took it", bad)
		}
	}
}
