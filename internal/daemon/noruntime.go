package daemon

import (
	"context"
	"errors"
	"maps"
	"slices"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
)

// An app whose runtime cannot be set up (the Docker engine is unreachable while process
// apps serve) is broken alone (issue 13): its unit exists, with its listeners, status and
// routes, but never runs. sact tries to set the runtime up again with backoff; once it
// can, each such unit is replaced by one on the runtime, which serves. (A reload never
// fails for a runtime that cannot be set up: its apps are broken alike.)

// buildEach builds the runtimes cfg needs that have lacks and skip does not name, each on
// its own: a kind that cannot be built is in failed, with why.
func (d *daemon) buildEach(ctx context.Context, cfg *config.Config, have map[string]backend.Runtime, skip map[string]error) (built map[string]backend.Runtime, failed map[string]error) {
	built, failed = make(map[string]backend.Runtime), make(map[string]error)
	for _, app := range cfg.Apps {
		kind := runtimeKind(app)
		if have[kind] != nil || built[kind] != nil || failed[kind] != nil || skip[kind] != nil {
			continue
		}
		rts, err := buildRuntimes(ctx, &config.Config{Apps: []*config.App{app}}, nil, d.deps())
		if err != nil {
			failed[kind] = err
			continue
		}
		for k, rt := range rts {
			built[k] = rt
		}
	}
	return built, failed
}

// runtimeFor returns the runtime for app's kind, or, when it cannot be set up, a stand-in
// that refuses everything and why (the unit is then dormant).
func (d *daemon) runtimeFor(app *config.App, rts map[string]backend.Runtime, missing map[string]error) (backend.Runtime, error) {
	kind := runtimeKind(app)
	if rt := rts[kind]; rt != nil {
		return rt, nil
	}
	if rt := d.rts[kind]; rt != nil {
		return rt, nil
	}
	err := missing[kind]
	if err == nil {
		err = errors.New("the " + kind + " runtime is not set up")
	}
	return noRuntime{err}, err
}

// noRuntime stands in for a runtime that cannot be set up; a dormant unit never calls it.
type noRuntime struct{ err error }

func (n noRuntime) Start(context.Context, backend.Spec) (*backend.Instance, error) {
	return nil, n.err
}
func (n noRuntime) Stop(context.Context, backend.Spec, time.Duration) error { return n.err }
func (n noRuntime) Running(context.Context, backend.Spec) (*backend.Instance, error) {
	return nil, n.err
}

// markDormant makes u a unit that waits for its runtime: reported broken, never run.
func (d *daemon) markDormant(u *unit, err error) {
	u.dormant = "its runtime cannot be set up: " + err.Error()
	d.m.setBroken(u.app.Name, true)
	d.log.Error("app is broken; the other apps serve on", "app", u.app.Name, "reason", u.dormant, "retry_in", brokenRetryFirst)
}

// retryRuntimes sets up the runtimes that could not be, with backoff, until there are
// none left or ctx ends; each one set up brings its apps in. wake restarts the backoff
// (a reload added a kind that cannot be set up).
func (d *daemon) retryRuntimes(ctx context.Context, wake <-chan struct{}) {
	backoff := brokenRetryFirst
	for {
		d.mu.Lock()
		idle := len(d.rtMissing) == 0
		d.mu.Unlock()
		if idle {
			select {
			case <-ctx.Done():
				return
			case <-wake:
				backoff = brokenRetryFirst
				continue
			}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-wake:
			t.Stop()
			backoff = brokenRetryFirst
			continue
		case <-t.C:
		}
		backoff = min(2*backoff, brokenRetryMax)
		d.reloading.Lock() // a reload sees every unit as it is, or as replaced
		if ctx.Err() == nil {
			d.mu.Lock()
			cfg, missing, have := d.cfg, maps.Clone(d.rtMissing), maps.Clone(d.rts)
			d.mu.Unlock()
			// Building may take the engine's timeout: d.mu is not held meanwhile
			// (d.reloading is, so the config stays).
			built, failed := d.buildEach(ctx, cfg, have, nil)
			d.mu.Lock()
			for kind := range missing {
				if rt := built[kind]; rt != nil {
					d.bringIn(kind, rt)
					backoff = brokenRetryFirst
				} else if err := failed[kind]; err != nil {
					d.rtMissing[kind] = err
					d.log.Error("runtime still cannot be set up; its apps stay broken", "runtime", kind, "reason", err, "retry_in", backoff)
				} else {
					delete(d.rtMissing, kind) // no app needs it any more
				}
			}
			d.mu.Unlock()
		}
		d.reloading.Unlock()
	}
}

// bringIn runs the apps of kind, dormant until now, on rt. Called with d.mu and
// d.reloading held.
func (d *daemon) bringIn(kind string, rt backend.Runtime) {
	d.rts[kind] = rt
	delete(d.rtMissing, kind)
	d.runRuntime(rt)
	d.addWritable(d.cfg, d.rts)
	var names []string
	for name, u := range d.units {
		if u.dormant == "" || runtimeKind(u.app) != kind {
			continue
		}
		// The dormant unit never ran: its listeners go to its successor as they are.
		nu := d.newUnit(u.app, u.lns, rt)
		u.lnMu.Lock()
		u.lns, u.lnsClosed = nil, true
		u.lnMu.Unlock()
		if r := u.unbound.Load(); r != nil {
			nu.unbound.Store(r)
		} else {
			d.m.setBroken(name, false)
		}
		d.units[name] = nu
		names = append(names, name)
	}
	d.setDependencies()
	if d.fsrv != nil {
		routes, def, err := d.routes(d.cfg, d.units)
		if err == nil {
			err = d.fsrv.SetRoutes(routes, def)
		}
		if err != nil {
			d.log.Error("front door keeps its old routes", "reason", err)
		}
	}
	for _, name := range names {
		d.startUnit(d.units[name], nil)
	}
	d.log.Info("runtime set up; serving its apps", "runtime", kind, "apps", names)
}

// dormantApp is a dormant unit's app for the admin API: broken, and it cannot be started,
// stopped or paused, as it has no runtime.
type dormantApp struct{ brokenApp }

func (b dormantApp) Stop(ctx context.Context) error { return b.Start(ctx) }

func (b dormantApp) Pause(ctx context.Context) error { return b.Start(ctx) }

// wakeRuntimes tells retryRuntimes that a runtime is missing again.
func (d *daemon) wakeRuntimes() {
	select {
	case d.rtWake <- struct{}{}:
	default:
	}
}

// noRuntimeServes returns the error sact serve fails with when no app has a runtime.
func noRuntimeServes(cfg *config.Config, rts map[string]backend.Runtime, failed map[string]error) error {
	if len(failed) == 0 {
		return nil
	}
	for _, app := range cfg.Apps {
		if rts[runtimeKind(app)] != nil {
			return nil
		}
	}
	var errs []error
	for _, app := range cfg.Apps {
		if err := failed[runtimeKind(app)]; err != nil && !slices.Contains(errs, err) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
