// Package ingress sends the clients of a relayed app that are not on this host (another
// machine, another network namespace) straight to the app's running instance, past the
// relay, the way Docker publishes a container's port: while an instance runs, a rule in
// sact's own nftables table translates the destination of a new connection to one of
// the app's TCP listen addresses into the instance's upstream (DNAT), and conntrack
// carries the rest of that connection there. No byte crosses sact; the container sees
// the client's own address. Package bypass does the same for this host's own clients,
// at connect(2), where a nat rule never looks.
//
//	t, err := ingress.Open(ingress.Options{})
//	r, err := t.Route(listen, upstream, pid) // when an instance is ready
//	r.Hold()                                 // before it is stopped or frozen
//	r.Close()
//
// # What is rewritten
//
// Only the first packet of a TCP connection over IPv4 that arrives from another host
// or namespace for one of the route's listen addresses (for a listener on 0.0.0.0, any
// of this host's addresses), and not from the interface the upstream is reached by:
// a container on the instance's own bridge would get its answer from the container
// and not from the address it dialed, so it is relayed. An established connection
// keeps the destination conntrack gave it, so taking a rule out (Hold) sends new
// connections to sact's listener and leaves the open ones where they are, as the relay
// would.
//
// # The host's firewall
//
// A translated connection is forwarded, not delivered: the filter INPUT chain never
// sees it, as it never sees a port Docker publishes. So Open refuses (ErrFiltered) when
// this host filters INPUT, unless told to go ahead (Options.Force, for an admin whose
// rules live in DOCKER-USER or FORWARD, as Docker asks for its own ports). Docker's
// FORWARD chain drops what it did not publish: every translated connection carries a
// conntrack mark bit (Mark), and Open puts one rule in DOCKER-USER (or FORWARD) that
// accepts what carries it, after the admin's own rules there. The table and that rule
// are sact's process's: Close takes both out, and the next Open takes out what a sact
// that died left behind.
package ingress

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Mark is the conntrack mark bit of a connection sact translated; the forward rule
// accepts what carries it. Other bits of the mark are left as they are.
const Mark uint32 = 0x10000000

// tablePrefix names sact's tables, one per sact process: "sact-" and its pid.
const tablePrefix = "sact-"

var (
	// ErrNotRoutable: the instance cannot be reached this way (an upstream on loopback,
	// a container with no route back to a client elsewhere). Its clients are relayed.
	ErrNotRoutable = errors.New("the instance cannot take translated connections")
	// ErrFiltered: this host filters INPUT, which translated connections would skip.
	ErrFiltered = errors.New("this host's firewall filters INPUT")
)

// Options tune Open.
type Options struct {
	// Force translates even when this host filters INPUT (SACT_INGRESS=on).
	Force bool
	// Name is the table's; "sact-" and the pid when empty.
	Name string
	// Log gets a line when the forward rule had to be put back.
	Log *slog.Logger
	// Recheck is how often the forward rule is looked for (a firewall reload flushes
	// it, and translated connections would then be dropped); 30 s when zero: a look
	// runs iptables, some milliseconds of CPU, and sleeping apps should cost none.
	Recheck time.Duration
}

// Table is sact's nftables table and its forward rule.
type Table struct {
	mu      sync.Mutex
	conn    *nftables.Conn
	table   *nftables.Table
	chain   *nftables.Chain
	forward []forwardRule
	next    uint64
	// counts caches the rules' counters, read for every route's Connects at most this
	// often: status asks for every app at once.
	counts   map[string]uint64
	countsAt time.Time
	stop     chan struct{}
	watching sync.WaitGroup
}

// Open makes sact's table and its forward rule.
func Open(opts Options) (*Table, error) {
	if b, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); err != nil || strings.TrimSpace(string(b)) != "1" {
		return nil, errors.New("this host does not forward IPv4 (net.ipv4.ip_forward is not 1)")
	}
	conn, err := nftables.New()
	if err != nil {
		return nil, fmt.Errorf("opening nftables: %w", err)
	}
	removeStale(conn)
	if !opts.Force {
		if why, err := inputFiltered(conn); err != nil {
			return nil, err
		} else if why != "" {
			return nil, fmt.Errorf("%w (%s)", ErrFiltered, why)
		}
	}
	if why, err := forwardDropped(conn); err != nil {
		return nil, err
	} else if why != "" {
		return nil, fmt.Errorf("translated connections would be dropped: %s", why)
	}
	name := opts.Name
	if name == "" {
		name = tablePrefix + strconv.Itoa(os.Getpid())
	}
	t := &Table{conn: conn}
	t.table = conn.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: name})
	t.chain = conn.AddChain(&nftables.Chain{
		Name:     "prerouting",
		Table:    t.table,
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPrerouting,
		Priority: nftables.ChainPriorityRef(*nftables.ChainPriorityNATDest - 1), // before Docker's own
	})
	// An expression that reads conntrack holds the namespace's conntrack hooks: without
	// it, taking out the last route's rules where nothing else uses conntrack would end
	// tracking, and with it the translation of the connections still open.
	conn.AddRule(&nftables.Rule{Table: t.table, Chain: t.chain, Exprs: []expr.Any{
		&expr.Ct{Register: 1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitINVALID), Xor: make([]byte, 4)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: make([]byte, 4)},
		&expr.Verdict{Kind: expr.VerdictAccept},
	}})
	if err := conn.Flush(); err != nil {
		return nil, fmt.Errorf("making nftables table %s: %w", name, err)
	}
	if t.forward, err = addForwardRules(name); err != nil {
		t.Close()
		return nil, err
	}
	t.stop = make(chan struct{})
	if len(t.forward) > 0 {
		// The rules are this thread's namespace's (a test's own one): so are the looks.
		ns, err := netns.Get()
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("opening this network namespace: %w", err)
		}
		every := cmp.Or(opts.Recheck, 30*time.Second)
		log := cmp.Or(opts.Log, slog.Default())
		t.watching.Go(func() {
			defer ns.Close()
			runtime.LockOSThread() // never unlocked: the thread may have entered ns, and dies with the goroutine
			if err := netns.Set(ns); err != nil {
				log.Warn("cannot watch the forward rule", "reason", err)
				return
			}
			t.keepForwardRules(every, log)
		})
	}
	return t, nil
}

// keepForwardRules puts the forward rules back when something took them out (a
// firewall's reload, iptables -F), until Close.
func (t *Table) keepForwardRules(every time.Duration, log *slog.Logger) {
	tick := time.NewTicker(every)
	defer tick.Stop()
	for {
		select {
		case <-t.stop:
			return
		case <-tick.C:
		}
		// t.forward is set before this loop starts and cleared after it ends: no lock,
		// so that the routes' changes do not wait for iptables.
		for _, f := range t.forward {
			if f.present() {
				continue
			}
			if err := f.add(); err != nil {
				log.Warn("clients elsewhere of running apps are dropped: cannot put back the forward rule", "reason", err)
			} else {
				log.Warn("put back the forward rule that something took out", "tool", f.tool, "chain", f.chain)
			}
		}
	}
}

// Close takes out the table (every route) and the forward rule.
func (t *Table) Close() error {
	if t.stop != nil {
		close(t.stop)
		t.watching.Wait()
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, f := range t.forward {
		errs = append(errs, f.remove())
	}
	t.forward = nil
	t.conn.DelTable(t.table)
	if err := t.conn.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("removing nftables table %s: %w", t.table.Name, err))
	}
	return errors.Join(errs...)
}

// Route is one instance's translation.
type Route struct {
	t       *Table
	id      []byte // the rules' user data
	listen  []netip.AddrPort
	to      netip.AddrPort
	iif     uint32
	mu      sync.Mutex
	held    bool
	closed  bool
	counted uint64 // by rules taken out
}

// Route translates connections to listen into to, the upstream of the instance whose
// process is pid (its network namespace must route back to any client).
func (t *Table) Route(listen []netip.AddrPort, to netip.AddrPort, pid int) (*Route, error) {
	if !to.Addr().Is4() || to.Addr().IsLoopback() || to.Addr().IsUnspecified() {
		return nil, ErrNotRoutable
	}
	var keep []netip.AddrPort
	for _, l := range listen {
		a := l.Addr().Unmap()
		if a.IsUnspecified() {
			a = netip.IPv4Unspecified() // a listener on [::] takes IPv4 too
		}
		if a.Is4() && !a.IsLoopback() {
			keep = append(keep, netip.AddrPortFrom(a, l.Port()))
		}
	}
	if len(keep) == 0 {
		return nil, ErrNotRoutable // only loopback: no other host can reach it
	}
	routes, err := netlink.RouteGet(to.Addr().AsSlice())
	if err != nil || len(routes) == 0 {
		return nil, fmt.Errorf("finding the interface to %s: %w", to.Addr(), err)
	}
	if l, err := netlink.LinkByIndex(routes[0].LinkIndex); err == nil && l.Attrs().Flags&net.FlagLoopback != 0 {
		return nil, ErrNotRoutable
	}
	if pid > 0 {
		if ok, err := routesOut(pid); err != nil {
			return nil, err
		} else if !ok {
			return nil, fmt.Errorf("%w: its network namespace has no default route", ErrNotRoutable)
		}
	}
	t.mu.Lock()
	t.next++
	id := []byte("sact-route-" + strconv.FormatUint(t.next, 10))
	t.mu.Unlock()
	r := &Route{t: t, id: id, listen: keep, to: to, iif: uint32(routes[0].LinkIndex)}
	if err := r.add(); err != nil {
		return nil, err
	}
	return r, nil
}

// Hold sends new connections to sact's listener again, until Resume.
func (r *Route) Hold() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held {
		return nil
	}
	r.held = true
	return r.del()
}

// Resume puts back a held route.
func (r *Route) Resume() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("resuming a closed route")
	}
	if !r.held {
		return nil
	}
	r.held = false
	return r.add()
}

// Close takes the route out for good, and forgets the connections that the instance
// never answered: a client's SYN that was translated just before its instance went
// away would otherwise go on to the dead address each time it is sent again, for as
// long as conntrack remembers it (two minutes), where the next try now reaches sact.
func (r *Route) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	var err error
	if !r.held {
		r.held = true
		err = r.del()
	}
	_, cerr := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, unanswered{r.to})
	if cerr != nil {
		cerr = fmt.Errorf("forgetting unanswered connections to %s: %w", r.to, cerr)
	}
	return errors.Join(err, cerr)
}

// Connects counts the connections translated.
func (r *Route) Connects() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := r.counted
	if !r.held {
		n += r.t.count(string(r.id), time.Second)
	}
	return n
}

// add puts in the route's rules. Called with r.mu held.
func (r *Route) add() error {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, l := range r.listen {
		t.conn.AddRule(&nftables.Rule{Table: t.table, Chain: t.chain, Exprs: rule(l, r.to, r.iif), UserData: r.id})
	}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("adding the translation to %s: %w", r.to, err)
	}
	return nil
}

// del takes out the route's rules, keeping their count. Called with r.mu held.
func (r *Route) del() error {
	t := r.t
	t.mu.Lock()
	defer t.mu.Unlock()
	rules, err := t.conn.GetRules(t.table, t.chain)
	if err != nil {
		return fmt.Errorf("listing the translations: %w", err)
	}
	for _, rl := range rules {
		if bytes.Equal(rl.UserData, r.id) {
			r.counted += packets(rl)
			t.conn.DelRule(rl)
		}
	}
	t.countsAt = time.Time{}
	if err := t.conn.Flush(); err != nil {
		return fmt.Errorf("taking out the translation to %s: %w", r.to, err)
	}
	return nil
}

// count is the translated connections of the rules tagged id, read at most every
// fresh. Called with no lock but r.mu.
func (t *Table) count(id string, fresh time.Duration) uint64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(t.countsAt) > fresh {
		rules, err := t.conn.GetRules(t.table, t.chain)
		if err != nil {
			return t.counts[id]
		}
		counts := make(map[string]uint64)
		for _, rl := range rules {
			counts[string(rl.UserData)] += packets(rl)
		}
		t.counts, t.countsAt = counts, time.Now()
	}
	return t.counts[id]
}

// packets is a rule's counter: a nat chain sees a connection's first packet only.
func packets(r *nftables.Rule) uint64 {
	for _, e := range r.Exprs {
		if c, ok := e.(*expr.Counter); ok {
			return c.Packets
		}
	}
	return 0
}

// rule is, in nft's words: meta l4proto tcp ip daddr L tcp dport P (or, for a
// listener on 0.0.0.0, fib daddr type local) meta iif != IIF counter
// ct mark set ct mark | Mark dnat to U.
func rule(l, to netip.AddrPort, iif uint32) []expr.Any {
	port := func(p uint16) []byte { return binaryutil.BigEndian.PutUint16(p) }
	e := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: 1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: []byte{unix.IPPROTO_TCP}},
	}
	if l.Addr().IsUnspecified() {
		e = append(e,
			&expr.Fib{Register: 1, FlagDADDR: true, ResultADDRTYPE: true},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)})
	} else {
		a := l.Addr().As4()
		e = append(e,
			&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: 16, Len: 4},
			&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: a[:]})
	}
	up := to.Addr().As4()
	mask := Mark
	return append(e,
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseTransportHeader, Offset: 2, Len: 2},
		&expr.Cmp{Op: expr.CmpOpEq, Register: 1, Data: port(l.Port())},
		&expr.Meta{Key: expr.MetaKeyIIF, Register: 1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: 1, Data: binaryutil.NativeEndian.PutUint32(iif)},
		&expr.Counter{},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK},
		&expr.Bitwise{SourceRegister: 1, DestRegister: 1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^mask), Xor: binaryutil.NativeEndian.PutUint32(mask)},
		&expr.Ct{Register: 1, Key: expr.CtKeyMARK, SourceRegister: true},
		&expr.Immediate{Register: 1, Data: up[:]},
		&expr.Immediate{Register: 2, Data: port(to.Port())},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1, RegProtoMin: 2, Specified: true},
	)
}

// unanswered matches sact's translated connections to an upstream that never got as
// far as an answer.
type unanswered struct{ to netip.AddrPort }

func (u unanswered) MatchConntrackFlow(f *netlink.ConntrackFlow) bool {
	if f.Mark&Mark == 0 || f.Forward.Protocol != unix.IPPROTO_TCP {
		return false
	}
	src, ok := netip.AddrFromSlice(f.Reverse.SrcIP)
	if !ok || src.Unmap() != u.to.Addr() || f.Reverse.SrcPort != u.to.Port() {
		return false
	}
	tcp, ok := f.ProtoInfo.(*netlink.ProtoInfoTCP)
	// conntrack's TCP states (nf_conntrack_tcp.h): 1 SYN_SENT, 2 SYN_RECV.
	return ok && (tcp.State == 1 || tcp.State == 2)
}

// routesOut reports whether the network namespace of pid has a default route, which a
// translated connection's answers take to a client elsewhere (a container on a Docker
// network made --internal has none).
func routesOut(pid int) (bool, error) {
	ns, err := netns.GetFromPid(pid)
	if err != nil {
		return false, fmt.Errorf("opening the network namespace of pid %d: %w", pid, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return false, fmt.Errorf("opening netlink in the network namespace of pid %d: %w", pid, err)
	}
	defer h.Close()
	routes, err := h.RouteList(nil, unix.AF_INET)
	if err != nil {
		return false, fmt.Errorf("listing the routes of pid %d: %w", pid, err)
	}
	for _, rt := range routes {
		if rt.Dst == nil || rt.Dst.IP.IsUnspecified() {
			if ones, _ := maskOf(rt.Dst); ones == 0 {
				return true, nil
			}
		}
	}
	return false, nil
}

func maskOf(n *net.IPNet) (int, int) {
	if n == nil {
		return 0, 32
	}
	return n.Mask.Size()
}
