package activator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// ErrPoolFull: max_running apps run and every one of them is busy, for longer than the
// start may wait.
var ErrPoolFull = errors.New("the pool is full (max_running or memory_budget) and no running app is idle")

// Pool limits what runs on the host as a whole, like Passenger's max_pool_size: how many
// apps run at once (MaxRunning) and how many start at once (StartConcurrency). When a start
// would exceed MaxRunning, the least recently used app without an open connection is
// stopped first (paused apps before running ones); if every running app is busy, the start
// waits, bounded by its start_timeout, instead of overcommitting.
//
// pool.mu is a leaf lock: it is taken while an app's mutex is held (when a slot frees),
// never the other way round.
type Pool struct {
	maxRunning int
	memBudget  int64         // bytes of memory limits that may run at once; 0: no budget
	starts     chan struct{} // one token per start in progress; blocked senders queue FIFO

	mu      sync.Mutex
	running map[*App]bool // apps holding a slot: starting, running, paused or stopping
	// reserved are the slots a dependent's start took for dependencies that have not
	// begun their own start yet (a subset of running); see reserve.
	reserved map[*App]bool
	// first counts, for each app, the starts holding their slots that wait for it as a
	// dependency: its own start goes before the queue, which would otherwise wait for
	// the slots those starts hold.
	first   map[*App]int
	queue   []*slotWaiter // starts waiting for a slot, in arrival order
	waiting int           // starts waiting for a slot
	queued  int           // starts waiting for a start token
	evicted int
}

// NewPool returns a pool; maxRunning 0 means unlimited, startConcurrency 0 means 1.
func NewPool(maxRunning, startConcurrency int) *Pool {
	return &Pool{
		maxRunning: maxRunning,
		starts:     make(chan struct{}, max(startConcurrency, 1)),
		running:    make(map[*App]bool),
		reserved:   make(map[*App]bool),
		first:      make(map[*App]int),
	}
}

// SetMemoryBudget makes the pool keep the sum of the running apps' memory limits (their
// Spec.Memory) at or under bytes, evicting as for MaxRunning; 0 means no budget. An app
// without a limit counts by its measured use (App.SetMemory), 0 until it is measured.
// Call it before any app runs.
func (p *Pool) SetMemoryBudget(bytes int64) {
	p.mu.Lock()
	p.memBudget = bytes
	p.mu.Unlock()
}

// PoolStatus is a snapshot for status and metrics.
type PoolStatus struct {
	Running, MaxRunning    int
	WaitingForSlot, Queued int // starts waiting for a running slot, and for a start token
	Evicted                int
	// MemoryUsed is the sum of the running apps' memory limits (measured use for those
	// without one), MemoryBudget its bound.
	MemoryUsed, MemoryBudget int64
}

// Status returns a snapshot of the pool.
func (p *Pool) Status() PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStatus{Running: len(p.running), MaxRunning: p.maxRunning, WaitingForSlot: p.waiting, Queued: p.queued, Evicted: p.evicted,
		MemoryUsed: p.memUsed(), MemoryBudget: p.memBudget}
}

// missing returns the apps of apps that hold no slot. Called with p.mu held.
func (p *Pool) missing(apps []*App) []*App {
	var m []*App
	for _, a := range apps {
		if !p.running[a] {
			m = append(m, a)
		}
	}
	return m
}

// fits reports whether apps, which hold no slot, may all take one now. Called with p.mu
// held.
func (p *Pool) fits(apps []*App) bool {
	if p.maxRunning > 0 && len(p.running)+len(apps) > p.maxRunning {
		return false
	}
	return p.memBudget <= 0 || p.memUsed()+sumMemory(apps) <= p.memBudget
}

// neverFits reports whether apps could not run together even in an empty pool. Called
// with p.mu held.
func (p *Pool) neverFits(apps []*App) bool {
	return p.maxRunning > 0 && len(apps) > p.maxRunning || p.memBudget > 0 && sumMemory(apps) > p.memBudget
}

func sumMemory(apps []*App) int64 {
	var sum int64
	for _, a := range apps {
		sum += appMemory(a)
	}
	return sum
}

// memUsed is the sum of the memory limits of the apps holding a slot. Called with p.mu
// held.
func (p *Pool) memUsed() int64 {
	var sum int64
	for o := range p.running {
		sum += appMemory(o)
	}
	return sum
}

// appMemory is what a counts against memory_budget: its memory limit, or, without one,
// its measured use while it runs (0 before the first sample).
func appMemory(a *App) int64 {
	if m := a.pol().Spec.Memory; m > 0 {
		return m
	}
	return a.memory.Load()
}

// limits describes the pool's limits for an error.
func (p *Pool) limits() string {
	if p.memBudget > 0 {
		return fmt.Sprintf("max_running %d, memory_budget %d MiB", p.maxRunning, p.memBudget>>20)
	}
	return fmt.Sprintf("max_running %d", p.maxRunning)
}

// admit waits until a may start: a running slot (evicting an idle app if need be), then a
// start token. The caller calls done() when the start is over, and p.release(a) when the
// app stops.
func (p *Pool) admit(ctx context.Context, a *App) (done func(), err error) {
	if _, err := p.reserve(ctx, a, nil); err != nil {
		return nil, err
	}
	p.mu.Lock()
	p.queued++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.queued--
		p.mu.Unlock()
	}()
	select {
	case p.starts <- struct{}{}:
		return func() { <-p.starts }, nil
	case <-ctx.Done():
		p.release(a)
		return nil, fmt.Errorf("waiting for one of %d concurrent starts (start_concurrency): %w", cap(p.starts), ctx.Err())
	}
}

// reserve takes the slots of a and of every app in deps (its dependencies, transitively)
// that holds none, all at once, evicting idle apps if need be; or it waits, holding none,
// in arrival order. Taking them one by one deadlocked: two web+db pairs under
// max_running 2 each held a db's slot and waited for the other's (issue 13). The
// dependencies' own starts claim their slots; the caller passes the reservation to
// unreserve once the dependencies are started, to free any that never were.
func (p *Pool) reserve(ctx context.Context, a *App, deps []*App) (*slotWaiter, error) {
	apps := append([]*App{a}, deps...)
	w := &slotWaiter{app: a, apps: apps, granted: make(chan struct{})}
	p.mu.Lock()
	delete(p.reserved, a) // a dependent reserved it: a's own start claims it
	need := p.missing(apps)
	first := p.first[a] > 0
	if len(need) == 0 || p.fits(need) && (len(p.queue) == 0 || first) {
		p.grant(w, need)
		p.mu.Unlock()
		return w, nil
	}
	if p.neverFits(need) {
		p.mu.Unlock()
		what := fmt.Sprintf("%d running apps", len(need))
		if p.memBudget > 0 {
			what += fmt.Sprintf(" and %d MiB of memory limits", sumMemory(need)>>20)
		}
		return nil, neverFitsError(fmt.Sprintf("%s needs %s at once, more than the pool can ever hold (%s); raise the limit or drop a dependency",
			chain(apps), what, p.limits()))
	}
	// Slots are handed out in arrival order: freed slots go to the first waiter, so
	// that no start starves behind later ones.
	// A dependency that a start holding its slots waits for goes first (it was
	// stopping when that start counted it as running).
	if first {
		p.queue = slices.Insert(p.queue, 0, w)
	} else {
		p.queue = append(p.queue, w)
	}
	p.waiting++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		p.waiting--
		p.mu.Unlock()
	}()
	for {
		p.mu.Lock()
		// The first few waiters (as many as may start at once) make room; the others
		// wait their turn rather than stop more apps than are needed. A waiter makes
		// room for itself and for those ahead of it.
		i := slices.Index(p.queue, w)
		head := i >= 0 && i < cap(p.starts)
		var slots int
		var mem int64
		if head {
			ahead := make(map[*App]bool)
			for _, q := range p.queue[:i+1] {
				for _, x := range p.missing(q.apps) {
					ahead[x] = true
				}
			}
			slots = len(p.running) + len(ahead) - p.maxRunning
			if p.maxRunning <= 0 {
				slots = 0
			}
			mem = p.memUsed() - p.memBudget
			for x := range ahead {
				mem += appMemory(x)
			}
			if p.memBudget <= 0 {
				mem = 0
			}
		}
		others := make([]*App, 0, len(p.running))
		for o := range p.running {
			if !slices.Contains(apps, o) {
				others = append(others, o)
			}
		}
		p.mu.Unlock()
		if head {
			p.makeRoom(others, slots, mem)
		}
		select {
		case <-w.granted:
			return w, nil
		case <-ctx.Done():
			p.mu.Lock()
			if i := slices.Index(p.queue, w); i >= 0 {
				p.queue = slices.Delete(p.queue, i, i+1)
				p.mu.Unlock()
			} else {
				p.mu.Unlock()
				p.unreserve(w)
				p.release(a) // granted just now: pass it on
			}
			return nil, fmt.Errorf("%w (%s): %w", ErrPoolFull, p.limits(), ctx.Err())
		case <-time.After(time.Second):
			// Look again: an app busy a moment ago may be idle now.
		}
	}
}

// makeRoom evicts idle apps among others until slots more slots and mem more bytes will
// be free, counting those that are stopping already.
func (p *Pool) makeRoom(others []*App, slots int, mem int64) {
	if slots <= 0 && mem <= 0 {
		return
	}
	for _, o := range others {
		if o.leaving() {
			slots--
			mem -= appMemory(o)
		}
	}
	for slots > 0 || mem > 0 {
		v := victim(others, nil)
		if v == nil {
			return
		}
		others = slices.DeleteFunc(others, func(o *App) bool { return o == v })
		if v.evict() {
			p.mu.Lock()
			p.evicted++
			p.mu.Unlock()
			slots--
			mem -= appMemory(v)
		}
	}
}

// grant gives w the slots of need. Called with p.mu held.
func (p *Pool) grant(w *slotWaiter, need []*App) {
	for _, x := range w.apps[1:] {
		p.first[x]++
	}
	for _, x := range need {
		p.running[x] = true
		if x != w.app {
			p.reserved[x] = true
			w.owned = append(w.owned, x)
		}
	}
}

// unreserve ends w's reservation once its dependencies are started: it frees the slots
// that no start has claimed (the dependent's start failed before it started them).
func (p *Pool) unreserve(w *slotWaiter) {
	p.mu.Lock()
	for _, x := range w.apps[1:] {
		if p.first[x]--; p.first[x] <= 0 {
			delete(p.first, x)
		}
	}
	p.mu.Unlock()
	for _, x := range w.owned {
		p.mu.Lock()
		left := p.reserved[x]
		p.mu.Unlock()
		if left {
			p.release(x)
		}
	}
}

// chain names an app and its dependencies for an error: "web with its dependencies db,
// cache".
func chain(apps []*App) string {
	if len(apps) == 1 {
		return fmt.Sprintf("app %q", apps[0].Name())
	}
	names := make([]string, len(apps)-1)
	for i, a := range apps[1:] {
		names[i] = a.Name()
	}
	return fmt.Sprintf("app %q with its dependencies %s", apps[0].Name(), strings.Join(names, ", "))
}

// neverFitsError is an ErrPoolFull (for the metric's reason) that says why without
// saying that every app is busy.
type neverFitsError string

func (e neverFitsError) Error() string { return string(e) }
func (e neverFitsError) Unwrap() error { return ErrPoolFull }

type slotWaiter struct {
	app     *App
	apps    []*App // app and its dependencies: the slots it waits for, those it holds not
	owned   []*App // the dependencies' slots granted to it (reserved)
	granted chan struct{}
}

// markRunning gives an app that runs already (adopted) its slot, even over the limit:
// eviction brings the count back down.
func (p *Pool) markRunning(a *App) {
	p.mu.Lock()
	p.running[a] = true
	delete(p.reserved, a)
	p.mu.Unlock()
}

// release frees a's slot. Safe to call for an app without one.
func (p *Pool) release(a *App) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.running[a] {
		return
	}
	delete(p.running, a)
	delete(p.reserved, a)
	// In arrival order, as many as now fit: one slot under max_running, maybe several
	// small apps in the memory a large one left.
	for len(p.queue) > 0 {
		w := p.queue[0]
		need := p.missing(w.apps)
		if !p.fits(need) {
			break
		}
		p.queue = p.queue[1:]
		p.grant(w, need)
		close(w.granted)
	}
}

// victim picks the app to stop for a: among those that can be evicted, paused apps first,
// then the least recently active.
func victim(apps []*App, a *App) *App {
	var best *App
	var bestPaused bool
	var bestLast time.Time
	for _, o := range apps {
		if o == a {
			continue
		}
		ok, paused, last := o.evictable()
		if !ok {
			continue
		}
		if best == nil || paused && !bestPaused || paused == bestPaused && last.Before(bestLast) {
			best, bestPaused, bestLast = o, paused, last
		}
	}
	return best
}
