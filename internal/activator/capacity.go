package activator

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/events"
)

// The capacity features: the pause tier, keep-running rules (min_running, keep_warm),
// dependencies (depends_on) and eviction by the Pool.

// keepRunning reports whether policy says the app must run at now.
func (a *App) keepRunning(now time.Time) bool {
	return a.pol().KeepRunning != nil && a.pol().KeepRunning(now)
}

// startKeepWarm starts the keep_warm loop once. Called with a.mu held, after Run began.
func (a *App) startKeepWarm() {
	a.warming = true
	ctx := a.ctx
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.keepWarm(ctx)
	}()
}

// keepWarm starts the app whenever it must run and does not, checking every 30 seconds
// (keep_warm windows are whole minutes).
func (a *App) keepWarm(ctx context.Context) {
	t := time.NewTicker(30 * time.Second)
	defer t.Stop()
	for {
		if a.keepRunning(time.Now()) {
			a.mu.Lock()
			stopped := a.state == Stopped && !a.closed
			backoff := a.lastErr != nil && time.Since(a.failedAt) < a.failBackoff()
			a.mu.Unlock()
			if stopped && !backoff {
				a.log.Info("keeping app warm", "reason", "min_running or keep_warm")
				sctx, cancel := context.WithTimeout(ctx, a.pol().StartTimeout+5*time.Second)
				a.startWith(sctx, Wake{Remote: "keep_warm"})
				cancel()
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// startWith starts the app if it is stopped and waits for the outcome, like Start but
// honouring the fail-fast backoff.
func (a *App) startWith(ctx context.Context, w Wake) error {
	l, err := a.Acquire(ctx, w)
	if l != nil {
		l.Release()
	}
	return err
}

// startDeps starts the app's dependencies, in order, and pins each so that it keeps
// running while this app does. Called from the start goroutine, without a.mu.
func (a *App) startDeps(ctx context.Context) error {
	a.mu.Lock()
	deps := a.deps
	a.mu.Unlock()
	if len(deps) == 0 {
		return nil
	}
	unpin := func() {
		for _, d := range deps {
			d.unpin()
		}
	}
	// Pinned, a running dependency cannot be evicted while the slots are reserved.
	for _, d := range deps {
		d.pin()
	}
	if a.pool != nil {
		// The slots of this app and of every dependency that does not run are taken
		// together, or none: see Pool.reserve.
		r, err := a.pool.reserve(ctx, a, a.allDeps())
		if err != nil {
			unpin()
			return err
		}
		defer a.pool.unreserve(r)
	}
	for _, d := range deps {
		if err := d.Start(ctx); err != nil {
			unpin()
			return fmt.Errorf("starting dependency %q: %w", d.Name(), err)
		}
	}
	a.mu.Lock()
	if a.state == Stopped || a.state == Stopping {
		// An adopted incarnation that ended meanwhile: nothing to keep them for.
		a.mu.Unlock()
		for _, d := range deps {
			d.unpin()
		}
		return nil
	}
	a.pinned = deps
	a.mu.Unlock()
	return nil
}

// allDeps returns the app's dependencies, transitively, each once, nearest first.
func (a *App) allDeps() []*App {
	seen := map[*App]bool{a: true}
	var all []*App
	for next := []*App{a}; len(next) > 0; {
		o := next[0]
		next = next[1:]
		o.mu.Lock()
		deps := o.deps
		o.mu.Unlock()
		for _, d := range deps {
			if !seen[d] {
				seen[d] = true
				all = append(all, d)
				next = append(next, d)
			}
		}
	}
	return all
}

// leaving reports whether the app is stopping: its slot is about to be freed.
func (a *App) leaving() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state == Stopping
}

// releaseHolds gives back what the incarnation held: its pool slot and its pins on its
// dependencies. Called with a.mu held; pool.mu and the dependencies' mutexes come after
// an app's own in the lock order (dependencies never lock their dependents).
func (a *App) releaseHolds() {
	if a.pool != nil {
		a.pool.release(a)
	}
	for _, d := range a.pinned {
		d.unpin()
	}
	a.pinned = nil
}

// Detach gives up what the app holds (its pool slot, its pins on its dependencies) after
// Run returned, without touching what runs: a reload replaced it by a new App that adopts
// the running instance.
func (a *App) Detach() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.releaseHolds()
}

func (a *App) pin() {
	a.mu.Lock()
	a.pins++
	a.mu.Unlock()
}

// unpin drops a dependent's hold; a dependency-only app stops with its last dependent.
func (a *App) unpin() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.pins--
	if a.pins > 0 || a.closed {
		return
	}
	if a.refresh {
		a.refreshIfIdle()
		return
	}
	switch {
	case a.pol().DependencyOnly && (a.state == Running || a.state == Paused) && !a.keepRunning(time.Now()):
		a.beginStop("dependents stopped", 0)
	case a.state == Running:
		a.armIdle(0) // the idle clock decides from its last activity
	}
}

// evictable reports whether the pool may stop the app to make room: it runs or is paused,
// has no open connection, no running dependent, and no rule to keep it.
func (a *App) evictable() (ok, paused bool, last time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Running && a.state != Paused || a.open() > 0 || a.pins > 0 || a.keepRunning(time.Now()) {
		return false, false, time.Time{}
	}
	return true, a.state == Paused, a.lastActivity()
}

// evict stops the app to make room for another, if it is still evictable.
func (a *App) evict() bool {
	ok, _, last := a.evictable()
	if !ok {
		return false
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Running && a.state != Paused || a.open() > 0 || a.pins > 0 {
		return false
	}
	a.beginStop("evicted", time.Since(last))
	return true
}

// beginPause moves Running -> Pausing -> Paused. Open connections are closed first, as on a
// stop: a request on one would stall in the frozen app with nobody to thaw it, while a new
// connection thaws it. Called with a.mu held.
func (a *App) beginPause(reason string, quiet time.Duration) {
	inst := a.inst
	a.setState(Pausing)
	a.since = time.Now()
	a.done = make(chan struct{})
	done := a.done
	a.killLive()
	open := len(a.conns)
	a.conns = make(map[*Lease]struct{})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), 30*time.Second)
		defer cancel()
		err := a.rt.(backend.Pauser).Pause(ctx, a.pol().Spec)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.live, a.killLive = context.WithCancel(context.WithoutCancel(a.ctx))
		live := a.live
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			a.watchExit(inst, live)
		}()
		if err != nil {
			a.log.Warn("cannot pause app; it keeps running", "err", err)
			a.setState(Running)
			a.armIdle(a.pol().Idle - a.pol().PauseAfter)
		} else {
			a.setState(Paused)
			a.emit(events.Event{Kind: events.Pause, Reason: reason})
			a.log.Info("paused app", "reason", reason, "idle_for", quiet.Round(time.Millisecond), "duration", time.Since(began), "container", inst.ID, "closed_connections", open)
			a.armIdle(max(a.pol().Idle-quiet, 0))
		}
		a.since = time.Now()
		close(done)
	}()
}

// beginWake moves Paused -> Waking -> Running. Called with a.mu held.
func (a *App) beginWake(w Wake) {
	inst := a.inst
	a.setState(Waking)
	a.since = time.Now()
	a.done = make(chan struct{})
	done := a.done
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.pol().StartTimeout)
		defer cancel()
		err := a.rt.(backend.Pauser).Unpause(ctx, a.pol().Spec)
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.log.Error("cannot unpause app; stopping it", "err", err, "remote", w.Remote)
			a.setState(Paused)
			a.beginStop("unpause failed", 0)
			close(done) // the waiters wait again, on the stop
			return
		}
		a.setState(Running)
		a.since = time.Now()
		a.lastActive = a.since
		a.armIdle(a.pol().PauseAfter)
		a.log.Info("woke paused app", "duration", time.Since(began), "container", inst.ID, "remote", w.Remote, "listen", w.Listen)
		close(done)
	}()
}

// idleCheckAfter is how long after activity the idle clock must look again: when the app
// could first be paused, or else stopped.
func (a *App) idleCheckAfter() time.Duration {
	if a.pol().PauseAfter > 0 && a.pol().PauseAfter < a.pol().Idle {
		return a.pol().PauseAfter
	}
	return a.pol().Idle
}

func (a *App) observe(event string, took time.Duration) {
	if a.observer != nil {
		a.observer(a.Name(), event, took)
	}
	e := events.Event{Kind: event, Took: took.Round(time.Millisecond).String()}
	if event == events.StartFailed && a.lastErr != nil {
		e.Details = a.lastErr.Error() // whole, with the app's last log lines
	}
	a.emit(e)
}

// emit reports e for the app. Called with a.mu held.
func (a *App) emit(e events.Event) {
	if a.report != nil {
		e.App = a.Name()
		a.report(e)
	}
}

// countStop counts a stop; stopAsked says whether sact asked for it. Called with a.mu
// held.
func (a *App) countStop(reason string) {
	a.stops[reason]++
	kind := events.Exit
	switch {
	case a.stopAsked && reason == "evicted":
		kind = events.Evict
	case a.stopAsked:
		kind = events.Stop
	}
	a.emit(events.Event{Kind: kind, Reason: reason})
}

// Remember sets the app's last activity as an earlier sact saw it, before Run: status then
// says how long the app has really been without traffic.
func (a *App) Remember(last time.Time) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if last.After(a.lastActive) {
		a.lastActive = last
	}
}

// Pause freezes the running app by hand (admin API); the next connection thaws it, and
// idle still stops it.
func (a *App) Pause(ctx context.Context) error {
	if _, ok := a.rt.(backend.Pauser); !ok {
		return fmt.Errorf("app %q cannot be paused: its runtime cannot freeze processes", a.Name())
	}
	a.mu.Lock()
	if err := a.waitOut(ctx, Starting, Waking, Pausing); err != nil {
		return err
	}
	if a.state != Running {
		st := a.state
		a.mu.Unlock()
		if st == Paused {
			return nil
		}
		return fmt.Errorf("app %q is %s, not running", a.Name(), st)
	}
	if n := a.unseenOpen(); n > 0 {
		a.mu.Unlock()
		return fmt.Errorf("app %q has %d open connections that it accepted itself (handoff) and that sact cannot close: frozen, they would hang; pause it when they have ended, or stop it", a.Name(), n)
	}
	a.beginPause("manual", time.Since(a.lastActivity()))
	done := a.done
	a.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return ctx.Err()
	}
	if st := a.State(); st != Paused {
		return fmt.Errorf("app %q could not be paused (it is %s); see the log", a.Name(), st)
	}
	return nil
}

// waitOut waits while the app is in one of states. It is called with a.mu held and
// returns with it held, except on an error (ctx ended), when it returns with it released.
func (a *App) waitOut(ctx context.Context, states ...State) error {
	for slices.Contains(states, a.state) {
		done := a.done
		a.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		a.mu.Lock()
	}
	return nil
}
