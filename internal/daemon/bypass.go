package daemon

import (
	"errors"
	"net"
	"net/netip"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/bypass"
	"github.com/sact-project/sact/internal/proxy"
	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// prepareBypass opens the connect bypass when the relay may use the kernel
// (SACT_RELAY=kernel or auto): this host's clients of a running relayed app then reach
// it past the relay. Where the kernel refuses, they are relayed, as sact says once.
func (d *daemon) prepareBypass() {
	if mode, _ := proxy.EnvMode(); mode == proxy.ModeSplice {
		return
	}
	w := d.counters
	if w == nil {
		var err error
		if w, err = bpfwatch.Open(bpfwatch.Options{Dir: d.runDir, NoUnix: true}); err != nil {
			d.log.Warn("local clients are relayed: cannot count their connections in the kernel", "reason", err,
				"fix", "run sact as root on Linux 5.14 or later with BTF")
			return
		}
		d.bypassCounters = w
	}
	b, err := bypass.Open(w)
	if err != nil {
		d.log.Warn("local clients are relayed: cannot route them past the relay", "reason", err,
			"fix", "run sact as root on Linux 5.14 or later with cgroup2")
		return
	}
	d.bypass = b
	d.log.Info("local clients reach running apps past the relay", "how", "cgroup/connect4", "scope", "TCP over IPv4 from this host's network namespace")
}

// closeBypass ends the bypass: clients reach sact's listeners again.
func (d *daemon) closeBypass() {
	if d.bypass != nil {
		d.bypass.Close()
	}
	if d.bypassCounters != nil {
		d.bypassCounters.Close()
	}
}

// unitBypass routes a relayed unit's local clients past the relay: the addresses are
// the unit's TCP listeners at the time of each route.
type unitBypass struct {
	b *bypass.Bypass
	u *unit
}

func (ub unitBypass) Route(inst *backend.Instance) (activator.Route, error) {
	up := inst.Upstream
	if up.Network != "tcp" || inst.Pid <= 0 || inst.Node != "" {
		return nil, nil
	}
	to, err := netip.ParseAddrPort(up.Address)
	if err != nil {
		return nil, nil // a name, not an address: the relay resolves it
	}
	var listen []netip.AddrPort
	for _, ln := range ub.u.listeners() {
		if ln == nil {
			continue // not bound (yet)
		}
		if t, ok := ln.Addr().(*net.TCPAddr); ok {
			listen = append(listen, t.AddrPort())
		}
	}
	if len(listen) == 0 {
		return nil, nil
	}
	r, err := ub.b.Route(listen, to, inst.Pid)
	if errors.Is(err, bypass.ErrNotRoutable) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return r, nil
}

// bypassFor is the Bypass of a unit's activator: none for a handoff app (it has no
// relay) or when the bypass is off.
func (d *daemon) bypassFor(u *unit) activator.Bypass {
	if d.bypass == nil || u.app.Handoff {
		return nil
	}
	return unitBypass{d.bypass, u}
}
