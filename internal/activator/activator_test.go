package activator

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// newFakeRuntime is the shared fake as this file's tests use it: a stop takes 200 ms
// (docker stop takes a while; races happen in there).
func newFakeRuntime(rt *fake.Runtime) *fake.Runtime {
	rt.StopTime = 200 * time.Millisecond
	return rt
}

// harness runs one App under synctest's fake clock.
type harness struct {
	t    *testing.T
	rt   *fake.Runtime
	app  *App
	stop func()
}

func newHarness(t *testing.T, rt *fake.Runtime, p Policy) *harness {
	return newHarnessWith(t, rt, p, Options{Dial: rt.Dial})
}

// newHarnessWith is newHarness with the app's options.
func newHarnessWith(t *testing.T, rt *fake.Runtime, p Policy, opts Options) *harness {
	p.Spec.Name = "web"
	app := New(rt, p, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- app.Run(ctx) }()
	h := &harness{t: t, rt: rt, app: app}
	h.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}
	return h
}

func (h *harness) acquire() *Lease {
	h.t.Helper()
	l, err := h.app.Acquire(context.Background(), Wake{Remote: "test"})
	if err != nil {
		h.t.Fatalf("Acquire: %v", err)
	}
	return l
}

func (h *harness) wantState(want State) {
	h.t.Helper()
	synctest.Wait()
	if got := h.app.Status().State; got != want {
		h.t.Fatalf("state = %v, want %v", got, want)
	}
}

func TestConcurrentFirstConnectionsStartOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{BootTime: 500 * time.Millisecond})
		h := newHarness(t, rt, Policy{Idle: time.Minute})
		defer h.stop()

		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for range 200 {
			wg.Go(func() {
				l, err := h.app.Acquire(context.Background(), Wake{})
				if err != nil {
					errs <- err
					return
				}
				l.Release()
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("Acquire: %v", err)
		}
		if starts, _ := rt.Counts(); starts != 1 {
			t.Errorf("starts = %d, want 1", starts)
		}
		if s := h.app.Status(); s.ColdStarts != 1 || s.Waiting != 0 || s.Open != 0 {
			t.Errorf("status = %+v, want 1 cold start, nobody waiting or open", s)
		}
	})
}

func TestIdle(t *testing.T) {
	const idle = 10 * time.Minute
	tests := []struct {
		name          string
		keepWhileOpen bool
		// activity is run with a lease held open for the whole test.
		activity func(l *Lease)
		// wantRunningAt: still running at this time after the lease was taken.
		wantRunningAt time.Duration
		// wantStoppedAt: stopped by this time.
		wantStoppedAt time.Duration
	}{
		{
			name:          "silent open connection does not keep the app",
			activity:      func(l *Lease) {},
			wantRunningAt: idle - time.Second,
			wantStoppedAt: idle + time.Second,
		},
		{
			name:          "keep_while_open keeps it for a silent connection",
			keepWhileOpen: true,
			activity:      func(l *Lease) {},
			wantRunningAt: 10 * idle,
			wantStoppedAt: -1,
		},
		{
			name: "bytes moving keep it however long",
			activity: func(l *Lease) {
				go func() {
					for range 30 {
						time.Sleep(idle / 2)
						l.Touch()
					}
				}()
			},
			wantRunningAt: 15 * idle,
			wantStoppedAt: 15*idle + idle + time.Second,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rt := newFakeRuntime(&fake.Runtime{})
				h := newHarness(t, rt, Policy{Idle: idle, KeepWhileOpen: tt.keepWhileOpen})
				defer h.stop()
				l := h.acquire()
				began := time.Now()
				tt.activity(l)
				time.Sleep(tt.wantRunningAt - time.Since(began))
				h.wantState(Running)
				if l.Context().Err() != nil {
					t.Fatal("lease cancelled while the app runs")
				}
				if tt.wantStoppedAt < 0 {
					l.Release()
					return
				}
				time.Sleep(tt.wantStoppedAt - time.Since(began))
				h.wantState(Stopped)
				if l.Context().Err() == nil {
					t.Error("open connection not closed when the app stopped")
				}
				l.Release()
				if _, stops := rt.Counts(); stops != 1 {
					t.Errorf("stops = %d, want 1", stops)
				}
				if r := h.app.Status().StopReason; r != "idle" {
					t.Errorf("stop reason = %q, want idle", r)
				}
			})
		})
	}
}

func TestIdleCountsFromLastClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		h := newHarness(t, rt, Policy{Idle: time.Minute, KeepWhileOpen: true})
		defer h.stop()
		l := h.acquire()
		time.Sleep(5 * time.Minute)
		l.Release()
		time.Sleep(time.Minute - time.Second)
		h.wantState(Running)
		time.Sleep(2 * time.Second)
		h.wantState(Stopped)
	})
}

func TestConnectionDuringStopIsServedByFreshStart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{BootTime: 300 * time.Millisecond})
		h := newHarness(t, rt, Policy{Idle: time.Minute})
		defer h.stop()
		h.acquire().Release()
		time.Sleep(time.Minute + 50*time.Millisecond) // the fake stop takes 200ms
		h.wantState(Stopping)
		l := h.acquire()
		defer l.Release()
		if s := h.app.Status(); s.State != Running || s.ColdStarts != 2 {
			t.Errorf("status = %+v, want running after a second cold start", s)
		}
		if starts, stops := rt.Counts(); starts != 2 || stops != 1 {
			t.Errorf("starts, stops = %d, %d; want 2, 1", starts, stops)
		}
	})
}

func TestFailedStart(t *testing.T) {
	tests := []struct {
		name    string
		rt      *fake.Runtime
		wantErr string
		// wantStop: the half-started instance must be stopped.
		wantStop bool
	}{
		{
			name:    "runtime error",
			rt:      newFakeRuntime(&fake.Runtime{StartErr: errors.New(`image "nope:1" not found locally`)}),
			wantErr: `image "nope:1" not found locally`,
		},
		{
			name:     "exits at once",
			rt:       newFakeRuntime(&fake.Runtime{ExitOnStart: &backend.Exit{Code: 3, Reason: "exited", Logs: "boom: no config"}}),
			wantErr:  "exit code 3",
			wantStop: true,
		},
		{
			name:     "never ready",
			rt:       newFakeRuntime(&fake.Runtime{NeverReady: true}),
			wantErr:  "start_timeout 5s",
			wantStop: true,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				h := newHarness(t, tt.rt, Policy{Idle: time.Minute, StartTimeout: 5 * time.Second})
				defer h.stop()

				var wg sync.WaitGroup
				for range 20 {
					wg.Go(func() {
						_, err := h.app.Acquire(context.Background(), Wake{})
						if !errors.Is(err, ErrStartFailed) || !strings.Contains(err.Error(), tt.wantErr) {
							t.Errorf("Acquire error = %v, want %v containing %q", err, ErrStartFailed, tt.wantErr)
						}
					})
				}
				wg.Wait()
				if tt.name == "exits at once" {
					if err := h.app.Status().LastError; !strings.Contains(err, "boom: no config") {
						t.Errorf("last error %q lacks the app's log lines", err)
					}
				}
				starts, stops := tt.rt.Counts()
				if starts != 1 {
					t.Errorf("starts = %d, want 1", starts)
				}
				if tt.wantStop && stops != 1 {
					t.Errorf("stops = %d, want 1", stops)
				}

				// Within the backoff: fail fast, no new start.
				began := time.Now()
				if _, err := h.app.Acquire(context.Background(), Wake{}); !errors.Is(err, ErrStartFailed) {
					t.Errorf("Acquire in backoff = %v, want %v", err, ErrStartFailed)
				}
				if time.Since(began) != 0 {
					t.Errorf("Acquire in backoff took %v, want at once", time.Since(began))
				}
				if starts, _ := tt.rt.Counts(); starts != 1 {
					t.Errorf("starts = %d after backoff hit, want 1", starts)
				}

				// After the backoff: tried again.
				time.Sleep(2 * time.Second)
				h.app.Acquire(context.Background(), Wake{})
				if starts, _ := tt.rt.Counts(); starts != 2 {
					t.Errorf("starts = %d after backoff, want 2", starts)
				}
			})
		})
	}
}

func TestCrashThenNextConnectionStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		h := newHarness(t, rt, Policy{Idle: time.Hour})
		defer h.stop()
		l := h.acquire()
		rt.Crash("web")
		h.wantState(Stopped)
		if l.Context().Err() == nil {
			t.Error("connection to the crashed app not closed")
		}
		if r := h.app.Status().StopReason; r != "killed" {
			t.Errorf("stop reason = %q, want killed", r)
		}
		h.acquire().Release()
		if starts, _ := rt.Counts(); starts != 2 {
			t.Errorf("starts = %d, want 2", starts)
		}
	})
}

func TestAdoptRunning(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		exited := make(chan backend.Exit)
		rt := newFakeRuntime(&fake.Runtime{Adopt: &backend.Instance{ID: "old", Upstream: backend.Addr{Network: "tcp", Address: "app:80"}, Exited: exited}})
		h := newHarness(t, rt, Policy{Idle: time.Minute})
		defer h.stop()
		h.wantState(Running)
		h.acquire().Release()
		if starts, _ := rt.Counts(); starts != 0 {
			t.Errorf("starts = %d, want 0: the running app is adopted", starts)
		}
		// The idle clock starts at adoption.
		time.Sleep(time.Minute + time.Second)
		h.wantState(Stopped)
	})
}

func TestQueueBound(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{BootTime: time.Second})
		h := newHarness(t, rt, Policy{Idle: time.Minute, MaxWaiting: 3})
		defer h.stop()
		results := make(chan error, 5)
		for range 5 {
			go func() {
				l, err := h.app.Acquire(context.Background(), Wake{})
				if err == nil {
					l.Release()
				}
				results <- err
			}()
		}
		var ok, full int
		for range 5 {
			switch err := <-results; {
			case err == nil:
				ok++
			case errors.Is(err, ErrQueueFull):
				full++
			default:
				t.Errorf("Acquire: %v", err)
			}
		}
		if ok != 3 || full != 2 {
			t.Errorf("served %d, refused %d; want 3 and 2", ok, full)
		}
		if s := h.app.Status(); s.Refused != 2 {
			t.Errorf("status refused = %d, want 2", s.Refused)
		}
	})
}

func TestWaiterGivesUp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{BootTime: time.Minute})
		h := newHarness(t, rt, Policy{Idle: time.Hour, StartTimeout: 2 * time.Minute})
		defer h.stop()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if _, err := h.app.Acquire(ctx, Wake{}); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Acquire = %v, want deadline exceeded", err)
		}
		if s := h.app.Status(); s.Waiting != 0 || s.State != Starting {
			t.Errorf("status = %+v, want starting with nobody waiting", s)
		}
	})
}

func TestManualStartStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{BootTime: 100 * time.Millisecond})
		h := newHarness(t, rt, Policy{Idle: time.Hour})
		defer h.stop()
		if err := h.app.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.wantState(Running)
		l := h.acquire()
		if err := h.app.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		h.wantState(Stopped)
		if l.Context().Err() == nil {
			t.Error("manual stop left a connection open")
		}
		if r := h.app.Status().StopReason; r != "manual" {
			t.Errorf("stop reason = %q, want manual", r)
		}
	})
}

func TestStopOnExit(t *testing.T) {
	for _, stopOnExit := range []bool{false, true} {
		synctest.Test(t, func(t *testing.T) {
			rt := newFakeRuntime(&fake.Runtime{})
			h := newHarness(t, rt, Policy{Idle: time.Hour, StopOnExit: stopOnExit})
			h.acquire().Release()
			h.stop()
			want := 0
			if stopOnExit {
				want = 1
			}
			if _, stops := rt.Counts(); stops != want {
				t.Errorf("StopOnExit=%v: stops = %d, want %d", stopOnExit, stops, want)
			}
			if _, err := h.app.Acquire(context.Background(), Wake{}); !errors.Is(err, ErrClosed) {
				t.Errorf("Acquire after Run = %v, want ErrClosed", err)
			}
		})
	}
}

func TestSetPolicyAndRefresh(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		h := newHarness(t, rt, Policy{Spec: backend.Spec{Image: "v1"}, Idle: time.Hour})
		defer h.stop()
		l := h.acquire()
		p := h.app.Policy()
		p.Spec.Image = "v2"
		h.app.SetPolicy(p)
		h.app.Refresh()
		h.wantState(Running) // a connection is open: it is not cut
		if l.Context().Err() != nil {
			t.Fatal("Refresh closed an open connection")
		}
		l.Release()
		time.Sleep(time.Second) // the stop
		h.wantState(Stopped)
		if r := h.app.Status().StopReason; r != "config changed" {
			t.Errorf("stop reason = %q, want config changed", r)
		}
		h.acquire().Release()
		if rt.LastSpec().Image != "v2" {
			t.Errorf("started %q after the refresh, want v2", rt.LastSpec().Image)
		}
		// Refreshed once: the new incarnation is not stopped again.
		h.wantState(Running)
	})
}

func TestSetPolicyShorterIdleAppliesAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		h := newHarness(t, rt, Policy{Idle: time.Hour})
		defer h.stop()
		h.acquire().Release()
		p := h.app.Policy()
		p.Idle = time.Second
		h.app.SetPolicy(p)
		time.Sleep(2 * time.Second)
		h.wantState(Stopped)
		if r := h.app.Status().StopReason; r != "idle" {
			t.Errorf("stop reason = %q, want idle", r)
		}
	})
}

func TestRefreshWaitsForDependents(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		h := newHarness(t, rt, Policy{Idle: time.Hour})
		defer h.stop()
		h.acquire().Release()
		h.app.pin()
		h.app.Refresh()
		h.wantState(Running)
		h.app.unpin()
		time.Sleep(time.Second)
		h.wantState(Stopped)
	})
}
