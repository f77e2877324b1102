// Package daemon wires sact together: it binds every app's listeners, runs one activator per
// app with what serves it (the relay's accept loops, package relay; a handed-off app's
// server and kernel watch, package handoff/host; the HTTP front door, package front), and
// applies a reload's diff (reload.go).
//
// Data flows one way: a listener accepts -> the activator hands out an upstream (starting the
// app if it must) -> the proxy relays -> closing the connection tells the activator.
//
// Shutdown (SIGTERM) happens in this order, so that no request in flight is cut short
// needlessly:
//
//  1. listeners close: no new connections are accepted;
//  2. open connections get DrainTimeout to finish on their own, then are closed;
//  3. the apps' activators end: apps keep running (the next sact adopts them) unless the app
//     says on_exit: stop;
//  4. the runtimes end.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/events"
	"github.com/sact-project/sact/internal/front"
	"github.com/sact-project/sact/internal/handoff/host"
	"github.com/sact-project/sact/internal/listen"
	"github.com/sact-project/sact/internal/relay"
)

// Options configure Run; the zero value of each field works. The runtimes come from the
// apps' kinds (config.App.Kind), each built when the first app that needs it is loaded,
// so a config of plain processes never touches Docker.
type Options struct {
	Logger *slog.Logger
	// DrainTimeout is how long open connections may run on after shutdown begins; zero
	// means 10s.
	DrainTimeout time.Duration
	// RunDir holds sact's runtime state: the handoff directories. Default /run/sact.
	RunDir string
	// StateFile keeps the apps' last activity across restarts. Default "": not kept.
	StateFile string
	// Inherited are listening sockets passed by systemd (LISTEN_FDS); apps, the front door
	// and the admin API take theirs from here before binding anew.
	Inherited *listen.Inherited
	// Notify sends systemd readiness and watchdog notifications (sd_notify) when
	// NOTIFY_SOCKET is set.
	Notify bool
	// Load reads the config again for a reload; nil means sact cannot reload.
	Load func(ctx context.Context) (*config.Config, error)
	// Reload asks for a reload (SIGHUP); the admin API's reload needs no channel.
	Reload <-chan struct{}
	// Ready, if set, is called once every listener is bound and every app has been looked
	// at, with the bound addresses (useful when a config says tcp:127.0.0.1:0).
	Ready func(addrs map[string][]net.Addr)
}

// Run serves cfg until ctx ends. An app that cannot bind its listeners is broken and
// bound again with backoff while the others serve; Run returns an error without changing
// anything if no app can bind at all, a runtime cannot be reached, or the front door or
// the admin API cannot be set up.
func Run(ctx context.Context, cfg *config.Config, opts Options) error {
	d := &daemon{log: opts.Logger, opts: opts, runDir: opts.RunDir, drain: opts.DrainTimeout, cfg: cfg,
		events: &events.Hub{}, hist: newHistory(nil)}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	if d.drain <= 0 {
		d.drain = 10 * time.Second
	}
	if d.runDir == "" {
		d.runDir = "/run/sact"
	}
	log := d.log

	// An app whose runtime cannot be set up is broken, and waits for it: the others serve.
	rts, rtFailed := d.buildEach(ctx, cfg, nil, nil)
	if err := noRuntimeServes(cfg, rts, rtFailed); err != nil {
		return err
	}
	d.rts, d.rtMissing, d.rtWake = rts, rtFailed, make(chan struct{}, 1)
	if err := d.prepareHandoff(cfg); err != nil {
		return err
	}
	d.addWritable(cfg, rts)
	d.prepareBypass()
	defer func() {
		d.closeBypass()
		if d.probe != nil {
			d.probe.Close()
		}
		if d.counters != nil {
			d.counters.Close()
		}
	}()
	// Handoff apps that still run from an earlier sact hold its listening sockets: take
	// them back rather than bind new ones, which their addresses would refuse.
	reclaimed := make(map[string][]net.Listener)
	for _, app := range cfg.Apps {
		if app.Handoff && rts[runtimeKind(app)] != nil {
			spec := host.Spec(app.Spec(), d.shim, handoffDir(d.runDir, app))
			if lns := takeBack(ctx, log, rts[runtimeKind(app)], app, spec); lns != nil {
				reclaimed[app.Name] = lns
			}
		}
	}

	// An app that cannot bind is broken and bound again later: the others serve.
	lns, unbound := bindAll(ctx, cfg, reclaimed, opts.Inherited)
	if err := nothingServes(cfg, lns, unbound); err != nil {
		closeListeners(lns)
		return err
	}

	// Three lifetimes, ended in order: accepting, connections, apps and runtimes.
	appsCtx, stopApps := context.WithCancel(context.WithoutCancel(ctx))
	defer stopApps()
	d.appsCtx = appsCtx
	connsCtx, closeConns := context.WithCancel(context.WithoutCancel(ctx))
	defer closeConns()

	rtCtx, stopRuntimes := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRuntimes()
	d.rtCtx = rtCtx
	for _, rt := range rts {
		d.runRuntime(rt)
	}

	d.pool = activator.NewPool(cfg.Pool.MaxRunning, cfg.Pool.StartConcurrency)
	d.pool.SetMemoryBudget(cfg.Pool.MemoryBudget)
	d.m = newMetrics()
	d.srv = relay.NewServer(connsCtx, relay.Options{Logger: log, Failed: d.m.fail, Relayed: d.m.relay})
	relay.LogMode(log)
	d.units = make(map[string]*unit)
	closeAll := func() {
		for _, u := range d.units {
			if u.handoff != nil {
				u.handoff.Close()
			}
		}
		closeListeners(lns)
	}
	for _, app := range cfg.Apps {
		// A handoff app's server is set up when it runs: if that fails, the app is
		// broken and retried, and every other app serves.
		rt, rtErr := d.runtimeFor(app, rts, rtFailed)
		u := d.newUnit(app, lns[app.Name], rt)
		if rtErr != nil {
			d.markDormant(u, rtErr)
		}
		if err := unbound[app.Name]; err != nil {
			d.setUnbound(u, "cannot bind its listeners: "+err.Error())
		}
		d.units[app.Name] = u
	}
	d.setDependencies()
	routes, def, err := d.routes(cfg, d.units)
	var httpUnbound []unboundAddr
	if err == nil {
		d.fsrv, d.httpLns, httpUnbound, err = frontDoor(ctx, cfg, routes, def, opts.Inherited, log, d.m.fail)
	}
	if err == nil && len(httpUnbound) > 0 && len(d.httpLns) == 0 && !anyBound(lns) {
		var reasons []string
		for _, u := range httpUnbound {
			reasons = append(reasons, u.err.Error())
		}
		err = fmt.Errorf("nothing can serve: the http front door cannot bind: %s", strings.Join(reasons, "; "))
		if appsErr := nothingServes(&config.Config{Apps: cfg.Apps}, lns, unbound); appsErr != nil {
			err = fmt.Errorf("%w; and %w", err, appsErr)
		}
	}
	if err == nil {
		var stopAdmin func()
		if stopAdmin, err = d.startAdmin(ctx, cfg); err == nil {
			defer stopAdmin()
		} else {
			for _, ln := range d.httpLns {
				ln.Close()
			}
		}
	}
	if err != nil {
		closeAll()
		return err
	}
	if rest := opts.Inherited.Rest(); len(rest) > 0 {
		log.Warn("closing sockets passed by systemd that no app claims", "sockets", rest, "reason", "name them after an app (FileDescriptorName=) or give the same address in sact.yaml")
	}
	var saving sync.WaitGroup
	if opts.StateFile != "" {
		d.hist.load(opts.StateFile, d.acts(), log)
	}
	saveCtx, stopSaving := context.WithCancel(context.WithoutCancel(ctx))
	defer func() { stopSaving(); saving.Wait() }()
	saving.Go(func() { d.hist.keep(saveCtx, opts.StateFile, d.activities, log) })
	var retrying sync.WaitGroup // runtimes that could not be set up
	retryCtx, stopRetrying := context.WithCancel(ctx)
	defer func() { stopRetrying(); retrying.Wait() }()
	retrying.Go(func() { d.retryRuntimes(retryCtx, d.rtWake) })
	var restarting sync.WaitGroup // touches of restart_file (issue 14)
	rctx, stopRestarting := context.WithCancel(ctx)
	defer func() { stopRestarting(); restarting.Wait() }()
	restarting.Go(func() { d.watchRestartFiles(rctx) })
	var metering sync.WaitGroup // samples of the running apps' memory
	mctx, stopMetering := context.WithCancel(ctx)
	defer func() { stopMetering(); metering.Wait() }()
	metering.Go(func() { d.meterMemory(mctx, memoryEvery) })
	addrs := make(map[string][]net.Addr)
	for _, app := range cfg.Apps {
		u := d.units[app.Name]
		d.startUnit(u, nil)
		for _, ln := range u.listeners() {
			if ln != nil { // bound later (broken meanwhile)
				addrs[app.Name] = append(addrs[app.Name], ln.Addr())
			}
		}
	}
	var fronting sync.WaitGroup
	for _, ln := range d.httpLns {
		addrs["http"] = append(addrs["http"], ln.Addr())
		fronting.Go(func() {
			if err := d.fsrv.Serve(ln); err != nil {
				log.Error("http front door stopped", "listen", ln.Addr().String(), "reason", err)
			}
		})
	}
	// A front door address that cannot be bound is bound again with backoff; the apps'
	// own listeners and the front door's others serve meanwhile.
	var frontRetry sync.WaitGroup
	frontCtx, stopFrontRetry := context.WithCancel(ctx)
	defer func() { stopFrontRetry(); frontRetry.Wait() }()
	if len(httpUnbound) > 0 {
		frontRetry.Go(func() {
			d.rebindFront(frontCtx, httpUnbound, func(ln net.Listener) {
				fronting.Go(func() {
					if err := d.fsrv.Serve(ln); err != nil {
						log.Error("http front door stopped", "listen", ln.Addr().String(), "reason", err)
					}
				})
			})
		})
	}
	log.Info("serving", "apps", len(cfg.Apps), "config", cfg.File, "http", len(d.httpLns), "admin", AdminSocket(cfg, d.runDir))
	var collecting sync.WaitGroup
	defer collecting.Wait()
	collecting.Go(func() {
		// Startup (the config, one engine query per app) leaves garbage and grown
		// goroutine stacks that an idle sact, allocating nothing, would keep for good:
		// with 1000 apps, tens of MB. One collection once every app has looked for its
		// instance returns them.
		for _, u := range d.snapshot() {
			select {
			case <-u.act.Adopted():
			case <-ctx.Done():
				return
			}
		}
		debug.FreeOSMemory()
	})
	if opts.Ready != nil {
		opts.Ready(addrs)
	}
	// The watchdog's pings go through this loop: one that hangs (a stuck reload, a
	// deadlock) stops them, and systemd restarts sact.
	pings := make(chan chan struct{})
	wctx, stopWatchdog := context.WithCancel(ctx)
	var watching sync.WaitGroup
	if opts.Notify {
		notify(log, fmt.Sprintf("READY=1\nSTATUS=serving %d apps", len(cfg.Apps)))
		if every := watchdogEvery(); every > 0 {
			watching.Go(func() {
				watchdog(wctx, log, every, func(ctx context.Context) error {
					reply := make(chan struct{})
					select {
					case pings <- reply:
					case <-ctx.Done():
						return fmt.Errorf("the daemon's loop does not answer: %w", ctx.Err())
					}
					<-reply
					return nil
				})
			})
		}
	}

	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case <-opts.Reload:
			d.reloadAndLog(ctx, "SIGHUP")
		case reply := <-pings:
			close(reply)
		}
	}
	stopWatchdog()
	watching.Wait()
	stopRetrying()
	retrying.Wait() // it takes d.reloading, which shutdown keeps
	stopFrontRetry()
	frontRetry.Wait() // before the front door shuts down: it adds to fronting
	log.Info("shutting down", "drain_timeout", d.drain)
	if opts.Notify {
		notify(log, "STOPPING=1")
	}
	d.reloading.Lock() // no reload may start now; none runs
	units := d.snapshot()
	// A handoff app left running keeps serving on the sockets it holds: their unix
	// socket files must stay for its clients, and for the next sact to take them back.
	for _, u := range units {
		if u.handoff != nil && u.app.OnExit != "stop" {
			for _, ln := range u.listeners() {
				if ul, ok := ln.(*net.UnixListener); ok {
					ul.SetUnlinkOnClose(false)
				}
			}
		}
	}
	for _, u := range units {
		u.closeListeners()
	}
	d.srv.WaitAccepting()
	drained := make(chan struct{})
	go func() {
		if d.fsrv != nil {
			// Closes the front door's listeners, then waits for its requests.
			sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.drain)
			d.fsrv.Shutdown(sctx)
			cancel()
		}
		fronting.Wait()
		d.srv.WaitConns()
		close(drained)
	}()
	select {
	case <-drained:
	case <-time.After(d.drain):
		log.Warn("closing connections still open after drain timeout", "drain_timeout", d.drain)
		closeConns()
		<-drained
	}
	stopApps()
	d.apps.Wait()
	d.retiring.Wait()
	for _, u := range units {
		if u.handoff != nil && u.app.OnExit != "stop" && u.act.State() != activator.Running {
			// Nobody holds these sockets any more: remove their files as usual.
			for _, a := range u.app.Listen {
				if a.Network == "unix" {
					os.Remove(a.Address)
				}
			}
		}
	}
	stopRuntimes()
	errRT := d.rtGroup.Wait()
	if errors.Is(errRT, context.Canceled) {
		errRT = nil
	}
	d.errMu.Lock()
	errApps := errors.Join(d.errs...)
	d.errMu.Unlock()
	return errors.Join(errApps, errRT)
}

// routes are the front door's routes for cfg, to the apps of units, and the default
// route (nil if none).
func (d *daemon) routes(cfg *config.Config, units map[string]*unit) ([]front.Route, *front.Route, error) {
	var routes []front.Route
	var def *front.Route
	for _, app := range cfg.Apps {
		robots, err := front.ReadRobots(app.Quiet.RobotsTxt, d.writableDirs())
		if err != nil {
			// The app may have planted it (a link to a host file, a FIFO): it never keeps
			// sact or another app from serving, and gets the default disallow-all.
			d.log.Error("cannot use quiet.robots_txt; serving the default", "app", app.Name, "path", app.Quiet.RobotsTxt, "err", err)
			robots = nil
		}
		uas := make([]string, len(app.Quiet.UserAgents))
		for i, ua := range app.Quiet.UserAgents {
			uas[i] = strings.ToLower(ua)
		}
		r := front.Route{
			App: units[app.Name].act, Hosts: app.Hosts, WakingPage: app.WakingPage,
			MaxInFlight: app.MaxInFlight, StartTimeout: activator.QueueWait + app.StartTimeout,
			Quiet: front.Quiet{Enabled: app.Quiet.Enabled, RobotsTxt: robots, Favicon: app.Quiet.Favicon, UserAgents: uas, Status: app.Quiet.Status},
		}
		if len(app.Hosts) > 0 {
			routes = append(routes, r)
		}
		if app.Name == cfg.HTTP.DefaultApp {
			r.Hosts = nil
			def = &r
		}
	}
	return routes, def, nil
}

// frontDoor builds the HTTP front door and binds its listeners, if the config has one;
// those that cannot be bound are in unbound, with why.
func frontDoor(ctx context.Context, cfg *config.Config, routes []front.Route, def *front.Route, inherited *listen.Inherited, log *slog.Logger, failed func(app, reason string, n int)) (*front.Server, []net.Listener, []unboundAddr, error) {
	if len(cfg.HTTP.Listen) == 0 {
		return nil, nil, nil, nil
	}
	opts := front.Options{
		Logger: log, TrustedProxies: cfg.HTTP.TrustedProxies, TrustUnix: cfg.HTTP.TrustUnix, MaxHeaderBytes: int(cfg.HTTP.MaxHeaderBytes),
		ReadHeaderTimeout: cfg.HTTP.ReadHeaderTimeout, IdleTimeout: cfg.HTTP.IdleTimeout, Default: def,
		Failed: failed,
	}
	fsrv, err := front.New(routes, opts)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("http front door: %w", err)
	}
	var lns []net.Listener
	var unbound []unboundAddr
	for _, a := range cfg.HTTP.Listen {
		if ln := inherited.Take(a, "http"); ln != nil {
			lns = append(lns, ln)
			continue
		}
		a = frontSocket(a, log)
		ln, err := listen.Listen(ctx, a)
		if err != nil {
			unbound = append(unbound, unboundAddr{a, err})
			continue
		}
		lns = append(lns, ln)
	}
	return fsrv, lns, unbound, nil
}

// frontGroup is the group the front door's unix sockets get unless the config names
// one: nginx's workers run as www-data on Debian and Ubuntu.
var frontGroup = "www-data"

// frontSocket applies the front door's defaults to a unix socket it binds: mode 0660,
// so that no "other" user can connect (and every peer may be trusted with
// X-Forwarded-*), and group www-data when that group exists. Without it the socket keeps
// sact's own group, and a warning says how to let the web server in.
func frontSocket(a listen.Addr, log *slog.Logger) listen.Addr {
	if a.Network != "unix" {
		return a
	}
	if a.Mode == 0 {
		a.Mode = 0o660
	}
	if a.Group == "" {
		if _, err := user.LookupGroup(frontGroup); err == nil {
			a.Group = frontGroup
		} else if a.Mode&0o007 == 0 {
			log.Warn("front door socket has no web server group", "listen", a.String(), "mode", fmt.Sprintf("%04o", a.Mode),
				"reason", fmt.Sprintf("group %s does not exist; only root and sact's group can connect", frontGroup),
				"fix", "set http.listen to {address: "+a.String()+", group: GROUP} with your web server's group")
		}
	}
	return a
}

func closeListeners(lns map[string][]net.Listener) {
	for _, app := range lns {
		for _, ln := range app {
			if ln != nil {
				ln.Close()
			}
		}
	}
}

func anyHandoff(cfg *config.Config) bool {
	for _, app := range cfg.Apps {
		if app.Handoff {
			return true
		}
	}
	return false
}

func handoffDir(runDir string, app *config.App) string {
	return filepath.Join(runDir, "handoff", app.Name)
}

// takeBack returns the listening sockets of a handoff app that an earlier sact left
// running, taken from the app's process, or nil if it does not run. If they cannot be
// taken, the app is stopped: it holds the addresses, which could not be bound anew.
func takeBack(ctx context.Context, log *slog.Logger, rt backend.Runtime, app *config.App, spec backend.Spec) []net.Listener {
	inst, err := rt.Running(ctx, spec)
	if err != nil || inst == nil {
		return nil
	}
	var reason error
	if pr, ok := rt.(backend.Pider); ok {
		pid, err := pr.Pid(ctx, spec)
		if err == nil && pid > 0 {
			lns, err := host.Reclaim(pid, app.Listen)
			if err == nil {
				log.Info("took back the listening sockets of a running handoff app", "app", app.Name, "container", inst.ID, "pid", pid)
				return lns
			}
			reason = err
		} else {
			reason = fmt.Errorf("no pid: %v", err)
		}
	} else {
		reason = errors.New("the runtime cannot tell the app's pid")
	}
	log.Warn("stopping app", "app", app.Name, "reason", "it runs from an earlier sact and its sockets cannot be taken back: "+reason.Error(), "container", inst.ID)
	sctx, cancel := context.WithTimeout(ctx, app.StopTimeout+10*time.Second)
	defer cancel()
	if err := rt.Stop(sctx, spec, app.StopTimeout); err != nil {
		log.Warn("cannot stop app left running by an earlier sact", "app", app.Name, "reason", err)
	}
	return nil
}

// runtimeKind names the runtime the app runs on: apps of kinds that share one share it.
func runtimeKind(app *config.App) string { return app.Kind().Info().Runtime }

func policy(app *config.App) activator.Policy {
	return activator.Policy{
		Spec:          app.Spec(),
		Idle:          app.Idle,
		StartTimeout:  app.StartTimeout,
		StopTimeout:   app.StopTimeout,
		MaxWaiting:    app.MaxWaiting,
		KeepWhileOpen: app.KeepWhileOpen,
		StopOnExit:    app.OnExit == "stop",
		PauseAfter:    app.PauseAfter,
		KeepRunning:   keepRunning(app),
		// Nothing connects to it but its dependents.
		DependencyOnly: len(app.Listen) == 0 && len(app.Hosts) == 0,
		Ready:          readiness(app),
	}
}

// keepRunning is the app's min_running and keep_warm rule, or nil if it has none.
func keepRunning(app *config.App) func(time.Time) bool {
	windows := app.Windows()
	if app.MinRunning == 0 && len(windows) == 0 {
		return nil
	}
	always := app.MinRunning > 0
	return func(now time.Time) bool {
		if always {
			return true
		}
		for _, w := range windows {
			if w.Contains(now) {
				return true
			}
		}
		return false
	}
}

// deps are what the runtimes share.
func (d *daemon) deps() backend.Deps { return backend.Deps{Logger: d.log} }

// buildRuntimes returns the runtimes cfg needs that have is missing.
func buildRuntimes(ctx context.Context, cfg *config.Config, have map[string]backend.Runtime, deps backend.Deps) (map[string]backend.Runtime, error) {
	rts := make(map[string]backend.Runtime)
	for _, app := range cfg.Apps {
		kind := runtimeKind(app)
		if _, ok := rts[kind]; ok {
			continue
		}
		if _, ok := have[kind]; ok {
			continue
		}
		rt, err := app.Kind().NewRuntime(ctx, deps)
		if err != nil {
			return nil, fmt.Errorf("setting up the %s runtime for app %q: %w", kind, app.Name, err)
		}
		rts[kind] = rt
	}
	return rts, nil
}
