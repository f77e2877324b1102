package daemon

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"reflect"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/front"
	"github.com/sact-project/sact/internal/listen"
)

// A reload reads the config again and makes the running sact serve it, without a
// restart:
//
//   - an app whose settings did not change keeps everything: listeners, connections, the
//     running container;
//   - an app whose settings changed keeps its listeners and connections; timings (idle,
//     timeouts) apply at once, and if what it runs changed (image, env, command...), a
//     running one gets its new container beside the old one (handoff apps too, on the
//     same sockets: activator/deploy.go), or, where it cannot, is restarted with the new
//     settings once its last connection ends;
//   - an added app is bound and served; a removed app's listeners close, its open
//     connections get the drain timeout, then it is stopped (a running handoff app's
//     connections, which the app accepted itself, as the kernel counts them; its
//     listeners close after the drain);
//   - an app whose kind changed (container/process, handoff or not, or the addresses of
//     a handoff app) is replaced: removed, then added, with its listening sockets kept
//     open in between, so clients wait in the backlog instead of being refused.
//
// An invalid config, or one whose new addresses cannot be bound, changes nothing. What
// only a restart can change (http.listen, the front door's limits, admin, pool) is
// reported, not applied.

// reloadAndLog reloads and logs the outcome; for SIGHUP, which has nobody to answer.
func (d *daemon) reloadAndLog(ctx context.Context, cause string) {
	if _, err := d.reload(ctx); err != nil {
		d.log.Error("config not reloaded; the old config keeps running", "cause", cause, "reason", err)
	}
}

// reload is the admin API's reload, and SIGHUP's.
func (d *daemon) reload(ctx context.Context) (admin.ReloadResult, error) {
	d.reloading.Lock()
	defer d.reloading.Unlock()
	if d.appsCtx.Err() != nil {
		return admin.ReloadResult{}, errors.New("sact is shutting down")
	}
	if d.opts.Load == nil {
		return admin.ReloadResult{}, errors.New("this sact cannot reload: it was started without a config file")
	}
	if d.opts.Notify {
		notify(d.log, fmt.Sprintf("RELOADING=1\nMONOTONIC_USEC=%d", monotonicUsec()))
		defer notify(d.log, "READY=1")
	}
	began := time.Now()
	cfg, err := d.opts.Load(ctx)
	if err != nil {
		return admin.ReloadResult{}, fmt.Errorf("reading the new config: %w", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	res, err := d.apply(ctx, cfg)
	if err != nil {
		return admin.ReloadResult{}, err
	}
	d.log.Info("config reloaded", "config", cfg.File, "added", res.Added, "removed", res.Removed,
		"changed", res.Changed, "unchanged", res.Unchanged, "duration", time.Since(began))
	for _, what := range res.Restart {
		d.log.Warn("config change needs a restart of sact", "setting", what, "reason", "it is not applied by a reload; restart sact (with sact.socket, systemd keeps the sockets)")
	}
	return res, nil
}

// change is what a reload does to one app.
type change int

const (
	added change = iota
	unchanged
	inPlace  // same unit, new settings
	replaced // a new unit after the old one is gone
)

// apply makes d serve cfg. Called with d.mu held. It changes nothing if it fails.
func (d *daemon) apply(ctx context.Context, cfg *config.Config) (admin.ReloadResult, error) {
	var res admin.ReloadResult
	old := d.units

	// Everything that can fail comes first: runtimes, the shim, new listeners, routes.
	// A runtime that cannot be set up makes its apps broken, never the reload; those
	// already missing are retryRuntimes' to set up.
	rts, rtFailed := d.buildEach(ctx, cfg, d.rts, d.rtMissing)
	missing := maps.Clone(d.rtMissing)
	maps.Copy(missing, rtFailed)
	if err := d.prepareHandoff(cfg); err != nil {
		return res, err
	}
	d.addWritable(cfg, rts)
	plan := make(map[string]change)
	for _, app := range cfg.Apps {
		u := old[app.Name]
		switch {
		case u == nil:
			plan[app.Name] = added
		case sameApp(u.app, app):
			plan[app.Name] = unchanged
		case u.dormant != "":
			plan[app.Name] = replaced // it never ran: a new unit, on its runtime if there is one now
		case runtimeKind(u.app) == runtimeKind(app) && u.app.Handoff == app.Handoff &&
			(!app.Handoff || reflect.DeepEqual(u.app.Listen, app.Listen)):
			plan[app.Name] = inPlace
		default:
			plan[app.Name] = replaced
		}
	}

	// The listeners of the new config: kept by their unit, taken over from a unit that
	// goes (a rename, a replacement), or bound anew.
	type owner struct {
		u *unit
		i int
	}
	existing := make(map[string]owner)
	for _, u := range old {
		for i, a := range u.app.Listen {
			existing[listenKey(a)] = owner{u, i}
		}
	}
	type take struct {
		from owner
		to   string // the app, and its listener's index, the socket goes to
		at   int
	}
	var takes []take
	var bound []net.Listener
	fail := func(err error) (admin.ReloadResult, error) {
		for _, ln := range bound {
			ln.Close()
		}
		return res, err
	}
	lns := make(map[string][]net.Listener) // new apps' listeners; nil where taken over
	for _, app := range cfg.Apps {
		if plan[app.Name] == unchanged {
			continue
		}
		for _, a := range app.Listen {
			o, ok := existing[listenKey(a)]
			switch {
			case ok && o.u.app.Name == app.Name && plan[app.Name] == inPlace:
				// Stays; nil while it cannot be bound (the unit binds it again).
				lns[app.Name] = append(lns[app.Name], o.u.listener(o.i))
			case ok && o.u.app.Name != app.Name && slices.ContainsFunc(cfgApp(cfg, o.u.app.Name).Listen, func(b listen.Addr) bool { return listenKey(b) == listenKey(a) }):
				// Validation forbids two apps on one address; a guard, should the apps
				// from container labels ever escape it.
				return fail(fmt.Errorf("app %q: %s is still used by app %q", app.Name, a, o.u.app.Name))
			case ok && o.u.listener(o.i) != nil:
				takes = append(takes, take{from: o, to: app.Name, at: len(lns[app.Name])})
				lns[app.Name] = append(lns[app.Name], nil)
			case ok:
				// Its old app could not bind it either (broken): the new unit is broken
				// alike and binds it again, rather than the reload failing.
				ln, err := listen.Listen(ctx, a)
				if err != nil {
					d.log.Warn("app still cannot bind a listener", "app", app.Name, "listen", a.String(), "reason", err)
					ln = nil
				} else {
					bound = append(bound, ln)
				}
				lns[app.Name] = append(lns[app.Name], ln)
			default:
				ln, err := listen.Listen(ctx, a)
				if err != nil {
					return fail(fmt.Errorf("app %q: %w", app.Name, err))
				}
				bound = append(bound, ln)
				lns[app.Name] = append(lns[app.Name], ln)
			}
		}
	}

	// New units exist before the routes that point at them; their goroutines start at
	// the commit.
	next := make(map[string]*unit)
	type dormantUnit struct {
		u   *unit
		err error
	}
	var dormant []dormantUnit
	for _, app := range cfg.Apps {
		switch plan[app.Name] {
		case unchanged, inPlace:
			next[app.Name] = old[app.Name]
		default:
			rt, rtErr := d.runtimeFor(app, rts, missing)
			next[app.Name] = d.newUnit(app, lns[app.Name], rt)
			if rtErr != nil {
				dormant = append(dormant, dormantUnit{next[app.Name], rtErr})
			}
		}
	}
	routes, def, err := d.routes(cfg, next)
	if err == nil && d.fsrv != nil {
		_, err = front.New(routes, front.Options{Default: def}) // the table's own checks
	}
	if err != nil {
		return fail(err)
	}
	// Handoff apps set up their handoff servers when they run: a failure there makes one
	// app broken, never the reload.

	// Commit: nothing below fails the reload.
	for kind, rt := range rts {
		d.rts[kind] = rt
		d.runRuntime(rt)
	}
	for kind, err := range rtFailed {
		d.rtMissing[kind] = err
		d.wakeRuntimes()
	}
	for _, x := range dormant {
		d.markDormant(x.u, x.err) // before startUnit, which leaves it be
	}
	// Listeners that change units get a new fd first, which ends the old accept loop.
	for _, t := range takes {
		ln := t.from.u.lns[t.from.i]
		moved, err := listen.Move(ln)
		if err != nil {
			d.log.Error("cannot keep a listening socket across the reload; binding it anew", "app", t.to, "listen", ln.Addr().String(), "reason", err)
			ln.Close()
			a := t.from.u.app.Listen[t.from.i]
			if moved, err = listen.Listen(ctx, a); err != nil {
				d.log.Error("app has lost a listener in the reload", "app", t.to, "listen", a.String(), "reason", err)
				continue
			}
		}
		lns[t.to][t.at] = moved // a new unit's own slice, or what update gives a kept one
		t.from.u.lnMu.Lock()
		t.from.u.lns[t.from.i] = nil // closed: no longer the old unit's
		t.from.u.lnMu.Unlock()
	}
	gone := make(map[string]<-chan struct{})
	for name, u := range old {
		p, ok := plan[name]
		if ok && p != replaced {
			continue
		}
		reason := "removed from config"
		if ok {
			reason = "replaced by reload"
			res.Changed = append(res.Changed, name)
		} else {
			res.Removed = append(res.Removed, name)
			d.m.setBroken(name, false) // gone, broken or not
		}
		gone[name] = d.retire(u, reason)
	}
	for _, app := range cfg.Apps {
		u := next[app.Name]
		switch plan[app.Name] {
		case unchanged:
			u.app = app
			res.Unchanged++
		case inPlace:
			d.update(u, app, lns[app.Name])
			res.Changed = append(res.Changed, app.Name)
		case added, replaced:
			if plan[app.Name] == added {
				res.Added = append(res.Added, app.Name)
			}
			// Wait for the units it takes sockets or the name from to be gone.
			var after []<-chan struct{}
			if c := gone[app.Name]; c != nil {
				after = append(after, c)
			}
			for _, t := range takes {
				if c := gone[t.from.u.app.Name]; t.to == app.Name && c != nil {
					after = append(after, c)
				}
			}
			d.startUnit(u, after)
		}
	}
	d.units = next
	d.setDependencies()
	if d.fsrv != nil {
		if err := d.fsrv.SetRoutes(routes, def); err != nil {
			d.log.Error("front door keeps its old routes", "reason", err)
		}
	}
	res.Restart = needsRestart(d.cfg, cfg)
	d.cfg = cfg
	slices.Sort(res.Changed)
	slices.Sort(res.Removed)
	return res, nil
}

// update applies new settings to a unit that stays: its policy, and its listeners, of
// which lns holds those of the new config (kept, taken over or new).
func (d *daemon) update(u *unit, app *config.App, lns []net.Listener) {
	pol := d.policy(app)
	specChanged := u.spec.Hash != pol.Spec.Hash
	u.act.SetPolicy(pol)
	u.spec = pol.Spec
	if u.handoff != nil {
		// Same addresses, same sockets: only the settings change, and the handoff
		// socket's owner with the user the app runs as.
		u.handoff.SetConfig(app)
		if u.app.Run.User != app.Run.User {
			u.handoff.SetUser(app.Run.User)
		}
	} else {
		u.lnMu.Lock()
		for _, ln := range u.lns {
			if ln != nil && !slices.Contains(lns, ln) {
				ln.Close() // its accept loop ends
			}
		}
		for i, ln := range lns {
			if ln != nil && !slices.Contains(u.lns, ln) {
				d.accept(ln, u.act, app.Listen[i].String())
			}
		}
		u.lns = lns
		u.lnMu.Unlock()
		u.act.Reroute() // local clients past the relay go by the new addresses
	}
	u.app = app
	if u.handoff == nil {
		// A listener it could not bind may be gone from the config, or still missing.
		d.startRebind(u)
	}
	if specChanged {
		d.log.Info("app settings changed; a running app gets a new container beside its old one, else at its next start", "app", app.Name)
		u.act.Refresh() // deployed beside the old one; one that cannot be, restarted once nothing is busy
	}
}

// sameApp reports whether two configs of an app are the same, wherever they sit in the
// file.
func sameApp(a, b *config.App) bool {
	x, y := *a, *b
	x.Line, y.Line = 0, 0
	return reflect.DeepEqual(x, y)
}

func cfgApp(cfg *config.Config, name string) *config.App {
	for _, a := range cfg.Apps {
		if a.Name == name {
			return a
		}
	}
	return &config.App{}
}

// listenKey identifies a listening socket: two addresses with the same key cannot both be
// bound.
func listenKey(a listen.Addr) string {
	return a.Network + " " + a.Address
}

// needsRestart lists the settings that differ between old and new and that only a
// restart applies.
func needsRestart(old, new *config.Config) []string {
	var out []string
	if !reflect.DeepEqual(old.HTTP.Listen, new.HTTP.Listen) {
		out = append(out, "http.listen")
	}
	if !slices.Equal(old.HTTP.TrustedProxies, new.HTTP.TrustedProxies) || old.HTTP.TrustUnix != new.HTTP.TrustUnix {
		out = append(out, "http.trusted_proxies")
	}
	if old.HTTP.MaxHeaderBytes != new.HTTP.MaxHeaderBytes || old.HTTP.ReadHeaderTimeout != new.HTTP.ReadHeaderTimeout || old.HTTP.IdleTimeout != new.HTTP.IdleTimeout {
		out = append(out, "http limits")
	}
	if !reflect.DeepEqual(old.Admin, new.Admin) {
		out = append(out, "admin")
	}
	if old.Pool != new.Pool {
		out = append(out, "pool")
	}
	return out
}

// monotonicUsec is CLOCK_MONOTONIC in microseconds, which systemd wants with RELOADING=1.
func monotonicUsec() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano() / 1000
}
