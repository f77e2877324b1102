package process

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

func TestStartStopExit(t *testing.T) {
	tests := []struct {
		name       string
		command    []string
		stop       bool
		wantCode   int
		wantReason string
		wantLogs   string
	}{
		{name: "exits by itself", command: []string{"/bin/sh", "-c", "echo bye >&2; exit 3"}, wantCode: 3, wantReason: "exited", wantLogs: "bye"},
		{name: "stopped with SIGTERM", command: []string{"/bin/sh", "-c", "echo up; exec sleep 60"}, stop: true, wantCode: -1, wantReason: "killed by terminated", wantLogs: "up"},
		{name: "ignores SIGTERM, killed after grace", command: []string{"/bin/sh", "-c", "trap '' TERM; echo stubborn; sleep 60 & wait"}, stop: true, wantCode: -1, wantReason: "killed by killed", wantLogs: "stubborn"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rt := New(Options{})
			spec := backend.Spec{Name: "t", Command: tt.command, Port: 1234}
			ctx := context.Background()
			inst, err := rt.Start(ctx, spec)
			if err != nil {
				t.Fatal(err)
			}
			if inst.Upstream.String() != "tcp:127.0.0.1:1234" {
				t.Errorf("upstream %s, want tcp:127.0.0.1:1234", inst.Upstream)
			}
			if _, err := rt.Start(ctx, spec); tt.stop && err == nil {
				t.Errorf("second Start of a running app succeeded")
			}
			if tt.stop {
				time.Sleep(100 * time.Millisecond) // let the shell set its trap
				began := time.Now()
				if err := rt.Stop(ctx, spec, 300*time.Millisecond); err != nil {
					t.Fatal(err)
				}
				if took := time.Since(began); took > 5*time.Second {
					t.Errorf("Stop took %v", took)
				}
			}
			select {
			case e := <-inst.Exited:
				if e.Code != tt.wantCode || e.Reason != tt.wantReason || !strings.Contains(e.Logs, tt.wantLogs) {
					t.Errorf("exit = %+v, want code %d reason %q logs with %q", e, tt.wantCode, tt.wantReason, tt.wantLogs)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("no exit")
			}
		})
	}
}

func TestTailBuffer(t *testing.T) {
	b := &tailBuffer{max: 8}
	b.Write([]byte("0123456789"))
	b.Write([]byte("ab"))
	if got := b.String(); got != "456789ab" {
		t.Errorf("tail = %q, want the last 8 bytes", got)
	}
}

// TestUserAndEnvironment: a plain process runs as its user: with no supplementary group of
// sact's, and sees none of the host service manager's variables.
func TestUserAndEnvironment(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to change user")
	}
	t.Setenv("NOTIFY_SOCKET", "/run/systemd/notify")
	t.Setenv("WATCHDOG_USEC", "1000000")
	t.Setenv("SACT_TEST_KEPT", "yes")
	tests := []struct {
		user, want string
	}{
		{"", "0 0 0"},
		{"65534", "65534 65534 65534"},
		{"nobody", "65534 65534 65534"},
		{"65534:4242", "65534 4242 4242"},
		{"4711", "4711 4711 4711"}, // a uid with no account
	}
	for _, tt := range tests {
		t.Run(tt.user, func(t *testing.T) {
			rt := New(Options{})
			spec := backend.Spec{Name: "u", User: tt.user, Command: []string{"/bin/sh", "-c",
				`echo "$(id -u) $(id -g) $(id -G)"; echo "notify=$NOTIFY_SOCKET watchdog=$WATCHDOG_USEC kept=$SACT_TEST_KEPT"`}}
			inst, err := rt.Start(context.Background(), spec)
			if err != nil {
				t.Fatal(err)
			}
			e := <-inst.Exited
			if !strings.Contains(e.Logs, tt.want+"\n") {
				t.Errorf("ids %q, want %q", e.Logs, tt.want)
			}
			if !strings.Contains(e.Logs, "notify= watchdog= kept=yes") {
				t.Errorf("environment: %q; want no NOTIFY_SOCKET or WATCHDOG_USEC, and other variables kept", e.Logs)
			}
		})
	}
	if _, err := New(Options{}).Start(context.Background(), backend.Spec{Name: "u", User: "no-such-user-sact", Command: []string{"true"}}); err == nil || !strings.Contains(err.Error(), "no such user") {
		t.Errorf("unknown user: %v", err)
	}
}
