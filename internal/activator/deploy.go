package activator

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/events"
)

// Deploys without a cold start (issue 17). When what a running app runs changes (a reload
// with a changed spec, a rebuilt image, a restart file, `sact restart`), and the runtime
// is a backend.Deployer, the new incarnation starts beside the old one while the old one
// serves; once the new one is ready, new connections get it, the old one's open
// connections have the drain timeout to end, and it is retired. A new one that does not
// get ready is retired instead and the old one goes on serving; the failure is logged
// and shown in status. The state stays Running throughout: no client ever waits.
//
// A handed-off app (a Source that is a Sharer) has no upstream to move: its new
// incarnation fetches the same listening sockets as the old one, and both accept from
// the same backlogs. While the new one boots the old one takes every client, so nobody
// waits; the new one is ready once it holds a connection it accepted (the kernel's view,
// Share.Taken), or when start_timeout passes without a new connection to take. Then
// the names swap, and the old one is stopped gracefully: SIGTERM (it stops accepting
// and finishes its requests), SIGKILL after the greater of stop_timeout and the drain
// timeout; what waits in the backlogs goes to the new one.
//
// A stopped app needs none of this: its next start makes the new version.

// deployment is one deploy, from its request until its old incarnation is gone.
type deployment struct {
	reason string
	ready  chan struct{} // closed when the new one serves or failed
	err    error         // why it failed; set before ready is closed
	// seen is the version an outside event found outdated, for a deploy only such
	// events asked for; "" once anyone asks (a reload, a restart).
	seen string
}

// deployState is the app's deploy bookkeeping, guarded by App.mu.
type deployState struct {
	cur, queued *deployment
	// draining holds the leases of the incarnation on its way out; drained is closed when
	// the last one ends, and endDrain cuts them short.
	draining map[*Lease]struct{}
	drained  chan struct{}
	endDrain context.CancelFunc
	// For status: the last failed deploy, and the counts since sact started.
	lastErr  error
	deploys  int
	failures int
	// failedVersion is what the last failed deploy tried to run (Deployer.Outdated's
	// version), "" after a success.
	failedVersion string
}

// DrainDefault is the drain timeout when the policy sets none.
const DrainDefault = 10 * time.Second

func (a *App) drainTimeout() time.Duration {
	if d := a.pol().DrainTimeout; d > 0 {
		return d
	}
	return DrainDefault
}

// deployer returns the runtime as a Deployer, or nil.
func (a *App) deployer() backend.Deployer {
	d, _ := a.rt.(backend.Deployer)
	return d
}

// canDeploy reports whether a running app can get its new version beside the old one.
// A handoff app can when its Source shares its sockets with the new incarnation (a
// Sharer). An app only its dependents use (a database) cannot: they connect to it
// themselves, so sact can neither move nor drain their connections, and two of it on
// one volume would both write there.
func (a *App) canDeploy() bool {
	p := a.pol()
	return a.deployer() != nil && (p.Spec.Handoff == nil || a.sharerOf() != nil) && !p.DependencyOnly
}

// sharerOf returns the Source that shares the app's sockets in a deploy, or nil.
func (a *App) sharerOf() Sharer {
	if sh := a.sharer.Load(); sh != nil {
		return *sh
	}
	return nil
}

// Restart restarts the app by hand (sact restart NAME, the dashboard) and waits until its
// new incarnation serves or failed. A running app is deployed: the new one starts beside
// it and no client waits; one that cannot be (a handoff app, a fixed upstream) or a
// paused one is stopped, closing its connections, and started again; a stopped one is
// started.
func (a *App) Restart(ctx context.Context) error {
	a.mu.Lock()
	if a.state == Running && a.canDeploy() && !a.closed {
		d := a.beginDeploy("restart")
		a.mu.Unlock()
		select {
		case <-d.ready:
		case <-ctx.Done():
			return ctx.Err()
		}
		if errors.Is(d.err, backend.ErrCannotDeploy) {
			return a.stopStart(ctx)
		}
		return d.err
	}
	a.mu.Unlock()
	return a.stopStart(ctx)
}

func (a *App) stopStart(ctx context.Context) error {
	if err := a.StopFor(ctx, "restart"); err != nil {
		return fmt.Errorf("stopping %s to restart it: %w", a.Name(), err)
	}
	return a.Start(ctx)
}

// beginDeploy starts a deploy, or queues one behind the deploy under way (which may have
// been made from a spec older than the one asked for now). Called with a.mu held.
func (a *App) beginDeploy(reason string) *deployment {
	if a.dep.cur != nil {
		if a.dep.queued == nil {
			a.dep.queued = &deployment{reason: reason, ready: make(chan struct{})}
		}
		a.dep.queued.seen = "" // asked for: it runs whatever failed before
		return a.dep.queued
	}
	d := &deployment{reason: reason, ready: make(chan struct{})}
	a.dep.cur = d
	old := a.inst
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.deploy(d, old)
	}()
	return d
}

// deploy runs d against the running incarnation old, then any deploy queued meanwhile.
func (a *App) deploy(d *deployment, old *backend.Instance) {
	for d != nil {
		a.deployOnce(d, old)
		a.mu.Lock()
		a.dep.cur, d = nil, a.dep.queued
		a.dep.queued = nil
		if d != nil && d.seen != "" && d.seen == a.dep.failedVersion {
			// Queued by an event (another image tagged) while the version it saw ran its
			// deploy, which failed: not tried again, as after the failure (deployIfChanged).
			close(d.ready)
			d = nil
		}
		if d != nil {
			if a.state != Running || a.closed {
				// Stopped meanwhile: its next start makes the newest version anyway.
				d.err = fmt.Errorf("app %s is no longer running; its next start uses the new version", a.Name())
				close(d.ready)
				d = nil
			} else {
				a.dep.cur = d
				old = a.inst
			}
		}
		a.mu.Unlock()
		if d != nil && d.reason != "restart" && !a.outdated(old) {
			// Asked for while the last one ran, which may have made the newest version
			// already: an image tagged anew meanwhile, a second touch.
			a.mu.Lock()
			a.dep.cur = nil
			a.mu.Unlock()
			close(d.ready)
			d = nil
		}
	}
}

// outdated reports whether inst is not what the app's spec makes now; when that cannot
// be told, it is (a deploy too many costs less than a version missed).
func (a *App) outdated(inst *backend.Instance) bool {
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	why, _, err := a.deployer().Outdated(ctx, a.pol().Spec, inst)
	return why != "" || err != nil
}

func (a *App) deployOnce(d *deployment, old *backend.Instance) {
	dep := a.deployer()
	spec := a.pol().Spec
	began := time.Now()
	untoken := func() {}
	defer func() { untoken() }()
	if a.pool != nil {
		// A reload that changes 250 apps deploys them start_concurrency at a time, as
		// their cold starts would go. The running slot is the app's already.
		qctx, qcancel := context.WithTimeout(a.ctx, QueueWait)
		done, err := a.pool.startToken(qctx)
		qcancel()
		if err != nil {
			a.mu.Lock()
			d.err = fmt.Errorf("deploy not begun: %w", err)
			a.mu.Unlock()
			a.log.Warn("deploy not begun; the old version goes on serving", "reason", d.reason, "err", err)
			close(d.ready)
			return
		}
		untoken = sync.OnceFunc(done)
	}
	ctx, cancel := context.WithTimeout(a.ctx, a.pol().StartTimeout)
	defer cancel()
	_, version, verr := dep.Outdated(ctx, spec, old)
	if verr != nil {
		version = "" // unknown: an image event may try it again
	}
	var share Share
	if sh := a.sharerOf(); sh != nil && spec.Handoff != nil {
		share = sh.Share()
		defer share.End()
	}
	next, err := dep.StartNext(ctx, spec)
	if errors.Is(err, backend.ErrCannotDeploy) {
		// Both would use the same upstream: the old way, a restart once it is idle.
		a.log.Info("app cannot run two incarnations at once; it restarts once no connection is open", "reason", d.reason)
		a.mu.Lock()
		a.refresh = true
		a.refreshIfIdle()
		d.err = err
		close(d.ready)
		a.mu.Unlock()
		return
	}
	ready := a.pol().Ready.String()
	if err == nil {
		a.log.Info("deploying app", "reason", d.reason, "container", next.ID, "old_container", old.ID)
		a.mu.Lock()
		a.deployStep("begun", d.reason, 0, "")
		a.mu.Unlock()
		if share != nil {
			share.Started(next)
			ready, err = a.waitTaken(ctx, next, share)
		} else {
			err = a.waitReady(ctx, next)
		}
		if err != nil {
			if ctx.Err() != nil && a.ctx.Err() == nil && !errors.Is(err, errExited) {
				err = fmt.Errorf("%w: start_timeout %s: %w", ErrStartTimeout, a.pol().StartTimeout, err)
			}
		}
	}
	if err != nil {
		logs := ""
		if next != nil {
			tctx, tcancel := context.WithTimeout(context.WithoutCancel(a.ctx), 5*time.Second)
			if !errors.Is(err, errExited) { // an exit's error carries its logs already
				logs = dep.Tail(tctx, next)
			}
			tcancel()
			a.retire(next, "deploy failed")
		}
		a.mu.Lock()
		a.dep.failures++
		a.dep.failedVersion = version
		a.dep.lastErr = fmt.Errorf("deploy failed (%s): %w", d.reason, err)
		if logs != "" {
			a.dep.lastErr = fmt.Errorf("%w; last log lines:\n%s", a.dep.lastErr, logs)
		}
		d.err = a.dep.lastErr
		a.deployStep("failed", d.reason, time.Since(began), d.err.Error())
		a.mu.Unlock()
		a.log.Error("deploy failed; the old version goes on serving", "reason", d.reason, "err", err, "logs", logs, "duration", time.Since(began), "container", old.ID)
		close(d.ready)
		return
	}

	a.mu.Lock()
	if a.state != Running || a.inst != old || a.closed {
		a.mu.Unlock()
		a.log.Info("app stopped during its deploy; its next start uses the new version", "reason", d.reason)
		a.retire(next, "app stopped during deploy")
		d.err = errors.New("the app stopped during its deploy")
		close(d.ready)
		return
	}
	// The renames are quick, and under the lock no stop can act on the old name meanwhile.
	pctx, pcancel := context.WithTimeout(context.WithoutCancel(a.ctx), 10*time.Second)
	err = dep.Promote(pctx, spec, old, next)
	pcancel()
	if err != nil {
		a.dep.failures++
		a.dep.lastErr = fmt.Errorf("deploy failed (%s): %w", d.reason, err)
		d.err = a.dep.lastErr
		a.deployStep("failed", d.reason, time.Since(began), d.err.Error())
		a.mu.Unlock()
		a.log.Error("deploy failed; the old version goes on serving", "reason", d.reason, "err", err)
		a.retire(next, "deploy failed")
		close(d.ready)
		return
	}
	drained, endDrain := a.swapIn(next)
	a.instHash = spec.Hash
	a.dep.deploys++
	a.dep.lastErr = nil
	a.dep.failedVersion = ""
	took := time.Since(began)
	a.deployStep("ready", d.reason, took, "")
	open := len(a.dep.draining)
	a.mu.Unlock()
	a.log.Info("deployed app; new connections go to the new version", "reason", d.reason, "duration", took,
		"container", next.ID, "old_container", old.ID, "upstream", next.Upstream.String(), "draining", open, "ready", ready)
	close(d.ready)
	untoken() // the start is over; a drain must not hold up other apps' cold starts

	// The old one's connections end on their own, up to the drain timeout.
	t := time.NewTimer(a.drainTimeout())
	defer t.Stop()
	cut := false
	select {
	case <-drained:
	case <-t.C:
		cut = true
	case <-endDrain.Done(): // the app stopped: nothing to wait for
	case <-a.ctx.Done(): // sact exits, its connections drained already
	}
	a.mu.Lock()
	left := len(a.dep.draining)
	a.dep.draining = nil
	a.dep.endDrain = nil
	a.mu.Unlock()
	endDrain.cancel()
	if cut && left > 0 {
		a.log.Info("drain timeout: closing the old version's connections still open", "open_connections", left, "drain_timeout", a.drainTimeout())
	}
	grace := a.pol().StopTimeout
	if share != nil {
		// It accepts from the sockets until it stops: SIGTERM says stop accepting, and
		// its open connections are its own to finish, within the drain timeout too.
		grace = max(grace, a.drainTimeout())
	}
	a.retireWithin(old, "deployed", grace)
	a.mu.Lock()
	a.deployStep("done", d.reason, time.Since(began), "")
	a.mu.Unlock()
}

// waitTaken waits until the new incarnation of a handed-off app has taken a connection
// from the shared sockets, or until ctx (start_timeout) ends without a new connection
// for it to take; it says which, for the log. An exit meanwhile is an error with its
// last log lines, as in waitReady.
func (a *App) waitTaken(ctx context.Context, next *backend.Instance, share Share) (string, error) {
	tctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan error, 1)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		res <- share.Taken(tctx)
	}()
	var err error
	select {
	case err = <-res:
	case e, ok := <-next.Exited:
		cancel()
		<-res
		return "", exitedErr(e, ok)
	}
	switch {
	case err == nil:
		return "it accepted a connection", nil
	case errors.Is(err, ErrNoTraffic) && a.ctx.Err() == nil:
		return "no new connection within start_timeout", nil
	}
	return "", err
}

// deployStep reports a step of a deploy on the event stream: "begun" (the new one runs),
// "ready" (it takes the new connections), "done" (the old one is gone) or "failed";
// Details says why the deploy was made, and for a failure why it failed. Called with
// a.mu held.
func (a *App) deployStep(step, why string, took time.Duration, failure string) {
	e := events.Event{Kind: events.Deploy, Reason: step, Details: why}
	if failure != "" {
		e.Details = failure // names why too: "deploy failed (config changed): ..."
	}
	if took > 0 {
		e.Took = took.Round(time.Millisecond).String()
	}
	a.emit(e)
}

// cancelCtx is a context with its cancel, for the drain.
type cancelCtx struct {
	context.Context
	cancel context.CancelFunc
}

// swapIn makes next the running incarnation: new leases get it, the old ones drain.
// Called with a.mu held.
func (a *App) swapIn(next *backend.Instance) (<-chan struct{}, cancelCtx) {
	oldKill := a.killLive
	a.dep.draining = a.conns
	a.conns = make(map[*Lease]struct{})
	drained := make(chan struct{})
	if len(a.dep.draining) == 0 {
		close(drained)
	}
	a.dep.drained = drained
	ctx, cancel := context.WithCancel(context.WithoutCancel(a.ctx))
	a.dep.endDrain = cancel
	end := cancelCtx{ctx, func() { cancel(); oldKill() }}

	a.closeRoute() // connections already past the relay stay with the old one until it stops
	a.inst = next
	a.openRoute()
	a.live, a.killLive = context.WithCancel(context.WithoutCancel(a.ctx))
	live := a.live
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchExit(next, live)
	}()
	return drained, end
}

// releaseDraining ends a lease of the incarnation being drained. Called with a.mu held.
func (a *App) releaseDraining(l *Lease) {
	if _, ok := a.dep.draining[l]; !ok {
		return
	}
	delete(a.dep.draining, l)
	if len(a.dep.draining) == 0 {
		close(a.dep.drained)
	}
}

// stopDrain ends a drain under way: the app stops, its old incarnation goes too. Called
// with a.mu held.
func (a *App) stopDrain() {
	if a.dep.endDrain != nil {
		a.dep.endDrain()
	}
}

// retire stops and removes an incarnation that serves no more.
func (a *App) retire(inst *backend.Instance, why string) {
	a.retireWithin(inst, why, a.pol().StopTimeout)
}

// retireWithin is retire with grace between SIGTERM and SIGKILL.
func (a *App) retireWithin(inst *backend.Instance, why string, grace time.Duration) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), grace+30*time.Second)
	defer cancel()
	if err := a.deployer().Retire(ctx, a.pol().Spec, inst, grace); err != nil {
		a.log.Warn("cannot remove an old incarnation of the app", "reason", why, "container", inst.ID, "err", err)
		return
	}
	a.log.Info("removed an incarnation of the app", "reason", why, "container", inst.ID)
}

// deployIfChanged deploys the running app if its instance is not what its spec makes now
// (a rebuilt image). A stopped app needs nothing: its next start checks.
func (a *App) deployIfChanged() {
	dep := a.deployer()
	a.mu.Lock()
	inst, running := a.inst, a.state == Running && !a.closed
	a.mu.Unlock()
	if !running || !a.canDeploy() {
		return
	}
	ctx, cancel := context.WithTimeout(a.ctx, 10*time.Second)
	defer cancel()
	why, version, err := dep.Outdated(ctx, a.pol().Spec, inst)
	if err != nil {
		a.log.Warn("cannot tell whether the running app is outdated", "err", err)
		return
	}
	if why == "" {
		return
	}
	a.mu.Lock()
	if version == a.dep.failedVersion {
		// Its deploy failed already: an event for another image must not retry it (a
		// start_timeout each); a new image, a reload or a restart does.
		a.mu.Unlock()
		return
	}
	if a.state == Running && a.inst == inst && !a.closed {
		switch {
		case a.dep.cur == nil:
			a.beginDeploy(why)
		case a.dep.queued == nil:
			// Behind the deploy under way: dropped if that one fails on this version.
			a.dep.queued = &deployment{reason: why, ready: make(chan struct{}), seen: version}
		}
	}
	a.mu.Unlock()
}

// watchOutside subscribes to what the runtime sees happen to the app outside sact; Run
// acts on the events in its own loop (outside), so that a thousand sleeping apps keep no
// goroutine each for it. With a runtime that sees nothing, events is nil.
func (a *App) watchOutside() (events <-chan backend.WatchEvent, cancel func()) {
	w, ok := a.rt.(backend.Watcher)
	if !ok {
		return nil, func() {}
	}
	return w.Watch(a.Name())
}

// outside acts on one event of watchOutside's.
func (a *App) outside(ctx context.Context, ev backend.WatchEvent) {
	switch ev.Kind {
	case backend.Started:
		a.adoptStarted(ctx)
	case backend.ImageChanged:
		a.deployIfChanged()
	}
}

// adoptStarted makes a container started by hand the app's running incarnation, if the
// app is stopped: its idle clock applies from now, and it is stopped when idle.
func (a *App) adoptStarted(ctx context.Context) {
	// A docker restart of the running app: the engine reports its exit before this
	// start, but the exit reaches the activator a moment later (with the container's
	// last log lines). Every start of sact's own is known to the runtime and never
	// reported, so a report while the app runs means that exit is on its way.
	deadline := time.Now().Add(exitArrives)
	for {
		a.mu.Lock()
		state, closed := a.state, a.closed
		a.mu.Unlock()
		if closed || state == Starting || state == Stopped {
			break
		}
		if time.Now().After(deadline) {
			return // it runs, and sact knows it
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(50 * time.Millisecond):
		}
	}
	a.mu.Lock()
	stopped := a.state == Stopped && !a.closed
	a.mu.Unlock()
	if !stopped {
		return // being started by sact, which finds it running and adopts it
	}
	spec := a.pol().Spec
	inst, err := a.rt.Running(ctx, spec)
	if err != nil {
		a.log.Warn("cannot adopt the app's container started outside sact", "err", err)
		return
	}
	if inst == nil {
		return // stopped again already
	}
	// A container started by hand is up before the app in it listens: clients go to it
	// once it is ready, as after a start of sact's own. A client that comes meanwhile
	// starts the app the usual way, which finds the container running and waits for it.
	rctx, cancel := context.WithTimeout(ctx, a.pol().StartTimeout)
	err = a.waitReady(rctx, inst)
	cancel()
	if err != nil {
		a.log.Warn("not adopting the app's container started outside sact: it did not get ready", "container", inst.ID, "reason", err)
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Stopped || a.closed {
		return
	}
	a.log.Info("adopted app started outside sact", "container", inst.ID, "upstream", inst.Upstream.String())
	a.lastErr = nil
	a.becomeRunning(inst)
	a.instHash = spec.Hash
}

// exitArrives bounds how long a start reported by the runtime while the app runs waits
// for the exit of the incarnation it replaced.
const exitArrives = 10 * time.Second

// startToken takes one of the pool's start_concurrency tokens, for a start that needs no
// running slot of its own: a deploy's new incarnation.
func (p *Pool) startToken(ctx context.Context) (func(), error) {
	select {
	case p.starts <- struct{}{}:
		return func() { <-p.starts }, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("waiting for one of %d concurrent starts (start_concurrency): %w", cap(p.starts), ctx.Err())
	}
}
