// Package bypass sends this host's own clients of a relayed app straight to the app's
// running instance, past the relay, the way Cilium's socket-level load balancing does
// for a Kubernetes service: a cgroup/connect4 program rewrites the address of a
// connect(2) to one of the app's TCP listen addresses into its instance's upstream
// (say 127.0.0.1:8001 into 172.17.0.5:8080) before the first packet is sent. The
// connection then is the client's and the container's alone: no byte crosses sact, and
// it costs what a direct connection does.
//
//	b, err := bypass.Open(watcher) // a bpfwatch.Watcher: counting and the cgroup2 root
//	r, err := b.Route(listen, upstream) // when an instance is ready
//	r.Hold()                            // before it is stopped or frozen
//	r.Close()
//
// # Which connects are rewritten
//
// Only TCP connects over IPv4 by processes in the host's network namespace (the one
// sact runs in, told by its cookie) to an address a Route holds: a listen address, or
// for a listener on 0.0.0.0, 127.0.0.1 and the host's IPv4 addresses at the time of
// Route. A container's connects are never rewritten (its namespace differs), nor a
// connect from a socket bound to a loopback address when the upstream is not one (the
// kernel would refuse that route), nor IPv6, unix sockets, or anything while the app
// is not running: those reach sact's listener as before, and sact relays them, starts
// the app for them, or queues them.
//
// # Safety
//
// The rewrite gives a local client nothing it could not do itself: a container's
// upstream is reachable from the host's namespace (sact dials it from there), and the
// program changes only the destination of a connect whose destination is sact's own
// listen address. The program is attached with a bpf_link held by sact's file
// descriptor, never pinned, so it goes away with sact however sact ends; the clients
// then reach sact's listener, or nothing, as without it.
//
// # Activity
//
// sact does not see a bypassed connection, so a Route counts the instance's side of
// every connection to its upstream through bpfwatch (connections accepted, closed and
// bytes moved, in the kernel): LastActive and OpenConns have the shape of a relayed
// lease's, and the idle clock reads them. Before an idle stop or pause the activator
// holds the route (new connects go to sact's listener again) and looks once more after
// a short grace, so a client that connected just before the hold keeps its instance.
package bypass

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// Offsets in struct bpf_sock_addr and struct bpf_sock (include/uapi/linux/bpf.h), a
// stable ABI the kernel rewrites to its own layout. TestContextLayout checks them
// against the kernel's BTF.
const (
	saUserIP4  = 4  // __u32, network byte order
	saUserPort = 24 // __u32 holding a __be16
	saType     = 32
	saSk       = 64 // struct bpf_sock *
	skSrcIP4   = 24
)

// Layout of the routes map: the key is an IPv4 address and port as a client connects
// to them, the value the upstream's, the count of connects rewritten and the id of the
// instance's network namespace, where its listener is looked up.
const (
	keySize     = 8 // ip4[4], port[2] big-endian, 2 zero bytes
	valIP4      = 0
	valPort     = 4 // as the key's
	valConnects = 8 // u64
	valNetns    = 16
	valSize     = 24
)

// maxRoutes bounds the map: addresses, not connections (a listener on 0.0.0.0 takes one
// per host address).
const maxRoutes = 1 << 16

// program rewrites a matching connect. Registers: R6 the context, R7 the route.
func program(routes int, netns uint64) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, saType, asm.Word),
		asm.JNE.Imm(asm.R2, unix.SOCK_STREAM, "allow"),
		asm.FnGetNetnsCookie.Call(), // R1: the context
		asm.LoadImm(asm.R2, int64(netns), asm.DWord),
		asm.JNE.Reg(asm.R0, asm.R2, "allow"),
		asm.LoadMem(asm.R2, asm.R6, saUserIP4, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, saUserPort, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, routes),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),

		// Only to a listener that is there now: the clients of an instance that crashed
		// (before the engine says so) or closed its listener go to sact, which starts it
		// anew or tells them why not. The tuple (struct bpf_sock_tuple's ipv4) asks for
		// upstream's address and port in the instance's namespace.
		asm.StoreImm(asm.RFP, -24, 0, asm.Word),
		asm.LoadMem(asm.R2, asm.R7, valIP4, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R2, asm.Word),
		asm.StoreImm(asm.RFP, -16, 0, asm.Half),
		asm.LoadMem(asm.R2, asm.R7, valPort, asm.Half),
		asm.StoreMem(asm.RFP, -14, asm.R2, asm.Half),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.Mov.Imm(asm.R3, 12),
		asm.LoadMem(asm.R4, asm.R7, valNetns, asm.Word),
		asm.Mov.Imm(asm.R5, 0),
		asm.FnSkLookupTcp.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.Mov.Reg(asm.R1, asm.R0),
		asm.FnSkRelease.Call(),

		// A socket bound to a loopback address cannot reach a non-loopback upstream:
		// leave its connect to sact.
		asm.LoadMem(asm.R2, asm.R7, valIP4, asm.Byte),
		asm.JEq.Imm(asm.R2, 127, "rewrite"),
		asm.LoadMem(asm.R2, asm.R6, saSk, asm.DWord),
		asm.LoadMem(asm.R3, asm.R2, skSrcIP4, asm.Byte),
		asm.JEq.Imm(asm.R3, 127, "allow"),

		asm.LoadMem(asm.R2, asm.R7, valIP4, asm.Word).WithSymbol("rewrite"),
		asm.StoreMem(asm.R6, saUserIP4, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R7, valPort, asm.Word),
		asm.StoreMem(asm.R6, saUserPort, asm.R2, asm.Word),
		asm.Mov.Imm(asm.R2, 1),
		asm.AddAtomic.Mem(asm.R7, asm.R2, asm.DWord, valConnects),

		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	}
}

// Bypass holds the program and its map. It is safe for concurrent use.
type Bypass struct {
	w      *bpfwatch.Watcher
	routes *ebpf.Map
	prog   *ebpf.Program
	link   link.Link

	// addrs lists the host's addresses, for a listener on 0.0.0.0; tests replace it.
	addrs func() ([]netip.Addr, error)

	mu     sync.Mutex
	owner  map[[keySize]byte]*Route
	closed bool
}

// Open loads the program and attaches it at the root of w's cgroup2 hierarchy, where it
// runs for every connect of the host. It needs what bpfwatch.Open needs, and Linux 5.14
// (SO_NETNS_COOKIE).
func Open(w *bpfwatch.Watcher) (_ *Bypass, err error) {
	b := &Bypass{w: w, addrs: hostAddrs, owner: make(map[[keySize]byte]*Route)}
	defer func() {
		if err != nil {
			b.Close()
			err = fmt.Errorf("opening the connect bypass: %w", err)
		}
	}()
	netns, err := netnsCookie()
	if err != nil {
		return nil, err
	}
	if b.routes, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "sact_bypass", Type: ebpf.Hash, KeySize: keySize, ValueSize: valSize, MaxEntries: maxRoutes,
	}); err != nil {
		return nil, fmt.Errorf("creating a BPF map: %w", err)
	}
	if b.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "sact_bypass", Type: ebpf.CGroupSockAddr, AttachType: ebpf.AttachCGroupInet4Connect,
		Instructions: program(b.routes.FD(), netns), License: "Dual MIT/GPL",
	}); err != nil {
		return nil, fmt.Errorf("loading the connect4 program: %w", err)
	}
	cg, err := os.Open(w.CgroupRoot())
	if err != nil {
		return nil, fmt.Errorf("opening the cgroup2 root: %w", err)
	}
	defer cg.Close()
	// A bpf_link, never BPF_PROG_ATTACH: it lives as long as sact's descriptor.
	if b.link, err = link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: b.prog, Attach: ebpf.AttachCGroupInet4Connect}); err != nil {
		return nil, fmt.Errorf("attaching the connect4 program to %s: %w", w.CgroupRoot(), err)
	}
	return b, nil
}

// netnsCookie is the cookie of sact's own network namespace, the host's.
func netnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("a socket to read the network namespace's cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("reading the network namespace's cookie (SO_NETNS_COOKIE, Linux 5.14): %w", err)
	}
	return c, nil
}

// Close detaches the program: connects reach sact's listeners again.
func (b *Bypass) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	var errs []error
	if b.link != nil {
		errs = append(errs, b.link.Close())
	}
	if b.prog != nil {
		errs = append(errs, b.prog.Close())
	}
	if b.routes != nil {
		errs = append(errs, b.routes.Close())
	}
	return errors.Join(errs...)
}

// ErrNotRoutable is Route's error for an upstream or listen addresses it cannot take:
// the relay serves such an app as before.
var ErrNotRoutable = errors.New("not routable past the relay")

// Route sends the host's connects to listen to up, where process pid (the instance's,
// on this host) listens, and counts the instance's connections there, until Hold or
// Close. A connect is sent only while the instance's listener is there. An address
// another Route held is taken from it (the app's new incarnation, say).
func (b *Bypass) Route(listen []netip.AddrPort, up netip.AddrPort, pid int) (*Route, error) {
	up = netip.AddrPortFrom(up.Addr().Unmap(), up.Port())
	if !up.Addr().Is4() || up.Port() == 0 {
		return nil, fmt.Errorf("upstream %s: %w (IPv4 TCP only)", up, ErrNotRoutable)
	}
	if pid <= 0 {
		return nil, fmt.Errorf("upstream %s: %w (not a process of this host)", up, ErrNotRoutable)
	}
	keys, err := b.keys(listen, up)
	if err != nil {
		return nil, err
	}
	netns, err := netnsOf(pid)
	if err != nil {
		return nil, err
	}
	h, err := b.w.Watch(net.TCPAddrFromAddrPort(up))
	if err != nil {
		return nil, fmt.Errorf("counting the connections to %s: %w", up, err)
	}
	r := &Route{b: b, up: up, h: h, keys: keys}
	ip := up.Addr().As4()
	copy(r.val[valIP4:], ip[:])
	binary.BigEndian.PutUint16(r.val[valPort:], up.Port())
	binary.NativeEndian.PutUint32(r.val[valNetns:], netns)
	if err := r.Resume(); err != nil {
		h.Close()
		return nil, err
	}
	return r, nil
}

// keys are the map keys of the listen addresses.
func (b *Bypass) keys(listen []netip.AddrPort, up netip.AddrPort) ([][keySize]byte, error) {
	var keys [][keySize]byte
	add := func(a netip.Addr, port uint16) {
		if !a.Is4() || netip.AddrPortFrom(a, port) == up {
			return
		}
		var k [keySize]byte
		ip := a.As4()
		copy(k[:4], ip[:])
		binary.BigEndian.PutUint16(k[4:], port)
		if !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	for _, l := range listen {
		a := l.Addr().Unmap()
		if !a.IsUnspecified() {
			add(a, l.Port())
			continue
		}
		add(netip.AddrFrom4([4]byte{127, 0, 0, 1}), l.Port())
		host, err := b.addrs()
		if err != nil {
			return nil, fmt.Errorf("listing the host's addresses for %s: %w", l, err)
		}
		for _, h := range host {
			add(h.Unmap(), l.Port())
		}
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("listen addresses %v: %w (no IPv4 TCP address)", listen, ErrNotRoutable)
	}
	return keys, nil
}

func hostAddrs() ([]netip.Addr, error) {
	as, err := net.InterfaceAddrs()
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range as {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out, nil
}

// Route is one instance's bypass.
type Route struct {
	b    *Bypass
	up   netip.AddrPort
	val  [valSize]byte
	keys [][keySize]byte
	h    *bpfwatch.Handle

	mu     sync.Mutex
	held   bool
	closed bool
	// connects counts the connects rewritten under keys no longer in the map.
	connects atomic.Uint64
}

// Upstream is where the route sends its clients.
func (r *Route) Upstream() netip.AddrPort { return r.up }

// Hold takes the route out of the map: connects go to sact's listener again, until
// Resume. Connects the program rewrote before are not undone.
func (r *Route) Hold() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held || r.closed {
		return nil
	}
	r.held = true
	return r.remove()
}

// Resume puts the route back after Hold.
func (r *Route) Resume() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return errors.New("resuming a closed route")
	}
	r.held = false
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return errors.New("the bypass is closed")
	}
	for i, k := range r.keys {
		if err := b.routes.Put(k[:], r.val[:]); err != nil {
			for _, k := range r.keys[:i] {
				b.deleteKey(k, r)
			}
			return fmt.Errorf("routing %s to %s: %w", keyString(k), r.up, err)
		}
		b.owner[k] = r // taken from another route that had it: that one no longer removes it
	}
	return nil
}

// remove deletes r's keys that it still owns. Called with r.mu held.
func (r *Route) remove() error {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed {
		return nil
	}
	var errs []error
	for _, k := range r.keys {
		errs = append(errs, b.deleteKey(k, r))
	}
	return errors.Join(errs...)
}

// deleteKey takes k out of the map if r owns it, keeping its count. Called with b.mu
// held.
func (b *Bypass) deleteKey(k [keySize]byte, r *Route) error {
	if b.owner[k] != r {
		return nil
	}
	delete(b.owner, k)
	var v [valSize]byte
	if err := b.routes.LookupAndDelete(k[:], v[:]); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("unrouting %s: %w", keyString(k), err)
	}
	r.connects.Add(binary.NativeEndian.Uint64(v[valConnects:]))
	return nil
}

// Connects counts the connects the program rewrote to this route (a map read while
// routed).
func (r *Route) Connects() uint64 {
	n := r.connects.Load()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.held || r.closed {
		return n
	}
	for _, k := range r.keys {
		var v [valSize]byte
		if err := r.b.routes.Lookup(k[:], v[:]); err == nil {
			n += binary.NativeEndian.Uint64(v[valConnects:])
		}
	}
	return n
}

// LastActive is when a connection to the upstream last opened or closed or moved a
// byte, as the kernel counted it: the relay's own connections to it included.
func (r *Route) LastActive() time.Time { return r.h.LastActive() }

// OpenConns counts the connections to the upstream open now, the relay's included.
func (r *Route) OpenConns() int { return r.h.OpenConns() }

// Close takes the route out for good and stops counting.
func (r *Route) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	err := r.remove()
	return errors.Join(err, r.h.Close())
}

func keyString(k [keySize]byte) string {
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte(k[:4])), binary.BigEndian.Uint16(k[4:])).String()
}
