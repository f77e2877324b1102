package activator

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// A reload that changes an app while its start waits for the pool (max_running: 1,
// another app holds the slot) must not restart the instance that then starts: it starts
// with the new config already (issue 13: it was stopped with "config changed" as soon as
// its first connection ended).
func TestRefreshDuringQueuedStartKeepsTheNewInstance(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pool := NewPool(1, 0)
		ctx, cancel := context.WithCancel(context.Background())
		var runs []chan error
		newApp := func(name string) (*App, *fake.Runtime) {
			rt := newFakeRuntime(&fake.Runtime{BootTime: 100 * time.Millisecond})
			a := New(rt, Policy{Spec: backend.Spec{Name: name, Image: "v1", Hash: "h1"}, Idle: time.Hour}, Options{Dial: rt.Dial, Pool: pool})
			done := make(chan error, 1)
			go func() { done <- a.Run(ctx) }()
			runs = append(runs, done)
			return a, rt
		}
		holder, _ := newApp("isolation-holder")
		queued, rt := newApp("isolation-queued")
		defer func() {
			cancel()
			for _, d := range runs {
				if err := <-d; err != nil {
					t.Errorf("Run: %v", err)
				}
			}
		}()

		// The holder runs with a connection open: the pool cannot evict it.
		hl, err := holder.Acquire(context.Background(), Wake{Remote: "test"})
		if err != nil {
			t.Fatalf("holder: %v", err)
		}
		got := make(chan *Lease, 1)
		go func() {
			l, err := queued.Acquire(context.Background(), Wake{Remote: "test"})
			if err != nil {
				t.Errorf("queued: %v", err)
			}
			got <- l
		}()
		time.Sleep(time.Second)
		synctest.Wait()
		if s := queued.Status().State; s != Starting {
			t.Fatalf("queued app is %v, want starting (waiting for the pool)", s)
		}
		// The reload, as the daemon does it for a changed app.
		p := queued.Policy()
		p.Spec.Image, p.Spec.Hash = "v2", "h2"
		queued.SetPolicy(p)
		queued.Refresh()

		hl.Release()
		holder.Stop(context.Background()) // frees the slot
		l := <-got
		if rt.LastSpec().Image != "v2" {
			t.Fatalf("started %q, want v2 (the config of the reload)", rt.LastSpec().Image)
		}
		l.Release()
		time.Sleep(5 * time.Second)
		synctest.Wait()
		if s := queued.Status(); s.State != Running {
			t.Fatalf("queued app is %v (stop reason %q) after its first connection ended, want running: it already runs the new config", s.State, s.StopReason)
		}
		if starts, stops := rt.Counts(); starts != 1 || stops != 0 {
			t.Errorf("starts, stops = %d, %d; want 1, 0", starts, stops)
		}
	})
}
