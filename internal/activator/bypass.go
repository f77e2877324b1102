package activator

import (
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// Bypass sends the app's clients on this host straight to a running instance, past the
// relay (package bypass does it with a cgroup/connect4 program). Those connections hold
// no lease: the kernel's count of them (Route) keeps the app busy and open as leases
// do. The activator routes an incarnation while it is Running, and takes the route out
// as it leaves Running (stop, pause, crash) or is replaced by a deploy; before an idle
// stop or pause it holds the route and looks again routeGrace later, so a client that
// connected past the relay just before keeps its instance.
type Bypass interface {
	// Route routes the app's clients to inst's upstream. It returns nil, nil when the
	// app cannot be bypassed (no TCP listen address, an upstream the kernel cannot be
	// sent to, an instance not on this host).
	Route(inst *backend.Instance) (Route, error)
}

// Route is one incarnation's bypass.
type Route interface {
	// Hold sends new connects to the relay again, until Resume.
	Hold() error
	Resume() error
	// LastActive and OpenConns are the kernel's count of the connections to the
	// upstream, the relay's own included: when something last happened, and how many
	// are open (-1: not known).
	LastActive() time.Time
	OpenConns() int
	// Connects counts the connects the route sent past the relay.
	Connects() uint64
	Close() error
}

// elsewhere is a Route that sends clients on other hosts past the relay too (the
// daemon's, with package ingress).
type elsewhere interface{ Elsewhere() bool }

// routeGrace is how long a held route is watched before an idle stop or pause: what a
// connect the program rewrote just before the hold needs to complete its handshake with
// the instance, where the kernel counts it.
const routeGrace = 20 * time.Millisecond

// openRoute routes the running incarnation past the relay, if the app has a Bypass.
// Called with a.mu held.
func (a *App) openRoute() {
	if a.bypass == nil || a.route != nil || a.inst == nil {
		return
	}
	r, err := a.bypass.Route(a.inst)
	switch {
	case err != nil:
		// The relay serves every client meanwhile: worth a line, once per cause.
		if msg := err.Error(); msg != a.bypassErr {
			a.bypassErr = msg
			a.log.Warn("cannot route local clients past the relay; relaying them", "reason", err, "upstream", a.inst.Upstream.String())
		}
	case r != nil:
		a.route, a.bypassErr = r, ""
	}
}

// closeRoute takes the route out. Called with a.mu held.
func (a *App) closeRoute() {
	if a.route == nil {
		return
	}
	if err := a.route.Close(); err != nil {
		a.log.Warn("cannot take out the route past the relay", "reason", err)
	}
	a.bypassed += a.route.Connects()
	a.route, a.routeHeld = nil, time.Time{}
}

// settleRoute is asked by an idle stop or pause before it goes ahead: it holds the
// route and reports true (the caller waits routeGrace and decides again) the first
// time, and false once held that long. Called with a.mu held.
func (a *App) settleRoute() bool {
	if a.route == nil {
		return false
	}
	if !a.routeHeld.IsZero() && time.Since(a.routeHeld) >= routeGrace {
		return false
	}
	if a.routeHeld.IsZero() {
		if err := a.route.Hold(); err != nil {
			a.log.Warn("cannot hold the route past the relay", "reason", err)
		}
		a.routeHeld = time.Now()
	}
	a.armIdle(routeGrace - time.Since(a.routeHeld))
	return true
}

// resumeRoute puts back a route held for an idle decision that did not go ahead.
// Called with a.mu held.
func (a *App) resumeRoute() {
	if a.route == nil || a.routeHeld.IsZero() {
		return
	}
	if err := a.route.Resume(); err != nil {
		a.log.Warn("cannot resume the route past the relay; relaying local clients", "reason", err)
		a.closeRoute()
		return
	}
	a.routeHeld = time.Time{}
}

// routeActivity is when the kernel last saw the route's upstream busy, and how many of
// its connections hold no lease. Called with a.mu held.
func (a *App) routeActivity() (time.Time, int) {
	if a.route == nil {
		return time.Time{}, 0
	}
	return a.route.LastActive(), max(a.route.OpenConns()-len(a.conns), 0)
}

// Reroute makes the running incarnation's route again, after the app's listen
// addresses changed (a reload): a route by an address sact no longer listens on would
// send its connects to the app, not to whatever binds it next.
func (a *App) Reroute() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.state != Running {
		return
	}
	held := a.routeHeld
	a.closeRoute()
	a.openRoute()
	if !held.IsZero() && a.route != nil {
		a.route.Hold() // still held for the idle decision under way
		a.routeHeld = held
	}
}

// Bypassed reports whether local clients reach the running incarnation past the relay.
func (a *App) Bypassed() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.route != nil && a.routeHeld.IsZero()
}
