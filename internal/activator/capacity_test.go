package activator

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// newHostRuntime is the shared fake as a host of many apps: each start takes StartTime,
// a stop 100 ms, every app is ready at once (readyDial), and it records what happened in
// order.
func newHostRuntime(rt *fake.Runtime) *fake.Runtime {
	rt.StopTime = 100 * time.Millisecond
	return rt
}

// readyDial answers every dial: the upstream of these tests does not matter.
var readyDial = fake.Ready

// host runs apps named names with policy p on one pool.
func host(t *testing.T, rt *fake.Runtime, pool *Pool, p Policy, names ...string) map[string]*App {
	apps := make(map[string]*App)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, n := range names {
		p := p
		p.Spec.Name = n
		a := New(rt, p, Options{Dial: readyDial, Pool: pool})
		apps[n] = a
		wg.Go(func() { a.Run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return apps
}

func use(t *testing.T, a *App) *Lease {
	t.Helper()
	l, err := a.Acquire(context.Background(), Wake{Remote: "test"})
	if err != nil {
		t.Fatalf("%s: %v", a.Name(), err)
	}
	return l
}

func TestPoolEvictsLeastRecentlyUsedIdleApp(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(2, 2)
		apps := host(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second}, "a", "b", "c", "d")

		use(t, apps["a"]).Release()
		time.Sleep(time.Second)
		busy := use(t, apps["b"]) // stays open: b is busy
		time.Sleep(time.Second)
		use(t, apps["a"]).Release() // a is now more recent than b, but b is busy

		use(t, apps["c"]).Release() // full: a is the only idle app
		if got := apps["a"].Status(); got.State != Stopped || got.StopReason != "evicted" {
			t.Fatalf("a: %v (%s), want stopped, evicted", got.State, got.StopReason)
		}
		if apps["b"].Status().State != Running {
			t.Fatalf("busy b was evicted")
		}

		// All running apps busy: a start waits, then goes ahead when one is released.
		busyC := use(t, apps["c"])
		got := make(chan error, 1)
		go func() {
			l, err := apps["d"].Acquire(context.Background(), Wake{})
			if l != nil {
				l.Release()
			}
			got <- err
		}()
		time.Sleep(3 * time.Second)
		select {
		case err := <-got:
			t.Fatalf("d started over max_running while b and c were busy (err %v)", err)
		default:
		}
		if st := pool.Status(); st.WaitingForSlot != 1 || st.Running != 2 {
			t.Errorf("pool status %+v, want 2 running and 1 waiting", st)
		}
		busyC.Release()
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if apps["c"].Status().StopReason != "evicted" || apps["b"].Status().State != Running {
			t.Errorf("c %v/%s, b %v: want c evicted, busy b kept", apps["c"].Status().State, apps["c"].Status().StopReason, apps["b"].Status().State)
		}
		busy.Release()
	})
}

func TestPoolStartConcurrency(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: time.Second})
		names := make([]string, 30)
		for i := range names {
			names[i] = string(rune('A'+i/26)) + string(rune('a'+i%26))
		}
		apps := host(t, rt, NewPool(0, 3), Policy{Idle: time.Hour}, names...)
		var wg sync.WaitGroup
		began := time.Now()
		for _, n := range names {
			wg.Go(func() { use(t, apps[n]).Release() })
		}
		wg.Wait()
		peak := rt.Peak()
		if peak != 3 {
			t.Errorf("at most %d starts at once, want 3 (start_concurrency)", peak)
		}
		if took := time.Since(began); took != 10*time.Second {
			t.Errorf("30 starts of 1s three at a time took %v, want 10s", took)
		}
	})
}

func TestPauseThenWake(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{})
		apps := host(t, rt, nil, Policy{Idle: time.Minute, PauseAfter: 10 * time.Second}, "web")
		web := apps["web"]
		use(t, web).Release()
		time.Sleep(11 * time.Second)
		if st := web.Status().State; st != Paused || !rt.IsPaused("web") {
			t.Fatalf("after pause_after: %v, want paused", st)
		}
		use(t, web).Release()
		if st := web.Status().State; st != Running || rt.IsPaused("web") {
			t.Fatalf("after a connection: %v, want running", st)
		}
		time.Sleep(11 * time.Second) // paused again
		time.Sleep(time.Minute)      // then stopped after idle
		if st := web.Status(); st.State != Stopped || st.StopReason != "idle" {
			t.Fatalf("after idle: %v (%s), want stopped for idle", st.State, st.StopReason)
		}
		want := []string{"start web", "pause web", "unpause web", "pause web", "unpause web", "stop web"}
		if got := rt.Events(); len(got) != len(want) || got[1] != want[1] || got[2] != want[2] || got[len(got)-1] != want[len(want)-1] {
			t.Errorf("history %v, want %v", got, want)
		}
	})
}

func TestKeepRunningWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{})
		start := time.Now()
		// "Open" from the 2nd to the 5th minute of fake time.
		keep := func(now time.Time) bool {
			d := now.Sub(start)
			return d >= 2*time.Minute && d < 5*time.Minute
		}
		apps := host(t, rt, nil, Policy{Idle: 30 * time.Second, KeepRunning: keep}, "office")
		a := apps["office"]
		time.Sleep(time.Minute)
		if a.Status().State != Stopped {
			t.Fatalf("started before its window")
		}
		time.Sleep(90 * time.Second)
		if a.Status().State != Running {
			t.Fatalf("not started within its window")
		}
		time.Sleep(2 * time.Minute) // idle for far longer than idle, inside the window
		if a.Status().State != Running {
			t.Fatalf("stopped for idleness inside its window")
		}
		time.Sleep(2 * time.Minute)
		if st := a.Status(); st.State != Stopped || st.StopReason != "idle" {
			t.Fatalf("after the window: %v (%s), want stopped for idle", st.State, st.StopReason)
		}
	})
}

func TestDependencies(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		db := New(rt, Policy{Spec: backend.Spec{Name: "db"}, Idle: time.Minute, DependencyOnly: true}, Options{Dial: readyDial})
		cache := New(rt, Policy{Spec: backend.Spec{Name: "cache"}, Idle: time.Minute, DependencyOnly: true}, Options{Dial: readyDial})
		web := New(rt, Policy{Spec: backend.Spec{Name: "web"}, Idle: 10 * time.Second}, Options{Dial: readyDial})
		api := New(rt, Policy{Spec: backend.Spec{Name: "api"}, Idle: 20 * time.Second}, Options{Dial: readyDial})
		web.SetDependencies([]*App{db, cache})
		api.SetDependencies([]*App{db})
		var wg sync.WaitGroup
		for _, a := range []*App{db, cache, web, api} {
			wg.Go(func() { a.Run(ctx) })
		}
		defer func() { cancel(); wg.Wait() }()

		use(t, web).Release()
		if got := rt.Events(); len(got) != 3 || got[0] != "start db" || got[1] != "start cache" || got[2] != "start web" {
			t.Fatalf("start order %v, want db, cache, then web", got)
		}
		use(t, api).Release()
		time.Sleep(5 * time.Minute) // far past the dependencies' own idle
		// web stopped after 10s: cache (only web's) went with it; db stays for api until api
		// stops after 20s, then goes too.
		h := rt.Events()
		idx := func(e string) int {
			for i, x := range h {
				if x == e {
					return i
				}
			}
			return -1
		}
		if !(idx("stop web") >= 0 && idx("stop cache") > idx("stop web") && idx("stop api") > idx("stop web") && idx("stop db") > idx("stop api")) {
			t.Errorf("stop order %v: want web, then cache; api, then db", h)
		}
		if st := db.Status(); st.StopReason != "dependents stopped" {
			t.Errorf("db stopped for %q, want dependents stopped", st.StopReason)
		}
	})
}

// Freed slots go to the waiting starts in arrival order.
func TestPoolSlotsInArrivalOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		pool := NewPool(1, 1)
		apps := host(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: time.Minute}, "a", "b", "c", "d")
		busy := use(t, apps["a"])
		var wg sync.WaitGroup
		for _, n := range []string{"b", "c", "d"} {
			l := make(chan *Lease, 1)
			wg.Go(func() { l <- use(t, apps[n]); (<-l).Release() })
			time.Sleep(time.Second) // b, then c, then d queue up
		}
		busy.Release() // a becomes evictable: b goes first, then c, then d
		wg.Wait()
		var order []string
		for _, e := range rt.Events() {
			if strings.HasPrefix(e, "start ") {
				order = append(order, strings.TrimPrefix(e, "start "))
			}
		}
		if got := strings.Join(order, ","); got != "a,b,c,d" {
			t.Errorf("start order %s, want a,b,c,d", got)
		}
	})
}

// TestQueueDoesNotCountAgainstStartTimeout: 10 starts of 1s one at a time take 10s; the
// last waits 9s for its turn with a start_timeout of 2s, and must still start.
func TestQueueDoesNotCountAgainstStartTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: time.Second})
		names := []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}
		apps := host(t, rt, NewPool(0, 1), Policy{Idle: time.Hour, StartTimeout: 2 * time.Second}, names...)
		var wg sync.WaitGroup
		for _, n := range names {
			wg.Go(func() { use(t, apps[n]).Release() })
		}
		wg.Wait()
		for _, n := range names {
			if st := apps[n].Status(); st.State != Running {
				t.Errorf("%s: %v (%s)", n, st.State, st.LastError)
			}
		}
	})
}

// TestMemoryBudget: with 1 GiB of budget and apps limited to 512 MiB, two run at once; a
// third start evicts the least recently used idle one, as max_running would.
func TestMemoryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(0, 2)
		pool.SetMemoryBudget(1 << 30)
		apps := host(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second, Spec: backend.Spec{Memory: 512 << 20}}, "a", "b", "c")
		use(t, apps["a"]).Release()
		time.Sleep(time.Second)
		use(t, apps["b"]).Release()
		if st := pool.Status(); st.MemoryUsed != 1<<30 || st.Running != 2 {
			t.Fatalf("pool after two starts: %+v", st)
		}
		use(t, apps["c"]).Release()
		if got := apps["a"].Status(); got.State != Stopped || got.StopReason != "evicted" {
			t.Errorf("a: %v (%s), want stopped, evicted", got.State, got.StopReason)
		}
		if st := pool.Status(); st.MemoryUsed > 1<<30 {
			t.Errorf("memory used %d MiB over the 1024 MiB budget", st.MemoryUsed>>20)
		}
	})
}

// kernelSource is a Source whose kernel is a counter the test sets: a look every second
// reports it open (and busy), and active when it changed.
type kernelSource struct {
	open    *atomic.Int64
	pending chan string
	refused atomic.Int64
}

func newKernelSource(open *atomic.Int64) *kernelSource {
	return &kernelSource{open: open, pending: make(chan string)}
}

func (k *kernelSource) Pending(ctx context.Context, paused bool) (string, error) {
	select {
	case l := <-k.pending:
		return l, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

func (k *kernelSource) Refuse(string) int { k.refused.Add(1); return 1 }

func (k *kernelSource) Watch(ctx context.Context, report func(Activity)) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	prev := int64(-1)
	for {
		n := k.open.Load()
		report(Activity{Active: n != prev, Open: int(n), Busy: int(n)})
		prev = n
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// serveSource runs Serve for a with src until ctx ends, under wg.
func serveSource(ctx context.Context, wg *sync.WaitGroup, a *App, src Source) {
	wg.Go(func() { a.Serve(ctx, src) })
}

// TestUnseenOpenConnections: connections an app accepted itself (handoff), counted by
// its Source, make it busy as leases do: never evicted, paused or refreshed while one
// is open, and shown in the status (issue 12).
func TestUnseenOpenConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{})
		pool := NewPool(1, 1)
		var open atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		newApp := func(name string, p Policy, src Source) *App {
			p.Spec.Name = name
			a := New(rt, p, Options{Dial: readyDial, Pool: pool})
			wg.Go(func() { a.Run(ctx) })
			if src != nil {
				serveSource(ctx, &wg, a, src)
			}
			return a
		}
		busy := newApp("handoff", Policy{Idle: time.Hour, PauseAfter: 10 * time.Second}, newKernelSource(&open))
		other := newApp("other", Policy{Idle: time.Hour}, nil)

		use(t, busy).Release() // the wake; then the app accepts by itself
		open.Store(1)
		time.Sleep(1500 * time.Millisecond) // the source's next look
		if st := busy.Status(); st.Open != 1 {
			t.Errorf("status shows %d open connections, want the 1 the kernel counts", st.Open)
		}
		time.Sleep(time.Minute) // far past pause_after
		if st := busy.Status().State; st != Running || rt.IsPaused("handoff") {
			t.Fatalf("with a connection open: %v, want running, never paused", st)
		}

		got := make(chan error, 1)
		go func() { got <- other.startWith(context.Background(), Wake{}) }()
		time.Sleep(5 * time.Second)
		select {
		case err := <-got:
			t.Fatalf("the other app started (err %v) over max_running 1 while the handoff app had an open connection", err)
		default:
		}
		if st := busy.Status(); st.State != Running {
			t.Fatalf("busy handoff app: %v (%s), want running", st.State, st.StopReason)
		}
		busy.Refresh()
		if st := busy.Status().State; st != Running {
			t.Fatalf("refreshed with a connection open: %v", st)
		}

		open.Store(0) // the connection ends: evicted for the waiting start, or refreshed
		if err := <-got; err != nil {
			t.Fatal(err)
		}
		if st := busy.Status(); st.State != Stopped || st.StopReason != "evicted" && st.StopReason != "config changed" {
			t.Errorf("after its connection ended: %v (%s), want stopped to make room", st.State, st.StopReason)
		}
	})
}

// TestUnseenOpenPausesAfterClose: a handoff app whose connection ends is paused a
// pause_after later, and idle stops it even while a connection stays open.
func TestUnseenOpenPausesAfterClose(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{})
		var open atomic.Int64
		ctx, cancel := context.WithCancel(context.Background())
		var wg sync.WaitGroup
		defer func() { cancel(); wg.Wait() }()
		a := New(rt, Policy{Spec: backend.Spec{Name: "web"}, Idle: time.Minute, PauseAfter: 10 * time.Second},
			Options{Dial: readyDial})
		wg.Go(func() { a.Run(ctx) })
		serveSource(ctx, &wg, a, newKernelSource(&open))
		use(t, a).Release()
		open.Store(1)
		time.Sleep(30 * time.Second)
		if st := a.State(); st != Running {
			t.Fatalf("open connection: %v, want running", st)
		}
		if err := a.Pause(context.Background()); err == nil || !strings.Contains(err.Error(), "1 open connections") {
			t.Errorf("a pause by hand with a connection open: %v, want refused", err)
		}
		open.Store(0) // the source's next look, within a second, sees it close
		time.Sleep(12 * time.Second)
		if st := a.State(); st != Paused {
			t.Fatalf("a pause_after after the connection ended: %v, want paused", st)
		}

		use(t, a).Release()
		open.Store(1)                        // silent, open for good: idle still stops the app
		time.Sleep(62500 * time.Millisecond) // idle after the look that saw it open

		if st := a.Status(); st.State != Stopped || st.StopReason != "idle" {
			t.Fatalf("a silent connection past idle: %v (%s), want stopped for idle", st.State, st.StopReason)
		}
	})
}
