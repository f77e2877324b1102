package activator

import (
	"context"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/events"
)

// Every start, failed start, stop and exit is reported as an event, in order, and a
// restart of a running app is a stop (reason restart) and a start.
func TestReportAndRestart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var got []string
		var details string
		rt := newFakeRuntime(&fake.Runtime{BootTime: 100 * time.Millisecond})
		app := New(rt, Policy{Spec: backend.Spec{Name: "web"}, Idle: time.Hour}, Options{Dial: rt.Dial, FailBackoff: time.Millisecond,
			Report: func(e events.Event) {
				mu.Lock()
				defer mu.Unlock()
				got = append(got, e.App+" "+e.Kind+" "+e.Reason)
				if e.Kind == events.StartFailed {
					details = e.Details
				}
			}})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- app.Run(ctx) }()
		defer func() { cancel(); <-done }()

		if err := app.Restart(context.Background()); err != nil { // stopped: just a start
			t.Fatal(err)
		}
		if err := app.Restart(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := app.Status(); st.State != Running || st.ColdStarts != 2 || st.Stops["restart"] != 1 {
			t.Errorf("after two restarts: %+v", st)
		}
		rt.Crash("web")
		synctest.Wait()
		rt.Change(func(rt *fake.Runtime) {
			rt.ExitOnStart = &backend.Exit{Code: 1, Reason: "exited", Logs: "line one\nline two"}
		})
		if err := app.Start(context.Background()); err == nil {
			t.Fatal("start of an app that exits at once succeeded")
		}
		mu.Lock()
		defer mu.Unlock()
		want := []string{"web start ", "web stop restart", "web start ", "web exit killed", "web start_failed "}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
		if !strings.Contains(details, "line one\nline two") {
			t.Errorf("start_failed details %q lack the app's log lines", details)
		}
	})
}

// The pool's eviction is an event of its own.
func TestReportEviction(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var got []string
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		pool := NewPool(1, 1)
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		apps := map[string]*App{}
		for _, n := range []string{"a", "b"} {
			a := New(rt, Policy{Spec: backend.Spec{Name: n}, Idle: time.Hour}, Options{Dial: readyDial, Pool: pool,
				Report: func(e events.Event) {
					mu.Lock()
					defer mu.Unlock()
					got = append(got, e.App+" "+e.Kind+" "+e.Reason)
				}})
			apps[n] = a
			wg.Go(func() { a.Run(ctx) })
		}
		for _, n := range []string{"a", "b"} {
			if err := apps[n].Start(context.Background()); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		mu.Lock()
		defer mu.Unlock()
		want := []string{"a start ", "a evict evicted", "b start "}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("events (-want +got):\n%s", diff)
		}
	})
}
