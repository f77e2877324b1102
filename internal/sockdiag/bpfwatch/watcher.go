package bpfwatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Options configure a Watcher. The zero value works.
type Options struct {
	// Dir is where Open mounts a cgroup2 hierarchy if none is mounted yet (in a fresh
	// directory under it, removed with the mount on Close). Default: os.TempDir().
	Dir string

	// MaxListeners is how many listeners can be watched at once. Default 4096.
	MaxListeners int

	// NoUnix leaves unix listeners unwatched. Watching them needs a kernel with
	// cgroup/connect_unix (6.7) and BTF; where that cannot be had, Open still succeeds
	// for TCP, UnixErr says why, and Watch of a unix address fails with
	// ErrUnixUnsupported.
	NoUnix bool

	// refuse makes Open fail as if the kernel refused, for tests; mount makes it mount
	// a hierarchy of its own even if one is mounted.
	refuse error
	mount  bool
}

// ErrUnixUnsupported is returned by Watch for a unix address when the connect_unix
// program could not be loaded (Watcher.UnixErr says why).
var ErrUnixUnsupported = errors.New("watching unix listeners is not supported here")

// Watcher holds the programs attached at the root of the cgroup2 hierarchy and the maps
// they count in. It is safe for concurrent use.
type Watcher struct {
	cgroup  string // the cgroup2 root's path
	mounted string // the directory Open mounted the hierarchy on, or ""

	tcpKeys, unixKeys, counters, conns *ebpf.Map
	links                              []link.Link
	progs                              []*ebpf.Program
	unixErr                            error

	// wall0 and mono0 are the same instant by time.Now and by CLOCK_MONOTONIC (the
	// programs' clock): wall0 carries Go's monotonic reading, so times made from it
	// compare right with time.Now whatever the wall clock does.
	wall0 time.Time
	mono0 uint64

	mu     sync.Mutex
	byKey  map[string]*watched
	free   []uint32
	next   uint32
	max    uint32
	gen    uint32
	closed bool
}

// Open loads and attaches the programs. It needs root (CAP_BPF, CAP_PERFMON,
// CAP_NET_ADMIN, and CAP_SYS_ADMIN to mount cgroup2), a kernel with BTF and bpf_link
// for cgroups (5.7 or later; 6.7 for unix listeners), and cgroup2. The error says which
// of these is missing; the caller then judges idleness some other way.
func Open(opts Options) (_ *Watcher, err error) {
	if opts.refuse != nil {
		return nil, opts.refuse
	}
	if opts.MaxListeners <= 0 {
		opts.MaxListeners = 4096
	}
	if opts.Dir == "" {
		opts.Dir = os.TempDir()
	}
	w := &Watcher{max: uint32(opts.MaxListeners), wall0: time.Now(), mono0: monoNow()}
	defer func() {
		if err != nil {
			w.Close()
			err = fmt.Errorf("watching handed-off sockets with eBPF: %w", err)
		}
	}()
	if w.cgroup, w.mounted, err = cgroupRoot(opts.Dir, opts.mount); err != nil {
		return nil, err
	}
	if w.tcpKeys, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "sact_tcp_lns", Type: ebpf.Hash, KeySize: tcpKeySize, ValueSize: slotValSize,
		MaxEntries: 2 * w.max, // two forms of an IPv4 or unspecified address
	}); err != nil {
		return nil, explain("creating a BPF map", err)
	}
	if w.counters, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "sact_counters", Type: ebpf.Array, KeySize: 4, ValueSize: ctrSize,
		MaxEntries: w.max,
	}); err != nil {
		return nil, explain("creating a BPF map", err)
	}
	if w.conns, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "sact_conns", Type: ebpf.SkStorage, KeySize: 4, ValueSize: csSize,
		Flags: unix.BPF_F_NO_PREALLOC,
		Key:   &btf.Int{Name: "int", Size: 4, Encoding: btf.Signed},
		Value: &btf.Struct{Name: "sact_conn", Size: csSize, Members: []btf.Member{
			{Name: "slot", Type: &btf.Int{Name: "u32", Size: 4}, Offset: 0},
			{Name: "gen", Type: &btf.Int{Name: "u32", Size: 4}, Offset: 32},
			{Name: "recv", Type: &btf.Int{Name: "u64", Size: 8}, Offset: 64},
			{Name: "acked", Type: &btf.Int{Name: "u64", Size: 8}, Offset: 128},
		}},
	}); err != nil {
		return nil, explain("creating a BPF socket storage map (needs BTF, kernel 5.2)", err)
	}
	cg, err := os.Open(w.cgroup)
	if err != nil {
		return nil, fmt.Errorf("opening the cgroup2 root %s: %w", w.cgroup, err)
	}
	defer cg.Close()

	ops, err := w.load(ebpf.SockOps, ebpf.AttachCGroupSockOps, "sact_sockops",
		sockOpsProgram(w.tcpKeys.FD(), w.counters.FD(), w.conns.FD()))
	if err != nil {
		return nil, explain("loading the sock_ops program", err)
	}
	if err := w.attach(cg, ops, ebpf.AttachCGroupSockOps); err != nil {
		return nil, explain("attaching the sock_ops program to the cgroup2 root "+w.cgroup, err)
	}
	if opts.NoUnix {
		w.unixErr = errors.New("disabled")
	} else {
		w.unixErr = w.openUnix(cg)
	}
	return w, nil
}

func (w *Watcher) openUnix(cg *os.File) error {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		return fmt.Errorf("reading the kernel's BTF (/sys/kernel/btf/vmlinux): %w", err)
	}
	k, err := findUnixKfuncs(spec)
	if err != nil {
		return err
	}
	if w.unixKeys, err = ebpf.NewMap(&ebpf.MapSpec{
		Name: "sact_unix_lns", Type: ebpf.Hash, KeySize: unixKeyLen, ValueSize: slotValSize,
		MaxEntries: w.max,
	}); err != nil {
		return explain("creating a BPF map", err)
	}
	p, err := w.load(ebpf.CGroupSockAddr, ebpf.AttachCgroupUnixConnect, "sact_unixconn",
		connectUnixProgram(k, w.unixKeys.FD(), w.counters.FD()))
	if err != nil {
		return explain("loading the connect_unix program (kernel 6.7 or later)", err)
	}
	if err := w.attach(cg, p, ebpf.AttachCgroupUnixConnect); err != nil {
		return explain("attaching the connect_unix program", err)
	}
	return nil
}

func (w *Watcher) load(typ ebpf.ProgramType, at ebpf.AttachType, name string, insns asm.Instructions) (*ebpf.Program, error) {
	p, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: name, Type: typ, AttachType: at, Instructions: insns,
		// GPL-compatible, as the kernel requires for reading its structures (the
		// unix path) and calling its kfuncs.
		License: "Dual MIT/GPL",
	})
	if err != nil {
		return nil, err
	}
	w.progs = append(w.progs, p)
	return p, nil
}

// attach attaches p with a bpf_link, never with BPF_PROG_ATTACH: a link lives as long
// as its file descriptor, so the program goes when sact does, however it dies.
func (w *Watcher) attach(cg *os.File, p *ebpf.Program, at ebpf.AttachType) error {
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: p, Attach: at})
	if err != nil {
		return err
	}
	w.links = append(w.links, l)
	return nil
}

// explain adds what to do to the kernel's most common refusals.
func explain(what string, err error) error {
	switch {
	case errors.Is(err, unix.EPERM), errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w (sact needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN)", what, err)
	case errors.Is(err, ebpf.ErrNotSupported), errors.Is(err, unix.EINVAL), errors.Is(err, unix.ENOTSUP):
		return fmt.Errorf("%s: %w (this kernel lacks it)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// CgroupRoot is the cgroup2 root the programs are attached at, where another package's
// programs for every socket of the host attach too (package bypass).
func (w *Watcher) CgroupRoot() string { return w.cgroup }

// UnixErr says why unix listeners cannot be watched, or is nil.
func (w *Watcher) UnixErr() error { return w.unixErr }

// Close detaches the programs, frees the maps and unmounts the hierarchy Open mounted.
// Handles report zero activity after Close.
func (w *Watcher) Close() error {
	w.mu.Lock()
	w.closed = true
	w.mu.Unlock()
	var errs []error
	for _, l := range w.links {
		errs = append(errs, l.Close())
	}
	w.links = nil
	for _, p := range w.progs {
		p.Close()
	}
	w.progs = nil
	for _, m := range []*ebpf.Map{w.tcpKeys, w.unixKeys, w.counters, w.conns} {
		if m != nil {
			m.Close()
		}
	}
	if w.mounted != "" {
		if err := unix.Unmount(w.mounted, unix.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmounting %s: %w", w.mounted, err))
		} else {
			os.Remove(w.mounted)
		}
		w.mounted = ""
	}
	return errors.Join(errs...)
}

// cgroupRoot finds the root of a mounted cgroup2 hierarchy, or mounts one in a fresh
// directory under dir. All cgroup2 mounts show the same hierarchy: attaching at the
// root covers every process of the host, whatever cgroup (v1 or v2) it is in.
func cgroupRoot(dir string, mount bool) (root, mounted string, err error) {
	if p, ok := findCgroup2(); ok && !mount {
		return p, "", nil
	}
	d, err := os.MkdirTemp(dir, "sact-cgroup2-")
	if err != nil {
		return "", "", fmt.Errorf("making a directory to mount cgroup2 on: %w", err)
	}
	if err := unix.Mount("none", d, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		os.Remove(d)
		return "", "", fmt.Errorf("mounting cgroup2 on %s: %w (needs CAP_SYS_ADMIN in the host's namespaces, and a kernel with cgroup2)", d, err)
	}
	return d, d, nil
}

// findCgroup2 returns a mount point of the cgroup2 hierarchy's root from
// /proc/self/mountinfo.
func findCgroup2() (string, bool) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return "", false
	}
	for line := range strings.Lines(string(b)) {
		// id parent major:minor root mountpoint options... - fstype source superoptions
		pre, post, ok := strings.Cut(line, " - ")
		if !ok || !strings.HasPrefix(post, "cgroup2 ") {
			continue
		}
		f := strings.Fields(pre)
		if len(f) < 5 || f[3] != "/" {
			continue // a mount of a sub-cgroup, not of the root
		}
		return unescapeMount(f[4]), true
	}
	return "", false
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			if _, err := fmt.Sscanf(s[i+1:i+4], "%03o", &v); err == nil {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Activity is what the programs counted for one listener since Watch.
type Activity struct {
	// Connects counts connections: for TCP, those accepted by the kernel on the
	// listener (handshake complete), whether or not the app has called accept yet;
	// for unix, connect(2) calls to its path (see the package documentation).
	Connects uint64
	// Closes counts the TCP connections of Connects that have ended, whichever side
	// closed first and however (FIN, reset, TIME_WAIT). Zero for unix.
	Closes uint64
	// BytesIn and BytesOut count the TCP bytes received from clients and sent to them
	// (acknowledged). Zero for unix.
	BytesIn, BytesOut uint64
	// Last is when a connection last opened or closed or a byte last moved, or the
	// zero time if nothing happened since Watch.
	Last time.Time
}

// Open is the number of connections open: Connects - Closes for TCP, or -1 for unix,
// whose closes are not seen.
func (a Activity) Open(network string) int {
	if network != "tcp" {
		return -1
	}
	return int(a.Connects - a.Closes)
}

// Handle is one watched listener.
type Handle struct {
	w    *Watcher
	l    *watched
	once sync.Once
}

// watched is a listener's slot, shared by the handles of its address.
type watched struct {
	network string
	slot    uint32
	gen     uint32
	key     [][]byte // the first is the listener's own; others are alternative forms
	keys    *ebpf.Map
	refs    int
}

// Watch starts counting for the listener at addr, what its Addr method returns: a
// *net.TCPAddr (a listener on 0.0.0.0 or :: counts connections to any local address
// of its port and family), or a *net.UnixAddr bound to a path or an abstract name
// ("@name"). A path is matched as clients write it (see the package documentation), so
// give it as the clients do: absolute.
//
// Watching an address already watched returns another handle on the same counters
// (as when a reload hands a listener from an app's old incarnation to its new one);
// they count from the first Watch, and until the last handle is closed.
func (w *Watcher) Watch(addr net.Addr) (*Handle, error) {
	l := &watched{refs: 1}
	switch a := addr.(type) {
	case *net.TCPAddr:
		ap := a.AddrPort()
		if ap.Port() == 0 {
			return nil, fmt.Errorf("watch %v: not the address of a bound TCP listener", a)
		}
		l.network, l.keys, l.key = "tcp", w.tcpKeys, tcpKeys(ap)
	case *net.UnixAddr:
		if a.Net != "unix" || a.Name == "" {
			return nil, fmt.Errorf("watch %s %q: not the address of a unix stream listener", a.Net, a.Name)
		}
		if w.unixErr != nil {
			return nil, fmt.Errorf("watch %s: %w: %v", a.Name, ErrUnixUnsupported, w.unixErr)
		}
		k, err := unixKey(a.Name)
		if err != nil {
			return nil, err
		}
		l.network, l.keys, l.key = "unix", w.unixKeys, [][]byte{k}
	default:
		return nil, fmt.Errorf("watch %T %v: want the address of a TCP or unix listener", addr, addr)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, errors.New("watch: the watcher is closed")
	}
	id := l.network + "\x00" + string(l.key[0])
	if have, ok := w.byKey[id]; ok {
		have.refs++
		return &Handle{w: w, l: have}, nil
	}
	switch {
	case len(w.free) > 0:
		l.slot = w.free[len(w.free)-1]
		w.free = w.free[:len(w.free)-1]
	case w.next < w.max:
		l.slot = w.next
		w.next++
	default:
		return nil, fmt.Errorf("watch %v: already watching %d listeners, the most it can", addr, w.max)
	}
	w.gen++
	l.gen = w.gen
	var ctr [ctrSize]byte
	binary.NativeEndian.PutUint64(ctr[ctrGen:], uint64(l.gen))
	if err := w.counters.Put(l.slot, ctr[:]); err != nil {
		w.free = append(w.free, l.slot)
		return nil, fmt.Errorf("watch %v: %w", addr, err)
	}
	var v [slotValSize]byte
	binary.NativeEndian.PutUint32(v[0:], l.slot)
	binary.NativeEndian.PutUint32(v[4:], l.gen)
	for i := 0; i < len(l.key); i++ {
		err := l.keys.Update(l.key[i], v[:], ebpf.UpdateNoExist)
		if err == nil {
			continue
		}
		if i > 0 && errors.Is(err, ebpf.ErrKeyExist) {
			// Another listener's own form (say 0.0.0.0 beside a v6-only ::).
			l.key = slices.Delete(l.key, i, i+1)
			i--
			continue
		}
		for _, k := range l.key[:i] {
			l.keys.Delete(k)
		}
		w.free = append(w.free, l.slot)
		return nil, fmt.Errorf("watch %v: %w", addr, err)
	}
	if w.byKey == nil {
		w.byKey = make(map[string]*watched)
	}
	w.byKey[id] = l
	return &Handle{w: w, l: l}, nil
}

// tcpKeys are the map keys of a TCP listener: the accepted connection's family and
// local address as the kernel reports them. An IPv4 address is also looked for as
// IPv4-mapped on an IPv6 socket, and an unspecified one (0.0.0.0 or ::, which Go
// reports alike for a dual-stack socket) in both families.
func tcpKeys(ap netip.AddrPort) [][]byte {
	a := ap.Addr().Unmap()
	key := func(fam uint32, addr []byte) []byte {
		k := make([]byte, tcpKeySize)
		binary.NativeEndian.PutUint32(k[0:], fam)
		binary.NativeEndian.PutUint32(k[4:], uint32(ap.Port()))
		copy(k[8:], addr)
		return k
	}
	switch {
	case a.IsUnspecified():
		return [][]byte{key(afInet, nil), key(afInet6, nil)}
	case a.Is4():
		b4, b16 := a.As4(), netip.AddrFrom16(a.As16()).As16()
		return [][]byte{key(afInet, b4[:]), key(afInet6, b16[:])}
	default:
		b := a.As16()
		return [][]byte{key(afInet6, b[:])}
	}
}

func unixKey(name string) ([]byte, error) {
	k := make([]byte, unixKeyLen)
	if strings.HasPrefix(name, "@") {
		name = "\x00" + name[1:]
	} else if !filepath.IsAbs(name) {
		return nil, fmt.Errorf("watch %q: give the unix socket's absolute path, as its clients do", name)
	}
	if len(name) > unixKeyLen || len(name) == unixKeyLen && name[0] != 0 {
		return nil, fmt.Errorf("watch %q: longer than a unix socket path can be", name)
	}
	copy(k, name)
	return k, nil
}

// Network is "tcp" or "unix".
func (h *Handle) Network() string { return h.l.network }

// Activity reads the listener's counters: a map lookup, about a microsecond.
func (h *Handle) Activity() (Activity, error) {
	var b [ctrSize]byte
	if err := h.w.counters.Lookup(h.l.slot, b[:]); err != nil {
		return Activity{}, fmt.Errorf("reading the counters: %w", err)
	}
	if binary.NativeEndian.Uint64(b[ctrGen:]) != uint64(h.l.gen) {
		return Activity{}, errors.New("reading the counters: the listener is no longer watched")
	}
	a := Activity{
		Connects: binary.NativeEndian.Uint64(b[ctrConnects:]),
		Closes:   binary.NativeEndian.Uint64(b[ctrCloses:]),
		BytesIn:  binary.NativeEndian.Uint64(b[ctrBytesIn:]),
		BytesOut: binary.NativeEndian.Uint64(b[ctrBytesOut:]),
	}
	if ns := binary.NativeEndian.Uint64(b[ctrLast:]); ns != 0 {
		a.Last = h.w.wall0.Add(time.Duration(int64(ns - h.w.mono0)))
	}
	return a, nil
}

// LastActive and OpenConns make a Handle an activity source for an idle clock, of the
// same shape as a relayed connection's lease: when anything last happened, and how many
// connections are open (-1: not known, for unix). Errors count as "now" and -1: a
// source that cannot be read must not make a busy app look idle.
func (h *Handle) LastActive() time.Time {
	a, err := h.Activity()
	if err != nil {
		return time.Now()
	}
	return a.Last
}

// OpenConns: see LastActive.
func (h *Handle) OpenConns() int {
	a, err := h.Activity()
	if err != nil {
		return -1
	}
	return a.Open(h.l.network)
}

// Close stops counting for the listener once no other handle on it is open; its slot
// may then be reused, and connections it counted that are still open count nowhere.
// Safe to call twice.
func (h *Handle) Close() error {
	var err error
	h.once.Do(func() {
		w, l := h.w, h.l
		w.mu.Lock()
		defer w.mu.Unlock()
		if l.refs--; l.refs > 0 || w.closed {
			return
		}
		delete(w.byKey, l.network+"\x00"+string(l.key[0]))
		for _, k := range l.key {
			if derr := l.keys.Delete(k); derr != nil && err == nil {
				err = derr
			}
		}
		var ctr [ctrSize]byte // gen 0: the programs skip the slot until reused
		w.counters.Put(l.slot, ctr[:])
		w.free = append(w.free, l.slot)
	})
	return err
}

func monoNow() uint64 {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// Check reports whether Open would succeed here, for `sact check`: it opens a Watcher
// and closes it at once. The error is Open's, or wraps ErrUnixUnsupported when only
// unix listeners cannot be watched.
func Check(opts Options) error {
	w, err := Open(opts)
	if err != nil {
		return err
	}
	uerr := w.UnixErr()
	w.Close()
	if uerr != nil {
		return fmt.Errorf("%w: %v", ErrUnixUnsupported, uerr)
	}
	return nil
}
