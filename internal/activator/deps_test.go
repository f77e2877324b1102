package activator

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// depHost runs apps on one pool; deps maps an app to the apps it depends on, and an app
// that is only a dependency is DependencyOnly, as the daemon makes it.
func depHost(t *testing.T, rt *fake.Runtime, pool *Pool, p Policy, deps map[string][]string, names ...string) map[string]*App {
	t.Helper()
	needed := make(map[string]bool)
	for _, ds := range deps {
		for _, d := range ds {
			needed[d] = true
		}
	}
	apps := make(map[string]*App)
	for _, n := range names {
		p := p
		p.Spec.Name = n
		p.DependencyOnly = needed[n] && deps[n] == nil && !strings.HasPrefix(n, "web")
		apps[n] = New(rt, p, Options{Dial: readyDial, Pool: pool})
	}
	for n, ds := range deps {
		var list []*App
		for _, d := range ds {
			list = append(list, apps[d])
		}
		apps[n].SetDependencies(list)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for _, a := range apps {
		wg.Go(func() { a.Run(ctx) })
	}
	t.Cleanup(func() { cancel(); wg.Wait() })
	return apps
}

// peakRunning replays the runtime's history: the most apps started and not yet stopped.
func peakRunning(events []string) int {
	n, peak := 0, 0
	for _, e := range events {
		switch {
		case strings.HasPrefix(e, "start "):
			n++
		case strings.HasPrefix(e, "stop "):
			n--
		}
		peak = max(peak, n)
	}
	return peak
}

// TestDependsOnDoesNotDeadlockPool: max_running 2 and two web+db pairs asked for at once.
// Each start used to take its dependency's slot first and then wait for its own, so each
// pair held one slot and waited for the other's forever. A start now reserves the slots
// of the app and its dependencies together: the first pair runs, the second waits without
// holding a slot, and starts once the first pair can be evicted.
func TestDependsOnDoesNotDeadlockPool(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(2, 2)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second},
			map[string][]string{"web1": {"db1"}, "web2": {"db2"}}, "web1", "db1", "web2", "db2")

		type result struct {
			name string
			l    *Lease
			err  error
		}
		got := make(chan result, 2)
		for _, n := range []string{"web1", "web2"} {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				l, err := apps[n].Acquire(ctx, Wake{Remote: "test"})
				got <- result{n, l, err}
			}()
		}
		first := <-got
		if first.err != nil {
			t.Fatalf("%s not served within 60s: %v (pool %+v, history %v)", first.name, first.err, pool.Status(), rt.Events())
		}
		// The second pair waits without holding a slot while the first one is busy.
		time.Sleep(10 * time.Second)
		synctest.Wait()
		other := map[string]string{"web1": "web2", "web2": "web1"}[first.name]
		otherDB := strings.Replace(other, "web", "db", 1)
		if st := pool.Status(); st.Running != 2 || st.WaitingForSlot != 1 {
			t.Errorf("while %s is busy: pool %+v, want 2 running and 1 start waiting", first.name, st)
		}
		if st := apps[otherDB].Status(); st.State != Stopped {
			t.Errorf("%s is %v while its dependent waits for room: it must not hold a slot", otherDB, st.State)
		}
		first.l.Release()
		second := <-got
		if second.err != nil {
			t.Fatalf("%s not served after %s went idle: %v (pool %+v, history %v)", second.name, first.name, second.err, pool.Status(), rt.Events())
		}
		second.l.Release()
		if p := peakRunning(rt.Events()); p > 2 {
			t.Errorf("%d apps ran at once under max_running 2: %v", p, rt.Events())
		}
		firstDB := strings.Replace(first.name, "web", "db", 1)
		if st := apps[first.name].Status(); st.State != Stopped || st.StopReason != "evicted" {
			t.Errorf("%s: %v (%s), want stopped, evicted", first.name, st.State, st.StopReason)
		}
		if st := apps[firstDB].Status(); st.State != Stopped {
			t.Errorf("%s: %v, want stopped with its dependent", firstDB, st.State)
		}
		for _, n := range []string{second.name, strings.Replace(second.name, "web", "db", 1)} {
			if st := apps[n].Status(); st.State != Running {
				t.Errorf("%s: %v, want running", n, st.State)
			}
		}
	})
}

// TestDependsOnChain: a -> b -> c fills max_running 3 exactly; c, then b, then a start.
func TestDependsOnChain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		pool := NewPool(3, 1)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second},
			map[string][]string{"a": {"b"}, "b": {"c"}}, "a", "b", "c")
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := apps["a"].Acquire(ctx, Wake{})
		if err != nil {
			t.Fatalf("a -> b -> c under max_running 3: %v (pool %+v)", err, pool.Status())
		}
		l.Release()
		if got := strings.Join(rt.Events(), ","); got != "start c,start b,start a" {
			t.Errorf("history %s, want start c, b, then a", got)
		}
		if st := pool.Status(); st.Running != 3 {
			t.Errorf("pool %+v, want 3 running", st)
		}
	})
}

// TestDependsOnEvictsForWholeReservation: max_running 4, p -> q runs with p busy, x runs
// idle. Starting a -> b needs two slots and one is free: x is evicted, never q (older, idle,
// but pinned by its running dependent p), and a and b both start.
func TestDependsOnEvictsForWholeReservation(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		pool := NewPool(4, 2)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second},
			map[string][]string{"p": {"q"}, "a": {"b"}}, "p", "q", "x", "a", "b")
		busy := use(t, apps["p"])
		defer busy.Release()
		time.Sleep(time.Second)
		use(t, apps["x"]).Release()
		time.Sleep(time.Second)

		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		l, err := apps["a"].Acquire(ctx, Wake{})
		if err != nil {
			t.Fatalf("a -> b: %v (pool %+v, history %v)", err, pool.Status(), rt.Events())
		}
		l.Release()
		for n, want := range map[string]State{"p": Running, "q": Running, "x": Stopped, "a": Running, "b": Running} {
			if st := apps[n].Status(); st.State != want {
				t.Errorf("%s: %v (%s), want %v", n, st.State, st.StopReason, want)
			}
		}
		if st := apps["x"].Status(); st.StopReason != "evicted" {
			t.Errorf("x stopped for %q, want evicted", st.StopReason)
		}
		if st := pool.Status(); st.Running != 4 || st.Evicted != 1 {
			t.Errorf("pool %+v, want 4 running after 1 eviction", st)
		}
	})
}

// TestDependsOnMemoryBudget: the reservation counts the memory limits of the app and of
// its dependencies together: with 1 GiB and 512 MiB apps, web1+db1 run, and web2+db2 wait
// without taking memory, then start when the first pair is evicted.
func TestDependsOnMemoryBudget(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(0, 2)
		pool.SetMemoryBudget(1 << 30)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second, Spec: backend.Spec{Memory: 512 << 20}},
			map[string][]string{"web1": {"db1"}, "web2": {"db2"}}, "web1", "db1", "web2", "db2")
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for _, n := range []string{"web1", "web2"} {
			wg.Go(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				l, err := apps[n].Acquire(ctx, Wake{})
				if err != nil {
					errs <- err
					return
				}
				time.Sleep(2 * time.Second)
				l.Release()
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("not served: %v (pool %+v, history %v)", err, pool.Status(), rt.Events())
		}
		if p := peakRunning(rt.Events()); p > 2 {
			t.Errorf("%d apps of 512 MiB ran at once under a 1 GiB budget: %v", p, rt.Events())
		}
	})
}

// TestDependsOnCannotFit: a start that needs more slots than max_running can ever give
// fails at once, naming the limit, instead of waiting QueueWait for nothing.
func TestDependsOnCannotFit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 100 * time.Millisecond})
		pool := NewPool(1, 1)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second},
			map[string][]string{"web": {"db"}}, "web", "db")
		began := time.Now()
		_, err := apps["web"].Acquire(context.Background(), Wake{})
		if err == nil || !strings.Contains(err.Error(), "max_running 1") {
			t.Fatalf("web -> db under max_running 1: %v, want an error naming max_running 1", err)
		}
		t.Logf("refused: %v", err)
		if !errors.Is(err, ErrPoolFull) {
			t.Errorf("%v is not an ErrPoolFull", err)
		}
		if took := time.Since(began); took > time.Second {
			t.Errorf("took %v to fail, want at once", took)
		}
		if st := pool.Status(); st.Running != 0 {
			t.Errorf("pool %+v after the failed start, want nothing held", st)
		}
	})
}

// TestDependsOnDependencyStoppingDuringReserve: web1's db1 is still stopping (its
// dependent just stopped) when web1 is asked for again, so web1's reservation counts db1
// as holding its slot. When db1 then starts again it needs a slot of its own, while web2
// waits for two: db1 must not queue behind web2, whose room only web1 could give back.
func TestDependsOnDependencyStoppingDuringReserve(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(2, 2)
		apps := depHost(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second},
			map[string][]string{"web1": {"db1"}, "web2": {"db2"}}, "web1", "db1", "web2", "db2")
		use(t, apps["web1"]).Release()
		if err := apps["web1"].Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if st := apps["db1"].State(); st != Stopping {
			t.Fatalf("db1 is %v after its dependent stopped, want stopping", st)
		}
		errs := make(chan error, 2)
		for _, n := range []string{"web1", "web2"} {
			go func() {
				ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
				defer cancel()
				l, err := apps[n].Acquire(ctx, Wake{})
				if err == nil {
					l.Release()
				} else {
					err = fmt.Errorf("%s: %w", n, err)
				}
				errs <- err
			}()
			synctest.Wait()
		}
		for range 2 {
			if err := <-errs; err != nil {
				t.Errorf("not served within 60s: %v (pool %+v, history %v)", err, pool.Status(), rt.Events())
			}
		}
	})
}
