package activator

import (
	"context"
	"errors"
	"fmt"
	"slices"
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
	}
}

// SetMemoryBudget makes the pool keep the sum of the running apps' memory limits (their
// Spec.Memory) at or under bytes, evicting as for MaxRunning; 0 means no budget. An app
// without a limit counts as 0. Call it before any app runs.
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
	// MemoryUsed is the sum of the running apps' memory limits, MemoryBudget its bound.
	MemoryUsed, MemoryBudget int64
}

// Status returns a snapshot of the pool.
func (p *Pool) Status() PoolStatus {
	p.mu.Lock()
	defer p.mu.Unlock()
	return PoolStatus{Running: len(p.running), MaxRunning: p.maxRunning, WaitingForSlot: p.waiting, Queued: p.queued, Evicted: p.evicted,
		MemoryUsed: p.memUsed(), MemoryBudget: p.memBudget}
}

// fits reports whether a, which holds no slot, may take one now. Called with p.mu held.
func (p *Pool) fits(a *App) bool {
	if p.maxRunning > 0 && len(p.running) >= p.maxRunning {
		return false
	}
	return p.memBudget <= 0 || p.memUsed()+appMemory(a) <= p.memBudget
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

func appMemory(a *App) int64 { return a.pol().Spec.Memory }

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
	if err := p.slot(ctx, a); err != nil {
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

func (p *Pool) slot(ctx context.Context, a *App) error {
	p.mu.Lock()
	if p.running[a] || p.fits(a) {
		p.running[a] = true
		p.mu.Unlock()
		return nil
	}
	// Slots are handed out in arrival order: a freed slot goes to the first waiter, so
	// that no start starves behind later ones.
	w := &slotWaiter{app: a, granted: make(chan struct{})}
	p.queue = append(p.queue, w)
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
		// wait their turn rather than stop more apps than are needed.
		head := slices.Index(p.queue, w) < cap(p.starts)
		others := make([]*App, 0, len(p.running))
		for o := range p.running {
			others = append(others, o)
		}
		p.mu.Unlock()
		if head {
			if v := victim(others, a); v != nil && v.evict() {
				p.mu.Lock()
				p.evicted++
				p.mu.Unlock()
			}
		}
		select {
		case <-w.granted:
			return nil
		case <-ctx.Done():
			p.mu.Lock()
			if i := slices.Index(p.queue, w); i >= 0 {
				p.queue = slices.Delete(p.queue, i, i+1)
				p.mu.Unlock()
			} else {
				p.mu.Unlock()
				p.release(a) // granted just now: pass it on
			}
			return fmt.Errorf("%w (%s): %w", ErrPoolFull, p.limits(), ctx.Err())
		case <-time.After(time.Second):
			// Look again: an app busy a moment ago may be idle now.
		}
	}
}

type slotWaiter struct {
	app     *App
	granted chan struct{}
}

// markRunning gives an app that runs already (adopted) its slot, even over the limit:
// eviction brings the count back down.
func (p *Pool) markRunning(a *App) {
	p.mu.Lock()
	p.running[a] = true
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
	// In arrival order, as many as now fit: one slot under max_running, maybe several
	// small apps in the memory a large one left.
	for len(p.queue) > 0 && p.fits(p.queue[0].app) {
		w := p.queue[0]
		p.queue = p.queue[1:]
		p.running[w.app] = true
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
