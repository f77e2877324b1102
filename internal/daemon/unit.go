package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/bypass"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/events"
	"github.com/sact-project/sact/internal/front"
	"github.com/sact-project/sact/internal/handoff/host"
	"github.com/sact-project/sact/internal/ingress"
	"github.com/sact-project/sact/internal/relay"
	"github.com/sact-project/sact/internal/sockdiag"
	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// daemon is one running sact: its apps (units), which a reload adds, changes and removes,
// and what they share.
type daemon struct {
	log    *slog.Logger
	opts   Options
	runDir string
	drain  time.Duration

	appsCtx context.Context // parent of every unit's context; ends after connections drain
	rtCtx   context.Context
	rtGroup errgroup.Group
	srv     *relay.Server
	pool    *activator.Pool
	m       *metrics
	// events is the stream of GET /api/events; hist, the apps' daily activity.
	events *events.Hub
	hist   *history

	apps     sync.WaitGroup // the units' goroutines
	retiring sync.WaitGroup // units being taken out by a reload
	errMu    sync.Mutex
	errs     []error // from the activators' Run

	reloading sync.Mutex // one reload at a time; shutdown holds it too

	mu      sync.Mutex // guards what a reload changes, below
	cfg     *config.Config
	rts     map[string]backend.Runtime
	shim    string
	probe   *sockdiag.Prober
	units   map[string]*unit
	fsrv    *front.Server
	httpLns []net.Listener

	writable writableDirs // host directories some app can write: never link through them

	// rtMissing are the runtimes that cannot be set up, with why: their apps' units are
	// dormant until retryRuntimes, woken by rtWake, sets them up (guarded by mu).
	rtMissing map[string]error
	rtWake    chan struct{}

	// counters count handoff apps' connections and bytes in the kernel; nil where
	// it does not allow it (then sock_diag alone judges them, as sact said at start).
	counters *bpfwatch.Watcher
	// bypass sends local clients past the relay (SACT_RELAY=kernel or auto), nil when
	// off; bypassCounters is the watcher it opened for itself, when handoff opened none.
	bypass         *bypass.Bypass
	bypassCounters *bpfwatch.Watcher
	// ingress translates clients elsewhere to running apps, beside the bypass; nil
	// when off (SACT_INGRESS) or refused.
	ingress *ingress.Table
}

// unit is one app: its config, its activator, its listeners and, in handoff mode, what
// watches them.
type unit struct {
	app *config.App
	act *activator.App
	lns []net.Listener // in the order of app.Listen; nil where one cannot be bound
	// lnMu guards lns against the loop that binds what is missing (rebindLoop), and
	// lnsClosed, set once they are closed. Lock order: d.mu, then lnMu.
	lnMu      sync.Mutex
	lnsClosed bool
	rebinding bool            // a rebindLoop runs
	ctx       context.Context // the unit's, once it runs (startUnit)
	// unbound is why some of lns cannot be bound, while they cannot: the app is broken.
	unbound atomic.Pointer[string]
	rebind  chan struct{} // wakes rebindLoop (a reload changed the listeners)
	// dormant is why the unit has no runtime (set before it is published): it never runs,
	// and is replaced once the runtime is set up (noruntime.go).
	dormant string
	handoff *host.App
	spec    backend.Spec
	rt      backend.Runtime

	cancel    context.CancelFunc // ends the unit's goroutines
	stopWatch context.CancelFunc // ends the handoff watch alone
	done      chan struct{}      // closed when they have returned
}

// Backoff between attempts to serve a broken app (a handoff that cannot be set up, a
// listener that cannot be bound, a runtime that cannot be reached).
const (
	brokenRetryFirst = host.BrokenRetryFirst
	brokenRetryMax   = host.BrokenRetryMax
)

// newUnit makes the unit of app with its listeners; nothing runs until startUnit.
func (d *daemon) newUnit(app *config.App, lns []net.Listener, rt backend.Runtime) *unit {
	pol := d.policy(app)
	u := &unit{app: app, lns: lns, spec: pol.Spec, rt: rt, done: make(chan struct{}), rebind: make(chan struct{}, 1)}
	opts := activator.Options{Logger: d.log, Pool: d.pool, Observe: d.m.observe, Dial: d.dialUpstream, Report: d.events.Publish,
		Bypass: d.bypassFor(u)}
	u.act = activator.New(rt, pol, opts)
	if app.Handoff {
		d.setUpHandoff(u)
	}
	return u
}

// policy is app's activator policy, with the handoff entrypoint for a handoff app.
func (d *daemon) policy(app *config.App) activator.Policy {
	pol := policy(app)
	pol.DrainTimeout = d.drain // a deploy's old incarnation drains as a shutdown does
	if app.Handoff {
		pol.Spec = host.Spec(pol.Spec, d.shim, handoffDir(d.runDir, app))
	}
	return pol
}

// setUpHandoff readies a handoff unit's handoff, touching nothing yet: its server is set
// up when the unit runs, after its predecessor, if any, closed its own. It cannot fail:
// an app whose handoff cannot be set up is broken, alone.
func (d *daemon) setUpHandoff(u *unit) {
	act := u.act
	opts := host.Options{Dir: handoffDir(d.runDir, u.app), Probe: d.probe, Counters: d.counters,
		Failed: d.m.fail, SetBroken: d.m.setBroken, Logger: d.log}
	if pr, ok := u.rt.(backend.Pider); ok {
		opts.Pid = func(ctx context.Context) (int, error) { return pr.Pid(ctx, act.Policy().Spec) }
		if ip, ok := u.rt.(backend.InstancePider); ok {
			opts.PidOf = ip.InstancePid // a deploy's new incarnation shares the sockets
		}
	}
	u.handoff = host.New(u.app, u.lns, act, opts)
}

// adminApp is the unit's app as the admin API shows it: broken while its handoff cannot
// be set up.
func (u *unit) adminApp() admin.App {
	if u.dormant != "" {
		reason := u.dormant
		if r := u.unbound.Load(); r != nil {
			reason += "; " + *r
		}
		return dormantApp{brokenApp{App: u.act, reason: reason}}
	}
	if reason := u.unbound.Load(); reason != nil {
		return brokenApp{App: u.act, reason: *reason}
	}
	if u.handoff != nil {
		if reason := u.handoff.Broken(); reason != "" {
			return brokenApp{App: u.act, reason: reason}
		}
		return handoffView{App: u.act, h: u.handoff}
	}
	return u.act
}

// handoffView is a handoff app for the admin API: the connections it accepted itself,
// as the kernel counts them (its open ones are in the activator's own count).
type handoffView struct {
	*activator.App
	h *host.App
}

func (v handoffView) Status() activator.Status {
	st := v.App.Status()
	if accepted, exact := v.h.Counts(); exact {
		st.Accepted = accepted // every connection, the ones that woke the app included
	} else {
		st.Accepted += accepted
	}
	return st
}

// brokenApp is an app that sact cannot serve, for the admin API: its state is "broken",
// its last error says why, and it cannot be started by hand.
type brokenApp struct {
	*activator.App
	reason string
}

func (b brokenApp) Status() activator.Status {
	st := b.App.Status()
	st.State, st.LastError = activator.Broken, b.reason
	return st
}

func (b brokenApp) Start(context.Context) error {
	return fmt.Errorf("app %s is broken: %s; see sact's log, sact retries on its own", b.Name(), b.reason)
}

func (b brokenApp) Restart(ctx context.Context) error { return b.Start(ctx) }

// prepareHandoff readies the shim binary and sock_diag the first time a config has a
// handoff app.
func (d *daemon) prepareHandoff(cfg *config.Config) error {
	if d.shim != "" || !anyHandoff(cfg) {
		return nil
	}
	shim, err := host.PrepareShim(filepath.Join(d.runDir, "handoff"))
	if err != nil {
		return err
	}
	probe, err := sockdiag.New()
	if err != nil {
		return fmt.Errorf("opening sock_diag to watch handed-off sockets: %w", err)
	}
	d.shim, d.probe = shim, probe
	d.counters, err = bpfwatch.Open(bpfwatch.Options{Dir: d.runDir})
	switch {
	case err != nil:
		d.log.Warn("cannot count handoff apps' connections in the kernel; judging them from sock_diag snapshots", "reason", err,
			"risk", "a connection that opens and closes between two looks is missed, so a busy app may be stopped",
			"fix", "run sact as root on Linux 5.7 or later with BTF (6.7 for unix sockets)")
	case d.counters.UnixErr() != nil:
		d.log.Warn("cannot count connections to handoff apps' unix sockets in the kernel; judging them from sock_diag snapshots and CPU time", "reason", d.counters.UnixErr(),
			"fix", "Linux 6.7 or later with BTF")
	default:
		d.log.Info("counting handoff apps' connections in the kernel (eBPF)")
	}
	return nil
}

// runRuntime runs a runtime's own work (the docker event stream) until shutdown.
func (d *daemon) runRuntime(rt backend.Runtime) {
	if r, ok := rt.(backend.Runner); ok {
		d.rtGroup.Go(func() error { return r.Run(d.rtCtx) })
	}
}

// startUnit runs the unit: its activator, then its accept loops or handoff watch. It
// waits for after first (a predecessor of the same name must be gone before this one
// looks for a running instance); meanwhile clients wait in the listeners' backlog.
func (d *daemon) startUnit(u *unit, after []<-chan struct{}) {
	if u.dormant != "" {
		return // no runtime: bringIn starts its successor
	}
	ctx, cancel := context.WithCancel(d.appsCtx)
	watchCtx, stopWatch := context.WithCancel(ctx)
	u.cancel, u.stopWatch = cancel, stopWatch
	u.lnMu.Lock()
	u.ctx = ctx
	missing := u.missing()
	u.rebinding = missing
	u.lnMu.Unlock()
	app := u.app
	if u.handoff != nil {
		u.handoff.WatchListeners() // now, not when its goroutine gets to it: clients come as sact serves
	}
	if missing && u.handoff != nil {
		// Bound with backoff; a handoff app starts once it has them all.
		bound := make(chan struct{})
		after = append(after, bound)
		d.apps.Go(func() { d.rebindLoop(ctx, u, false, bound) })
	}
	d.apps.Add(1)
	go func() {
		defer d.apps.Done()
		defer close(u.done)
		for _, c := range after {
			select {
			case <-c:
			case <-ctx.Done():
				if u.handoff != nil {
					u.handoff.CloseMarks()
				}
				u.closeListeners()
				return
			}
		}
		var watching sync.WaitGroup
		if u.handoff != nil {
			if missing {
				u.handoff.WatchListeners() // the ones bound since
			}
			watching.Go(func() { u.handoff.Run(watchCtx) })
		} else {
			u.lnMu.Lock()
			if !u.lnsClosed {
				for i, ln := range u.lns {
					d.accept(ln, u.act, app.Listen[i].String())
				}
			}
			u.lnMu.Unlock()
			if missing {
				// It serves on those it has; the others are bound with backoff.
				d.apps.Go(func() { d.rebindLoop(ctx, u, true, nil) })
			}
		}
		// This goroutine runs the activator itself: with 1000 apps, every goroutine
		// sleeping per app is megabytes of stack.
		if err := u.act.Run(ctx); err != nil {
			d.errMu.Lock()
			d.errs = append(d.errs, err)
			d.errMu.Unlock()
		}
		watching.Wait()
	}()
}

// accept starts an accept loop on ln for act, if there is one.
func (d *daemon) accept(ln net.Listener, act *activator.App, addr string) {
	if ln == nil {
		return // lost in a reload (logged there)
	}
	d.srv.Accept(ln, act, addr)
}

// closeListeners closes the unit's listeners; nil ones went to another unit.
func (u *unit) closeListeners() {
	u.lnMu.Lock()
	defer u.lnMu.Unlock()
	u.lnsClosed = true
	for _, ln := range u.lns {
		if ln != nil {
			ln.Close()
		}
	}
}

// retire takes a unit out after a reload removed or replaced it: its listeners close at
// once (but those a successor took; a running handoff app's after its drain), its open
// connections get the drain timeout to end, then the app is stopped and its goroutines
// end. The returned channel is closed when all
// that is done.
func (d *daemon) retire(u *unit, reason string) <-chan struct{} {
	if u.dormant != "" {
		// It never ran: nothing to drain or stop.
		u.closeListeners()
		gone := make(chan struct{})
		close(gone)
		d.log.Info("app retired", "app", u.app.Name, "reason", reason)
		return gone
	}
	// A running handoff app holds its sockets and accepts by itself: its listeners stay
	// (a unix one's path is how the kernel's count finds its connections) and its watch
	// counts its open connections until they drain (issue 12: they were cut at once).
	drainHandoff := u.handoff != nil && u.stopWatch != nil && u.act.Retire()
	if !drainHandoff {
		u.closeListeners()
		if u.stopWatch != nil {
			u.stopWatch() // a handoff app must not start again on its way out
		}
	}
	gone := make(chan struct{})
	d.retiring.Add(1)
	go func() {
		defer d.retiring.Done()
		defer close(gone)
		log := d.log.With("app", u.app.Name)
		deadline := time.Now().Add(d.drain)
		for u.act.Status().Open > 0 && time.Now().Before(deadline) && d.appsCtx.Err() == nil {
			time.Sleep(50 * time.Millisecond)
		}
		if drainHandoff {
			u.stopWatch()
			u.closeListeners()
		}
		if d.appsCtx.Err() == nil {
			ctx, cancel := context.WithTimeout(d.appsCtx, u.app.StopTimeout+10*time.Second)
			if err := u.act.StopFor(ctx, reason); err != nil {
				log.Warn("cannot stop app", "reason", reason, "err", err)
			}
			cancel()
		}
		u.cancel()
		<-u.done
		u.act.Detach()
		log.Info("app retired", "reason", reason)
	}()
	return gone
}

// setDependencies points every unit at the units it depends on. Called with d.mu held, or
// before anything runs.
func (d *daemon) setDependencies() {
	for _, u := range d.units {
		var deps []*activator.App
		for _, name := range u.app.DependsOn {
			if dep := d.units[name]; dep != nil {
				deps = append(deps, dep.act)
			}
		}
		u.act.SetDependencies(deps)
	}
}

// acts returns the apps' activators by name.
func (d *daemon) acts() map[string]*activator.App {
	d.mu.Lock()
	defer d.mu.Unlock()
	acts := make(map[string]*activator.App, len(d.units))
	for name, u := range d.units {
		acts[name] = u.act
	}
	return acts
}

// activities puts every app's activity, as the admin API shows it, into sts (for the
// history).
func (d *daemon) activities(sts map[string]activity) {
	d.mu.Lock()
	apps := make([]admin.App, 0, len(d.units))
	for _, u := range d.units {
		apps = append(apps, u.adminApp())
	}
	d.mu.Unlock()
	for _, a := range apps {
		sts[a.Name()] = activityOf(a.Status())
	}
}

// appendUnits appends the units to dst.
func (d *daemon) appendUnits(dst []*unit) []*unit {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, u := range d.units {
		dst = append(dst, u)
	}
	return dst
}

// snapshot returns the units, for shutdown.
func (d *daemon) snapshot() map[string]*unit {
	d.mu.Lock()
	defer d.mu.Unlock()
	return maps.Clone(d.units)
}
