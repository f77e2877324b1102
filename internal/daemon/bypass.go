package daemon

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/bypass"
	"github.com/sact-project/sact/internal/ingress"
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
	d.prepareIngress()
}

// prepareIngress opens the translation of clients elsewhere (SACT_INGRESS: auto, the
// default, where this host does not filter INPUT; on; off). Its routes ride on the
// bypass's, which count the connections.
func (d *daemon) prepareIngress() {
	mode := os.Getenv("SACT_INGRESS")
	switch mode {
	case "off":
		return
	case "", "auto", "on":
	default:
		d.log.Warn("clients elsewhere are relayed: SACT_INGRESS is not auto, on or off", "value", mode)
		return
	}
	t, err := ingress.Open(ingress.Options{Force: mode == "on", Log: d.log})
	if err != nil {
		fix := "run sact as root with nftables, and IPv4 forwarding on"
		if errors.Is(err, ingress.ErrFiltered) {
			fix = "a translated connection is forwarded and skips INPUT, as Docker's published ports do: filter sact's ports in DOCKER-USER and set SACT_INGRESS=on, or keep relaying them"
		}
		d.log.Warn("clients elsewhere are relayed: cannot translate their connections to running apps", "reason", err, "fix", fix)
		return
	}
	d.ingress = t
	d.log.Info("clients elsewhere reach running apps past the relay", "how", "nftables dnat", "mark", fmt.Sprintf("%#x", ingress.Mark),
		"scope", "TCP over IPv4 to a non-loopback listen address, forwarded by this host")
}

// closeBypass ends the bypass: clients reach sact's listeners again.
func (d *daemon) closeBypass() {
	if d.ingress != nil {
		if err := d.ingress.Close(); err != nil {
			d.log.Warn("cannot take out the translation of clients elsewhere", "reason", err)
		}
	}
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
	b   *bypass.Bypass
	in  *ingress.Table // nil: clients elsewhere are relayed
	u   *unit
	log *slog.Logger
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
	if ub.in == nil {
		return r, nil
	}
	remote, err := ub.in.Route(listen, to, inst.Pid)
	if err != nil {
		if !errors.Is(err, ingress.ErrNotRoutable) {
			ub.log.Warn("cannot translate clients elsewhere to the instance; relaying them", "reason", err, "upstream", up.Address)
		}
		return r, nil
	}
	return both{r, remote}, nil
}

// both is a route of this host's clients (which counts every connection to the
// upstream) and one of clients elsewhere.
type both struct {
	*bypass.Route
	remote *ingress.Route
}

func (b both) Hold() error     { return errors.Join(b.Route.Hold(), b.remote.Hold()) }
func (b both) Resume() error   { return errors.Join(b.Route.Resume(), b.remote.Resume()) }
func (b both) Close() error    { return errors.Join(b.remote.Close(), b.Route.Close()) }
func (b both) Elsewhere() bool { return true }
func (b both) Connects() uint64 {
	return b.Route.Connects() + b.remote.Connects()
}

// bypassFor is the Bypass of a unit's activator: none for a handoff app (it has no
// relay) or when the bypass is off.
func (d *daemon) bypassFor(u *unit) activator.Bypass {
	if d.bypass == nil || u.app.Handoff {
		return nil
	}
	return unitBypass{d.bypass, d.ingress, u, d.log.With("app", u.app.Name)}
}
