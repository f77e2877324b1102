package activator

import (
	"context"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend/fake"
)

// TestStopOnExitThawsPausedApps: with on_exit: stop, an app that is paused when sact exits
// is thawed and stopped, not left frozen (issue 13).
func TestStopOnExitThawsPausedApps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{})
		a := New(rt, Policy{Idle: time.Hour, PauseAfter: 10 * time.Second, StopOnExit: true}, Options{Dial: readyDial})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		use(t, a).Release()
		time.Sleep(11 * time.Second)
		if st := a.Status().State; st != Paused {
			t.Fatalf("after pause_after: %v, want paused", st)
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		h := rt.Events()
		if rt.IsPaused("") || !slices.Contains(h, "stop ") || slices.Index(h, "unpause ") > slices.Index(h, "stop ") || slices.Index(h, "unpause ") < 0 {
			t.Errorf("history %q: want the paused app thawed, then stopped", h)
		}
	})
}
