package activator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// fakeBypass records what the activator asks of its routes. The kernel's view of the
// route's upstream is what the test says: last and open.
type fakeBypass struct {
	rt *fake.Runtime

	mu     sync.Mutex
	log    []string
	last   time.Time
	open   int
	onHold func(*fakeBypass) // called with mu held, as a connect lands just before the hold
}

func (b *fakeBypass) record(e string) {
	_, stops := b.rt.Counts()
	b.log = append(b.log, fmt.Sprintf("%s(stops=%d)", e, stops))
}

func (b *fakeBypass) events() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.log)
}

func (b *fakeBypass) set(last time.Time, open int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.last, b.open = last, open
}

func (b *fakeBypass) Route(*backend.Instance) (Route, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.record("route")
	return &fakeRoute{b}, nil
}

type fakeRoute struct{ b *fakeBypass }

func (r *fakeRoute) Hold() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	r.b.record("hold")
	if r.b.onHold != nil {
		r.b.onHold(r.b)
	}
	return nil
}

func (r *fakeRoute) Resume() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	r.b.record("resume")
	return nil
}

func (r *fakeRoute) LastActive() time.Time {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	return r.b.last
}

func (r *fakeRoute) OpenConns() int {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	return r.b.open
}

func (r *fakeRoute) Connects() uint64 { return 0 }

func (r *fakeRoute) Close() error {
	r.b.mu.Lock()
	defer r.b.mu.Unlock()
	r.b.record("close")
	return nil
}

func bypassHarness(t *testing.T, p Policy) (*harness, *fakeBypass) {
	rt := newFakeRuntime(&fake.Runtime{})
	b := &fakeBypass{rt: rt}
	return newHarnessWith(t, rt, p, Options{Dial: rt.Dial, Bypass: b}), b
}

// TestBypassRoutesOnlyARunningInstance: the route comes with the start, and goes,
// held first, before the idle stop reaches the runtime.
func TestBypassRoutesOnlyARunningInstance(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, b := bypassHarness(t, Policy{Idle: time.Minute})
		defer h.stop()
		h.acquire().Release()
		if !h.app.Bypassed() {
			t.Error("a running app is not bypassed")
		}
		time.Sleep(2 * time.Minute)
		h.wantState(Stopped)
		want := []string{"route(stops=0)", "hold(stops=0)", "close(stops=0)"}
		if got := b.events(); !slices.Equal(got, want) {
			t.Errorf("bypass saw %v, want %v", got, want)
		}
		if h.app.Bypassed() {
			t.Error("a stopped app is bypassed")
		}
	})
}

// TestBypassedTrafficKeepsTheApp: connections that never touch the relay keep the app
// running while the kernel sees them busy, and it stops an idle period after.
func TestBypassedTrafficKeepsTheApp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, b := bypassHarness(t, Policy{Idle: time.Minute})
		defer h.stop()
		h.acquire().Release()
		for range 10 {
			time.Sleep(30 * time.Second)
			b.set(time.Now(), 1)
		}
		h.wantState(Running)
		b.set(time.Now(), 0)
		time.Sleep(time.Minute - time.Second)
		h.wantState(Running)
		time.Sleep(2 * time.Second)
		h.wantState(Stopped)
	})
}

// TestConnectJustBeforeTheHoldKeepsTheApp: a client the program sent past the relay
// just before the hold completes its handshake during the grace: the stop does not go
// ahead, the route comes back.
func TestConnectJustBeforeTheHoldKeepsTheApp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, b := bypassHarness(t, Policy{Idle: time.Minute})
		defer h.stop()
		landed := false
		b.onHold = func(b *fakeBypass) {
			if !landed {
				landed = true
				b.last, b.open = time.Now().Add(routeGrace/2), 1
			}
		}
		h.acquire().Release()
		time.Sleep(time.Minute + time.Second)
		h.wantState(Running)
		if got, want := b.events(), []string{"route(stops=0)", "hold(stops=0)", "resume(stops=0)"}; !slices.Equal(got, want) {
			t.Errorf("bypass saw %v, want %v", got, want)
		}
		b.set(time.Now(), 0)
		time.Sleep(time.Minute + time.Second)
		h.wantState(Stopped)
	})
}

// TestBypassedConnectionBlocksThePause: a connection past the relay cannot be closed
// by sact, so the app is not frozen under it; without one, the route goes before the
// freeze and comes back with the thaw.
func TestBypassedConnectionBlocksThePause(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h, b := bypassHarness(t, Policy{Idle: time.Hour, PauseAfter: 10 * time.Second})
		defer h.stop()
		h.acquire().Release()
		b.set(time.Time{}, 1)
		time.Sleep(time.Minute)
		h.wantState(Running)
		b.set(time.Time{}, 0)
		time.Sleep(time.Minute)
		h.wantState(Paused)
		if h.app.Bypassed() {
			t.Error("a paused app is bypassed")
		}
		h.acquire().Release()
		h.wantState(Running)
		if !h.app.Bypassed() {
			t.Error("a thawed app is not bypassed")
		}
		got := b.events()
		if want := []string{"route(stops=0)", "hold(stops=0)", "close(stops=0)", "route(stops=0)"}; !slices.Equal(got[len(got)-4:], want) {
			t.Errorf("bypass saw %v, want it to end %v", got, want)
		}
	})
}

// refusingBypass cannot route: the kernel refused (no BPF, a namespace gone).
type refusingBypass struct{ calls int }

func (b *refusingBypass) Route(*backend.Instance) (Route, error) {
	b.calls++
	return nil, errors.New("operation not permitted")
}

// TestBypassRefusedRelaysEveryone: a route the kernel refuses leaves the app served by
// the relay, as without a bypass, and says so once per cause, not once per start.
func TestBypassRefusedRelaysEveryone(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newFakeRuntime(&fake.Runtime{})
		b := &refusingBypass{}
		var logs strings.Builder
		var mu sync.Mutex
		log := slog.New(slog.NewTextHandler(writerFunc(func(p []byte) (int, error) {
			mu.Lock()
			defer mu.Unlock()
			return logs.Write(p)
		}), nil))
		app := New(rt, Policy{Spec: backend.Spec{Name: "web"}, Idle: time.Minute}, Options{Dial: rt.Dial, Bypass: b, Logger: log})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error)
		go func() { done <- app.Run(ctx) }()
		defer func() { cancel(); <-done }()
		for range 2 {
			l, err := app.Acquire(context.Background(), Wake{})
			if err != nil {
				t.Fatalf("a client of an app whose bypass is refused: %v", err)
			}
			l.Release()
			if app.Bypassed() {
				t.Error("bypassed although the route was refused")
			}
			time.Sleep(2 * time.Minute) // idle: stopped, and started again by the next
		}
		mu.Lock()
		defer mu.Unlock()
		if b.calls != 2 || strings.Count(logs.String(), "cannot route local clients past the relay") != 1 {
			t.Errorf("%d routes asked, log:\n%s\nwant 2 asks and one line", b.calls, logs.String())
		}
	})
}

type writerFunc func([]byte) (int, error)

func (f writerFunc) Write(p []byte) (int, error) { return f(p) }
