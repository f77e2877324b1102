package activator

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// backlog is a Source whose kernel the test drives: clients arrive on its channel, and
// every look (once a second) reports the open and busy counts the test sets.
type backlog struct {
	clients  chan string
	open     atomic.Int64
	busy     atomic.Int64
	watching atomic.Int32
	paused   atomic.Int32 // Pending calls for a paused app

	mu      sync.Mutex
	refused []string
}

func newBacklog() *backlog { return &backlog{clients: make(chan string)} }

func (b *backlog) Pending(ctx context.Context, paused bool) (string, error) {
	if paused {
		b.paused.Add(1)
	}
	select {
	case l := <-b.clients:
		return l, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (b *backlog) Refuse(reason string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.refused = append(b.refused, reason)
	return 1
}

func (b *backlog) refusals() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.refused)
}

func (b *backlog) Watch(ctx context.Context, report func(Activity)) {
	b.watching.Add(1)
	defer b.watching.Add(-1)
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		report(Activity{Open: int(b.open.Load()), Busy: int(b.busy.Load())})
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// arrive offers a client to Serve; false if nobody took it within d.
func (b *backlog) arrive(d time.Duration) bool {
	select {
	case b.clients <- "tcp:127.0.0.1:80":
		return true
	case <-time.After(d):
		return false
	}
}

// serveApp runs an App named web with p and Serve with src, until the test ends.
func serveApp(t *testing.T, rt *fake.Runtime, p Policy, src Source) *App {
	p.Spec.Name = "web"
	a := New(rt, p, Options{Dial: rt.Dial})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	wg.Go(func() { a.Serve(ctx, src) })
	t.Cleanup(func() { cancel(); wg.Wait() })
	return a
}

// A client in the backlog starts the app; the Source watches it while it runs, and the
// idle clock stops it; the next client starts it again.
func TestServeStartsForABacklogClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Minute}, b)
		if !b.arrive(time.Second) {
			t.Fatal("Serve did not wait for a client")
		}
		synctest.Wait()
		if st := a.State(); st != Running || b.watching.Load() != 1 {
			t.Fatalf("after a client: %v, %d watches, want running, watched", st, b.watching.Load())
		}
		time.Sleep(61 * time.Second)
		if st := a.Status(); st.State != Stopped || st.StopReason != "idle" || b.watching.Load() != 0 {
			t.Fatalf("a minute idle: %v (%s), %d watches; want stopped for idle, unwatched", st.State, st.StopReason, b.watching.Load())
		}
		if !b.arrive(time.Second) {
			t.Fatal("Serve did not wait for a client after the stop")
		}
		synctest.Wait()
		if starts, _ := rt.Counts(); starts != 2 || a.State() != Running {
			t.Fatalf("%d starts, %v; want 2, running", starts, a.State())
		}
	})
}

// A Refresh of a handed-off app waits until the kernel sees no connection open or
// queued, then restarts it with its new settings.
func TestServeRefreshWaitsForNoneBusy(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		b.open.Store(1)
		b.busy.Store(1)
		a := serveApp(t, rt, Policy{Idle: time.Hour}, b)
		b.arrive(time.Second)
		synctest.Wait()
		a.Refresh()
		time.Sleep(5 * time.Second)
		if st := a.State(); st != Running {
			t.Fatalf("refreshed with a connection open: %v, want running", st)
		}
		b.open.Store(0)
		b.busy.Store(0)
		time.Sleep(2 * time.Second)
		if st := a.Status(); st.State != Stopped || st.StopReason != "config changed" {
			t.Fatalf("refreshed, nothing open: %v (%s), want stopped, config changed", st.State, st.StopReason)
		}
	})
}

// An app that exits on its own soon after a start from the backlog has its queued
// clients refused, and is not started again for a backoff (1s at first).
func TestServeBacksOffAfterAnEarlyExit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Hour}, b)
		b.arrive(time.Second)
		synctest.Wait()
		time.Sleep(time.Second)
		rt.Crash("web")
		synctest.Wait()
		if got := b.refusals(); !slices.Equal(got, []string{"app_exited"}) {
			t.Fatalf("refused %v, want the queued clients refused as app_exited", got)
		}
		if b.arrive(500 * time.Millisecond) {
			t.Fatal("a client was taken during the backoff")
		}
		if !b.arrive(time.Second) {
			t.Fatal("no client taken after the backoff")
		}
		synctest.Wait()
		if starts, _ := rt.Counts(); starts != 2 || a.State() != Running {
			t.Fatalf("%d starts, %v; want 2, running", starts, a.State())
		}
	})
}

// A retired app (a reload took it out) drains while it runs, and once stopped is never
// started again.
func TestServeRetiredNeverStarts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Hour}, b)
		b.arrive(time.Second)
		synctest.Wait()
		if !a.Retire() {
			t.Fatal("Retire says a running app does not run")
		}
		if err := a.StopFor(context.Background(), "removed from config"); err != nil {
			t.Fatal(err)
		}
		if b.arrive(10 * time.Second) {
			t.Error("a retired app's Serve took a client")
		}
		if starts, _ := rt.Counts(); starts != 1 || a.State() != Stopped {
			t.Errorf("%d starts, %v; want 1, stopped", starts, a.State())
		}
	})
}

// An app started by someone else (by hand, keep_warm, a dependent) while Serve waits
// for a client is watched at once: the backlog watch ends with the state it was for.
func TestServeWatchesAnAppStartedElsewhere(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Hour}, b)
		synctest.Wait()
		if err := a.Start(context.Background()); err != nil {
			t.Fatal(err)
		}
		synctest.Wait()
		if b.watching.Load() != 1 {
			t.Fatal("an app started by hand is not watched")
		}
	})
}

// Paused with the sockets: a client in the backlog thaws it.
func TestServeThawsForABacklogClient(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Hour, PauseAfter: 10 * time.Second}, b)
		b.arrive(time.Second)
		time.Sleep(11 * time.Second)
		synctest.Wait()
		if st := a.State(); st != Paused || !rt.IsPaused("web") || b.paused.Load() != 1 {
			t.Fatalf("after pause_after: %v, frozen %v, %d paused waits; want paused, waiting for a client", st, rt.IsPaused("web"), b.paused.Load())
		}
		b.arrive(time.Second)
		synctest.Wait()
		if st := a.State(); st != Running || rt.IsPaused("web") || b.watching.Load() != 1 {
			t.Fatalf("a client while paused: %v, frozen %v; want thawed and watched", st, rt.IsPaused("web"))
		}
		if ev := rt.Events(); !slices.Equal(ev, []string{"start web", "pause web", "unpause web"}) {
			t.Errorf("events %v", ev)
		}
	})
}

var _ backend.Runtime = (*fake.Runtime)(nil)

// Clients refused one after another (the app fails to start) leave no waits behind: a
// flood must not grow what a change of state has to end.
func TestServeRefusedFloodKeepsNoWaits(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := &fake.Runtime{StartErr: errors.New("no such image")}
		b := newBacklog()
		a := serveApp(t, rt, Policy{Idle: time.Hour}, b)
		for range 100 {
			if !b.arrive(time.Second) {
				t.Fatal("Serve stopped taking clients")
			}
		}
		synctest.Wait()
		if n := len(b.refusals()); n < 99 {
			t.Errorf("%d clients refused, want every one", n)
		}
		a.mu.Lock()
		n := len(a.changed)
		a.mu.Unlock()
		if n > 1 {
			t.Errorf("%d waits for a change of state kept, want at most the current one", n)
		}
	})
}
