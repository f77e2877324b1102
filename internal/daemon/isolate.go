package daemon

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/listen"
)

// One app that cannot bind one of its addresses (another program holds the port, a
// unix socket's directory is missing) never keeps the other apps from serving (issue
// 13): it is broken (log, status, the sact_app_broken metric) and sact binds it again with
// backoff, until the address is free or a reload changes it. A proxied app serves on the
// listeners it has meanwhile; a handoff app, whose server hands over every socket at once,
// starts once all are bound.

// bindAll binds every app's listeners. Each app's slice has one entry per address of
// app.Listen, nil where the address cannot be bound; unbound says why, per app.
func bindAll(ctx context.Context, cfg *config.Config, reclaimed map[string][]net.Listener, inherited *listen.Inherited) (lns map[string][]net.Listener, unbound map[string]error) {
	lns = make(map[string][]net.Listener)
	unbound = make(map[string]error)
	for name, l := range reclaimed {
		lns[name] = l
	}
	for _, app := range cfg.Apps {
		if reclaimed[app.Name] != nil {
			continue
		}
		var errs []error
		for _, a := range app.Listen {
			if ln := inherited.Take(a, app.Name); ln != nil {
				lns[app.Name] = append(lns[app.Name], ln)
				continue
			}
			ln, err := listen.Listen(ctx, a)
			if err != nil {
				errs = append(errs, err)
			}
			lns[app.Name] = append(lns[app.Name], ln)
		}
		if len(errs) > 0 {
			unbound[app.Name] = errors.Join(errs...)
		}
	}
	return lns, unbound
}

// nothingServes returns the error sact serve fails with when no app has a listener
// bound, and no front door would serve them either; nil if something can serve.
func nothingServes(cfg *config.Config, lns map[string][]net.Listener, unbound map[string]error) error {
	if len(unbound) == 0 || len(cfg.HTTP.Listen) > 0 {
		return nil
	}
	if anyBound(lns) {
		return nil
	}
	var reasons []string
	for _, app := range cfg.Apps {
		if err := unbound[app.Name]; err != nil {
			reasons = append(reasons, fmt.Sprintf("app %q: %v", app.Name, err))
		}
	}
	return fmt.Errorf("no app can serve: not one of their addresses can be bound: %s", strings.Join(reasons, "; "))
}

// setUnbound records why some of the unit's listeners cannot be bound ("" when all are),
// for its status and the metric.
func (d *daemon) setUnbound(u *unit, reason string) {
	if reason == "" {
		u.unbound.Store(nil)
	} else {
		u.unbound.Store(&reason)
	}
	d.m.setBroken(u.act.Name(), reason != "")
}

// missing reports whether some of the unit's addresses have no listener. Called with
// u.lnMu held.
func (u *unit) missing() bool {
	if len(u.lns) < len(u.app.Listen) {
		return true
	}
	for _, ln := range u.lns {
		if ln == nil {
			return true
		}
	}
	return false
}

// listeners returns the unit's listeners now (nil where one is missing).
func (u *unit) listeners() []net.Listener {
	u.lnMu.Lock()
	defer u.lnMu.Unlock()
	return append([]net.Listener(nil), u.lns...)
}

// rebindNow makes the unit's rebind loop try at once (a reload changed its listeners).
func (u *unit) rebindNow() {
	select {
	case u.rebind <- struct{}{}:
	default:
	}
}

// rebindLoop binds the unit's missing listeners with backoff until it has them all, then
// closes bound; serving starts on each as it is bound (accepting says whether the unit's
// accept loops run). It returns when the unit's listeners close or ctx ends.
func (d *daemon) rebindLoop(ctx context.Context, u *unit, accepting bool, bound chan<- struct{}) {
	defer func() {
		u.lnMu.Lock()
		u.rebinding = false
		u.lnMu.Unlock()
	}()
	log := d.log.With("app", u.act.Name())
	backoff := brokenRetryFirst
	for {
		done, err := d.bindMissing(ctx, u, accepting)
		if done {
			if err == nil && u.unbound.Load() != nil {
				d.setUnbound(u, "")
				log.Info("app's listeners are bound; serving it again")
			}
			if err == nil && bound != nil {
				close(bound)
			}
			if err != nil {
				// Retired: its series goes, unless the name is another unit's now.
				d.mu.Lock()
				if o := d.units[u.act.Name()]; o == nil || o == u {
					d.m.setBroken(u.act.Name(), false)
				}
				d.mu.Unlock()
			}
			return
		}
		reason := "cannot bind its listeners: " + err.Error()
		if r := u.unbound.Load(); r == nil || *r != reason {
			d.setUnbound(u, reason)
		}
		log.Error("app is broken; the other apps serve on", "reason", reason, "retry_in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			d.m.setBroken(u.act.Name(), false) // the app goes away: so does its series
			return
		case <-u.rebind:
			t.Stop()
		case <-t.C:
			backoff = min(2*backoff, brokenRetryMax)
		}
	}
}

// bindMissing binds what the unit lacks. done is true when nothing is missing any more
// (err nil) or the unit's listeners were closed (err non-nil: it goes away).
func (d *daemon) bindMissing(ctx context.Context, u *unit, accepting bool) (done bool, err error) {
	// d.mu: a reload reads and replaces u.lns and u.app under it.
	d.mu.Lock()
	defer d.mu.Unlock()
	u.lnMu.Lock()
	defer u.lnMu.Unlock()
	if u.lnsClosed {
		return true, net.ErrClosed
	}
	u.rebinding = true
	for len(u.lns) < len(u.app.Listen) {
		u.lns = append(u.lns, nil)
	}
	var errs []error
	for i, a := range u.app.Listen {
		if u.lns[i] != nil {
			continue
		}
		ln, err := listen.Listen(ctx, a)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		u.lns[i] = ln
		if accepting {
			d.accept(ln, u.act, a.String())
		}
	}
	if len(errs) > 0 {
		return false, errors.Join(errs...)
	}
	return true, nil
}

// startRebind binds a running proxied unit's missing listeners, if some are and no loop
// does yet (a reload left it one short). Called with d.mu held.
func (d *daemon) startRebind(u *unit) {
	u.lnMu.Lock()
	start := u.ctx != nil && !u.lnsClosed && !u.rebinding && u.missing()
	if start {
		u.rebinding = true
	}
	u.lnMu.Unlock()
	if start {
		d.apps.Go(func() { d.rebindLoop(u.ctx, u, true, nil) })
	} else {
		u.rebindNow()
	}
}

// listener returns the unit's i-th listener, nil if it has none there. Called with d.mu
// held (what replaces lns holds it).
func (u *unit) listener(i int) net.Listener {
	if i < len(u.lns) {
		return u.lns[i]
	}
	return nil
}

// unboundAddr is an address that could not be bound, and why.
type unboundAddr struct {
	addr listen.Addr
	err  error
}

// anyBound reports whether some app has a listener.
func anyBound(lns map[string][]net.Listener) bool {
	for _, l := range lns {
		for _, ln := range l {
			if ln != nil {
				return true
			}
		}
	}
	return false
}

// rebindFront binds the front door's addresses that could not be, with backoff, handing
// each to serve once bound, until all are or ctx ends.
func (d *daemon) rebindFront(ctx context.Context, todo []unboundAddr, serve func(net.Listener)) {
	backoff := brokenRetryFirst
	for {
		var left []unboundAddr
		for _, u := range todo {
			ln, err := listen.Listen(ctx, u.addr)
			if err != nil {
				d.log.Error("http front door cannot bind an address; the apps' own listeners serve on", "listen", u.addr.String(), "reason", err, "retry_in", backoff)
				left = append(left, unboundAddr{u.addr, err})
				continue
			}
			d.log.Info("http front door bound; serving on it", "listen", u.addr.String())
			serve(ln)
		}
		if todo = left; len(todo) == 0 {
			return
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, brokenRetryMax)
	}
}
