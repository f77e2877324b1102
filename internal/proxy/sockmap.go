package proxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Mode chooses how Relay moves bytes.
type Mode string

const (
	// ModeAuto uses the kernel relay where it loads and takes the connection, splice
	// otherwise.
	ModeAuto Mode = "auto"
	// ModeSplice always uses splice(2) (or copying, for sockets that cannot splice).
	ModeSplice Mode = "splice"
	// ModeKernel asks for the kernel relay; a connection it cannot take is spliced.
	ModeKernel Mode = "kernel"
)

// Paths, as Stats.Path reports them.
const (
	PathKernel = "kernel"
	PathSplice = "splice"
)

// DefaultMode is the mode when neither Options.Mode nor SACT_RELAY says otherwise.
const DefaultMode = ModeSplice

// ParseMode reads a mode as SACT_RELAY or a config would spell it; "" is DefaultMode.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case "":
		return DefaultMode, nil
	case ModeAuto, ModeSplice, ModeKernel:
		return Mode(s), nil
	}
	return "", fmt.Errorf("relay mode %q: want auto, splice or kernel", s)
}

// EnvMode is the mode SACT_RELAY sets, or DefaultMode when it is unset or wrong (its
// error says which).
func EnvMode() (Mode, error) {
	m, err := ParseMode(os.Getenv("SACT_RELAY"))
	if err != nil {
		return DefaultMode, fmt.Errorf("SACT_RELAY: %w", err)
	}
	return m, nil
}

var envMode = sync.OnceValue(func() Mode { m, _ := EnvMode(); return m })

// KernelRelay reports whether the kernel relay is loaded, loading it if it was not tried
// yet, and why not.
func KernelRelay() error {
	_, err := kernelEngine()
	return err
}

var (
	engineOnce sync.Once
	theEngine  *engine
	engineErr  error
	// openEngine loads the kernel relay; tests replace it to see the fallback.
	openEngine = openSockmap
)

func kernelEngine() (*engine, error) {
	engineOnce.Do(func() { theEngine, engineErr = openEngine() })
	return theEngine, engineErr
}

// attachErrs counts the connections the kernel relay could not take, and lastAttachErr
// is why the last one was refused.
var (
	attachErrs    atomic.Int64
	lastAttachErr atomic.Pointer[error]
)

// passes counts the relayed sockets that ran past their credit and were copied, and
// kernelCopied the bytes copied so.
var (
	passes       atomic.Int64
	kernelCopied atomic.Int64
)

// kernelAttached counts the connections the kernel relay took.
var kernelAttached atomic.Int64

// kernelMoved counts the bytes the kernel relay moved, so tests can tell it is used.
var kernelMoved atomic.Int64

// engine is the kernel relay: its maps, the verdict program and one epoll instance
// that wakes sact when a relayed socket ends its input or errs.
//
//   - targets (SOCKHASH, cookie -> socket) holds every relayed socket as a redirect
//     target. No program is attached to it, so being in it changes nothing about how a
//     socket receives.
//   - active (SOCKHASH, cookie -> socket) has the verdict program attached: every
//     socket in it has its input redirected to its peer in targets. A socket enters
//     active only once it and its peer are in targets, so no byte is ever redirected to
//     a socket that is not there yet (which would drop it).
//   - peers (HASH, cookie -> peer's cookie, slot) pairs them, and counts (ARRAY, slot ->
//     bytes redirected, whether it keeps its input) counts; sact reads counts through
//     mmap(2), so that knowing what every connection moved costs no syscall.
//   - credit (HASH, cookie -> count allowed) and events (RINGBUF): back-pressure. A
//     redirect does not wait for the peer: the kernel queues the chunk for the peer's
//     send path and reopens the source's TCP window at once, so a client that stops
//     reading would have the kernel queue everything the server sends. When a socket has
//     redirected creditBytes more than its peer has taken, the program tells sact (its
//     cookie in events), and sact takes the socket out of active: what arrives next stays
//     in its receive queue, whose TCP window closes as it fills, until the peer has sent
//     the backlog; then sact puts it back.
type engine struct {
	targets, active, peers *ebpf.Map
	counts, credit, events *ebpf.Map
	prog                   *ebpf.Program
	epfd                   int
	ring                   *ringbuf.Reader

	countMem []byte                 // counts, mapped
	slots    *[maxRelayed]slotCount // countMem's entries

	mu       sync.Mutex
	conns    map[uint32]*kconn
	byCookie map[uint64]*kconn
	next     uint32

	// The slots in counts: bySlot has the connection of each slot ever used (nil if
	// none now), those from len(bySlot) on are unused yet, and freed holds the freed ones,
	// oldest first, each reused only slotQuarantine after it was freed: a verdict
	// program still running for the socket that had it must not count on the new one.
	// fresh lists the slots handed out since the scan last looked.
	bySlot []*kconn
	freed  []freedSlot
	fresh  []uint32

	// The scan of the counters for Options.Activity (see scan): stop ends it, scanning
	// is its goroutine.
	stop     chan struct{}
	scanning sync.WaitGroup
}

// maxRelayed is how many sockets the maps hold: 2 per relayed connection.
const maxRelayed = 1 << 17

func openSockmap() (e *engine, err error) {
	e = &engine{conns: make(map[uint32]*kconn), byCookie: make(map[uint64]*kconn), epfd: -1, stop: make(chan struct{})}
	defer func() {
		if err != nil {
			e.close()
			e = nil
			err = fmt.Errorf("kernel relay (sockmap): %w", err)
		}
	}()
	sock := func(name string) (*ebpf.Map, error) {
		return ebpf.NewMap(&ebpf.MapSpec{Name: name, Type: ebpf.SockHash, KeySize: 8, ValueSize: 8, MaxEntries: maxRelayed})
	}
	if e.targets, err = sock("sact_rl_targets"); err != nil {
		return nil, explainBPF("creating a SOCKHASH map", err)
	}
	if e.active, err = sock("sact_rl_active"); err != nil {
		return nil, explainBPF("creating a SOCKHASH map", err)
	}
	if e.peers, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sact_rl_peers", Type: ebpf.Hash, KeySize: 8, ValueSize: peerSize,
		MaxEntries: maxRelayed, Flags: unix.BPF_F_NO_PREALLOC}); err != nil {
		return nil, explainBPF("creating a BPF hash map", err)
	}
	if e.counts, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sact_rl_counts", Type: ebpf.Array, KeySize: 4, ValueSize: countSize,
		MaxEntries: maxRelayed, Flags: unix.BPF_F_MMAPABLE}); err != nil {
		return nil, explainBPF("creating a BPF array map", err)
	}
	if e.countMem, err = unix.Mmap(e.counts.FD(), 0, maxRelayed*countSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("mapping the BPF array of counts: %w", err)
	}
	e.slots = (*[maxRelayed]slotCount)(unsafe.Pointer(&e.countMem[0]))
	if e.credit, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sact_rl_credit", Type: ebpf.Hash, KeySize: 8, ValueSize: creditSize,
		MaxEntries: maxRelayed, Flags: unix.BPF_F_NO_PREALLOC}); err != nil {
		return nil, explainBPF("creating a BPF hash map", err)
	}
	if e.events, err = ebpf.NewMap(&ebpf.MapSpec{Name: "sact_rl_events", Type: ebpf.RingBuf, MaxEntries: 256 << 10}); err != nil {
		return nil, explainBPF("creating a BPF ring buffer", err)
	}
	if e.prog, err = ebpf.NewProgram(&ebpf.ProgramSpec{
		Name: "sact_rl_verdict", Type: ebpf.SkSKB, AttachType: ebpf.AttachSkSKBStreamVerdict,
		Instructions: verdictProgram(e.peers.FD(), e.counts.FD(), e.targets.FD(), e.credit.FD(), e.events.FD()), License: "Dual MIT/GPL",
	}); err != nil {
		return nil, explainBPF("loading the sk_skb stream verdict program", err)
	}
	// Attached to the map, which only sact's fds hold: it goes when sact does.
	if err = link.RawAttachProgram(link.RawAttachProgramOptions{Target: e.active.FD(), Program: e.prog, Attach: ebpf.AttachSkSKBStreamVerdict}); err != nil {
		return nil, explainBPF("attaching the stream verdict program to its SOCKHASH", err)
	}
	if e.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
		return nil, fmt.Errorf("epoll_create1: %w", err)
	}
	if e.ring, err = ringbuf.NewReader(e.events); err != nil {
		return nil, fmt.Errorf("reading the BPF ring buffer: %w", err)
	}
	go e.loop()
	go e.readEvents()
	e.scanning.Go(e.scanLoop)
	return e, nil
}

func explainBPF(what string, err error) error {
	if errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) {
		return fmt.Errorf("%s: %w (the kernel relay needs root, or CAP_BPF and CAP_NET_ADMIN; set SACT_RELAY=splice to not try)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

func (e *engine) close() {
	close(e.stop)
	e.scanning.Wait()
	if e.ring != nil {
		e.ring.Close()
	}
	if e.countMem != nil {
		unix.Munmap(e.countMem)
	}
	for _, c := range []interface{ Close() error }{e.prog, e.active, e.targets, e.peers, e.counts, e.credit, e.events} {
		if c != nil && !isNilCloser(c) {
			c.Close()
		}
	}
	if e.epfd >= 0 {
		unix.Close(e.epfd)
	}
}

func isNilCloser(c any) bool {
	switch c := c.(type) {
	case *ebpf.Map:
		return c == nil
	case *ebpf.Program:
		return c == nil
	}
	return false
}

// loop waits for relayed sockets to end their input or err and wakes their relays. It
// asks epoll for EPOLLRDHUP only (EPOLLERR and EPOLLHUP come anyway): the wakeups the
// kernel sends for every chunk received carry EPOLLIN, which epoll filters out without
// waking anyone, so a busy relayed connection costs sact nothing here.
func (e *engine) loop() {
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(e.epfd, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		e.mu.Lock()
		for _, ev := range evs[:n] {
			if c := e.conns[uint32(ev.Fd)]; c != nil {
				c.poke()
			}
		}
		e.mu.Unlock()
	}
}

// readEvents passes the program's word that a socket ran out of credit to its relay.
func (e *engine) readEvents() {
	var rec ringbuf.Record
	for {
		if err := e.ring.ReadInto(&rec); err != nil {
			if errors.Is(err, os.ErrClosed) {
				return
			}
			continue
		}
		if len(rec.RawSample) < 8 {
			continue
		}
		cookie := binary.NativeEndian.Uint64(rec.RawSample)
		e.mu.Lock()
		if c := e.byCookie[cookie]; c != nil {
			if cookie == c.c.cookie {
				c.c.overdrawn.Store(true)
			} else {
				c.u.overdrawn.Store(true)
			}
			c.poke()
		}
		e.mu.Unlock()
	}
}

// creditBytes is how much a socket may redirect before it keeps its input and sact
// copies it: more than any request or response worth the kernel's speed, little enough
// that a client that stops reading costs at most this in the kernel's queue beyond the
// socket buffers. Variable for tests.
var creditBytes int64 = 1 << 20

// setCredit moves s's credits on from what its peer has taken: soft at creditBytes more,
// hard at twice that.
func (e *engine) setCredit(s, peer *kside) error {
	w, err := written(peer.fd)
	if err != nil {
		return err
	}
	taken := uint64(w - peer.base)
	var v [creditSize]byte
	binary.NativeEndian.PutUint64(v[creditSoft:], taken+uint64(creditBytes))
	binary.NativeEndian.PutUint64(v[creditHard:], taken+2*uint64(creditBytes))
	return e.credit.Update(s.cookie, v[:], ebpf.UpdateAny)
}

// slotCount is a counts map value (see countBytes): sact reads it where the program
// writes it, through the mapped array.
type slotCount struct {
	bytes uint64
	kept  uint32
	_     uint32
}

var _ [countSize - unsafe.Sizeof(slotCount{})]struct{} // countSize == its size:
var _ [unsafe.Sizeof(slotCount{}) - countSize]struct{} // neither is negative

// freedSlot is a slot in counts that a connection no longer uses, since at.
type freedSlot struct {
	slot uint32
	at   time.Time
}

// slotQuarantine is how long a freed slot waits before another socket has it: far
// longer than a verdict program that found the old socket's entry runs.
const slotQuarantine = time.Second

// errNoSlot refuses a connection when the counts are full: it is spliced.
var errNoSlot = errors.New("no free slot in the kernel relay's counts")

// takeSlots gives both sockets of k a slot, zeroed, or errNoSlot; e.mu is held.
func (e *engine) takeSlots(k *kconn) error {
	var got []uint32
	for range 2 {
		switch {
		case len(e.freed) > 0 && time.Since(e.freed[0].at) >= slotQuarantine:
			got = append(got, e.freed[0].slot)
			e.freed = e.freed[1:]
		case len(e.bySlot) < maxRelayed:
			got = append(got, uint32(len(e.bySlot)))
			e.bySlot = append(e.bySlot, nil)
		default:
			for _, slot := range got {
				e.freed = append(e.freed, freedSlot{slot, time.Time{}})
			}
			return errNoSlot
		}
	}
	k.c.slot, k.u.slot = got[0], got[1]
	for _, slot := range got {
		atomic.StoreUint64(&e.slots[slot].bytes, 0)
		atomic.StoreUint32(&e.slots[slot].kept, 0)
	}
	e.fresh = append(e.fresh, got...)
	return nil
}

// releaseSlots frees k's slots, once nothing redirects from its sockets.
func (e *engine) releaseSlots(k *kconn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	for _, s := range []*kside{&k.c, &k.u} {
		e.bySlot[s.slot] = nil
		e.freed = append(e.freed, freedSlot{s.slot, now})
	}
}

// kept reports whether the program has s keep its input.
func (e *engine) kept(s *kside) bool {
	return atomic.LoadUint32(&e.slots[s.slot].kept) != 0
}

// kside is one socket of a kernel-relayed connection.
type kside struct {
	fd     int
	cookie uint64
	slot   uint32 // its entry in counts
	base   int64  // bytes written to it before the relay (by anyone), see written
	eof    bool   // its input ended
	shut   bool   // the relay shut its output (after passing on its peer's EOF)

	overdrawn atomic.Bool // the program said it is past its credit
	passing   bool        // it keeps its input (past its credit): sact copies it

	// What the engine's scan last read of the program's count for it, and whether the
	// scan saw the program keep its input; guarded by engine.mu while the connection is
	// in engine.byCookie. seen is run's after that, and all along for a relay with its
	// own clock (kconn.ownClock), which the scan leaves to it.
	seen     int64
	keptSeen bool

	// The copier of a passing socket: Go conns on duplicates of both fds, the bytes it
	// copied, and its end.
	src, dst net.Conn
	copied   atomic.Int64
	copyDone chan error
}

// startCopy copies what s keeps (its input past its credit) to peer in sact, through
// Go's poller, until s's EOF, which it passes on, or an error.
func (e *engine) startCopy(k *kconn, s, peer *kside, opts Options) error {
	var err error
	if s.src, err = fdConn(s.fd); err != nil {
		return err
	}
	if s.dst, err = fdConn(peer.fd); err != nil {
		s.src.Close()
		s.src = nil
		return err
	}
	s.copyDone = make(chan error, 1)
	src, dst := s.src, s.dst
	go func() {
		// The copier's bytes count for the idle clock of a relay with an IdleTimeout,
		// whose run reads the kernel's counters, which do not have them.
		r := &relay{activity: func() {
			k.copyMoves.Add(1)
			if opts.Activity != nil {
				opts.Activity()
			}
		}}
		n, err := r.copy(dst, src)
		s.copied.Store(n)
		if err == nil {
			err = dst.(*net.TCPConn).CloseWrite()
		}
		s.copyDone <- err
		k.poke()
	}()
	passes.Add(1)
	return nil
}

// fdConn is a net.Conn on a duplicate of fd.
func fdConn(fd int) (net.Conn, error) {
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("kernel relay: copying a socket's input: %w", err)
	}
	f := os.NewFile(uintptr(nfd), "relayed") // closed below; FileConn has its own
	defer f.Close()
	c, err := net.FileConn(f)
	if err != nil {
		return nil, fmt.Errorf("kernel relay: copying a socket's input: %w", err)
	}
	return c, nil
}

// stopCopies ends the copiers and waits for them.
func (k *kconn) stopCopies() {
	for _, s := range []*kside{&k.c, &k.u} {
		if s.copyDone == nil {
			continue
		}
		s.src.Close()
		s.dst.Close()
		if !s.eof {
			<-s.copyDone
		}
	}
}

type kconn struct {
	id   uint32
	wake chan struct{}
	c, u kside

	// For Options.Activity: activity is it, called by the engine's scan when the
	// connection's counts move, unless ownClock (Options.IdleTimeout > 0), when run
	// reads them itself as often as the timeout needs. scanned is the last scan round
	// that called activity (under engine.mu).
	activity func()
	ownClock bool
	scanned  uint64

	copyMoves atomic.Int64 // chunks the copiers moved, for ownClock's idle clock
}

// poke wakes run, which looks at both sockets again; a wakeup already pending will do.
func (k *kconn) poke() {
	select {
	case k.wake <- struct{}{}:
	default:
	}
}

// take puts the connection in the kernel relay, which moves its bytes from then on;
// run waits for its end. nil means the kernel relay cannot take the connection and
// nothing was done to it: the caller should splice.
func (e *engine) take(client, upstream net.Conn, opts Options) *kconn {
	cc, ok1 := client.(*net.TCPConn)
	uc, ok2 := upstream.(*net.TCPConn)
	if !ok1 || !ok2 {
		return nil
	}
	k := &kconn{wake: make(chan struct{}, 1), activity: opts.Activity, ownClock: opts.IdleTimeout > 0}
	var err error
	if k.c.fd, err = dupConn(cc); err != nil {
		return nil
	}
	if k.u.fd, err = dupConn(uc); err != nil {
		unix.Close(k.c.fd)
		return nil
	}
	if err := e.attach(k); err != nil {
		attachErrs.Add(1)
		lastAttachErr.Store(&err)
		unix.Close(k.c.fd)
		unix.Close(k.u.fd)
		return nil
	}
	// A socket whose input already ended (CLOSE_WAIT) cannot enter a sockmap
	// (EOPNOTSUPP): such a connection is spliced.

	// Committed: the kernel moves the bytes now. Go's conns are closed so that their fds
	// leave Go's netpoller (which would wake for every chunk); the duplicates keep the
	// sockets open until the relay ends.
	client.Close()
	upstream.Close()
	kernelAttached.Add(1)
	return k
}

func dupConn(c *net.TCPConn) (int, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return -1, err
	}
	nfd := -1
	cerr := rc.Control(func(fd uintptr) { nfd, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
	if cerr != nil {
		return -1, cerr
	}
	return nfd, err
}

// attach puts both sockets in the maps, or undoes what it did and says why not.
func (e *engine) attach(k *kconn) (err error) {
	for _, s := range []*kside{&k.c, &k.u} {
		if s.cookie, err = unix.GetsockoptUint64(s.fd, unix.SOL_SOCKET, unix.SO_COOKIE); err != nil {
			return err
		}
		if s.base, err = written(s.fd); err != nil {
			return err
		}
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	e.mu.Lock()
	err = e.takeSlots(k)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	undo = append(undo, func() { e.releaseSlots(k) })
	pair := []struct{ s, peer *kside }{{&k.c, &k.u}, {&k.u, &k.c}}
	for _, p := range pair {
		var v [peerSize]byte
		binary.NativeEndian.PutUint64(v[peerCookie:], p.peer.cookie)
		binary.NativeEndian.PutUint32(v[peerSlot:], p.s.slot)
		if err = e.peers.Update(p.s.cookie, v[:], ebpf.UpdateNoExist); err != nil {
			return err
		}
		key := p.s.cookie
		undo = append(undo, func() { e.peers.Delete(key) })
	}
	for _, p := range pair {
		if err = e.setCredit(p.s, p.peer); err != nil {
			return err
		}
		key := p.s.cookie
		undo = append(undo, func() { e.credit.Delete(key) })
	}
	for _, m := range []*ebpf.Map{e.targets, e.active} {
		for _, p := range pair {
			// The sockmap takes the socket's fd as the value.
			if err = m.Update(p.s.cookie, uint64(p.s.fd), ebpf.UpdateNoExist); err != nil {
				err = fmt.Errorf("adding socket %d to %v: %w", p.s.fd, m, err)
				if m == e.active && p.s == &k.u {
					// The client's input is redirected already: it may have moved bytes.
					// Undoing is still safe once they have left.
					undo = append(undo, func() { e.waitDrained(k) })
				}
				return err
			}
			mm, key := m, p.s.cookie
			undo = append(undo, func() { mm.Delete(key) })
		}
	}
	e.mu.Lock()
	e.next++
	k.id = e.next
	e.conns[k.id] = k
	e.byCookie[k.c.cookie], e.byCookie[k.u.cookie] = k, k
	e.bySlot[k.c.slot], e.bySlot[k.u.slot] = k, k
	e.mu.Unlock()
	for _, s := range []*kside{&k.c, &k.u} {
		ev := unix.EpollEvent{Events: unix.EPOLLRDHUP | unix.EPOLLET, Fd: int32(k.id)}
		if err = unix.EpollCtl(e.epfd, unix.EPOLL_CTL_ADD, s.fd, &ev); err != nil {
			e.forget(k)
			e.waitDrained(k)
			return err
		}
	}
	// Bytes that arrived before the socket entered the map wait in its receive queue
	// until the next chunk wakes the verdict program; setting SO_RCVLOWAT runs the
	// socket's data_ready, which is the program now, on what is queued.
	for _, s := range []*kside{&k.c, &k.u} {
		unix.SetsockoptInt(s.fd, unix.SOL_SOCKET, unix.SO_RCVLOWAT, 1)
	}
	return nil
}

// waitDrained waits (at most a second) until what the program redirected has left for
// the peers, so that undoing the maps loses nothing.
func (e *engine) waitDrained(k *kconn) {
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		cn, un := e.counted(&k.c), e.counted(&k.u)
		cw, _ := written(k.c.fd)
		uw, _ := written(k.u.fd)
		if uw-k.u.base >= cn && cw-k.c.base >= un {
			return
		}
	}
}

// written is how many bytes were ever written to a TCP socket: those the peer
// acknowledged and those still in the send queue.
func written(fd int) (int64, error) {
	ti, err := unix.GetsockoptTCPInfo(fd, unix.IPPROTO_TCP, unix.TCP_INFO)
	if err != nil {
		return 0, err
	}
	outq, err := unix.IoctlGetInt(fd, unix.SIOCOUTQ)
	if err != nil {
		return 0, err
	}
	return int64(ti.Bytes_acked) + int64(outq), nil
}

// counted is how many bytes the program redirected from s.
func (e *engine) counted(s *kside) int64 {
	return int64(atomic.LoadUint64(&e.slots[s.slot].bytes))
}

// activityEvery is how often the kernel relay reads its counters for Options.Activity
// (the engine's scan, for all connections at once) and at most how long a relay with an
// IdleTimeout waits to read its own: the bytes move without sact, so this is when it
// learns they did. A time.Duration, atomic because tests shorten it while the scan runs.
var activityEvery = func() *atomic.Int64 {
	var d atomic.Int64
	d.Store(int64(time.Second))
	return &d
}()

// kernelSteps counts the looks at relayed sockets (step) and kernelScans the engine's
// scans that found connections to read, so tests can tell what idle connections cost.
var kernelSteps, kernelScans atomic.Int64

// scanLoop runs the engine's scan every activityEvery until the engine closes: one
// wakeup a tick for all relayed connections and no syscall, where a ticker per
// connection woke sact and made syscalls for each of them, idle or not. Nothing else a
// relay waits for needs a tick: input ends and errors come through epoll, credits through
// the ring buffer, copiers' ends through their own pokes, and drains have their ticker.
func (e *engine) scanLoop() {
	every := time.Duration(activityEvery.Load())
	tick := time.NewTicker(every)
	defer tick.Stop()
	var sc scanner
	for {
		select {
		case <-e.stop:
			return
		case <-tick.C:
		}
		e.scan(&sc)
		if d := time.Duration(activityEvery.Load()); d != every {
			every = d
			tick.Reset(every)
		}
	}
}

// scanner is the state of the engine's scan, its goroutine's alone: the counts it last
// read, by slot, to look at a connection only when they changed.
type scanner struct {
	round   uint64
	last    []lastCount
	changed []uint32
}

type lastCount struct {
	bytes uint64
	kept  uint32
	known bool // false: the slot changed hands since, whatever its counts say
}

// scan reads the program's counts for every slot in use, from the mapped array, and
// tells saw of the slots whose counts changed.
func (e *engine) scan(sc *scanner) {
	e.mu.Lock()
	idle, used := len(e.conns) == 0, len(e.bySlot)
	for _, slot := range e.fresh {
		for int(slot) >= len(sc.last) {
			sc.last = append(sc.last, lastCount{})
		}
		sc.last[slot].known = false
	}
	e.fresh = e.fresh[:0]
	e.mu.Unlock()
	if idle {
		return
	}
	kernelScans.Add(1)
	sc.round++
	for len(sc.last) < used {
		sc.last = append(sc.last, lastCount{})
	}
	sc.changed = sc.changed[:0]
	for i := range used {
		c := &e.slots[i]
		n, kept := atomic.LoadUint64(&c.bytes), atomic.LoadUint32(&c.kept)
		if l := &sc.last[i]; !l.known || l.bytes != n || l.kept != kept {
			*l = lastCount{n, kept, true}
			sc.changed = append(sc.changed, uint32(i))
		}
	}
	if len(sc.changed) > 0 {
		e.saw(sc)
	}
}

// saw takes in the counts of the slots that changed: Activity for each connection whose
// bytes moved since it last looked, once a round; and the program's keeping of a
// socket's input, which the ring buffer told of already unless the ring was full, which
// would have left the socket keeping its bytes with no one copying them.
func (e *engine) saw(sc *scanner) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, slot := range sc.changed {
		k := e.bySlot[slot]
		if k == nil {
			continue
		}
		s := &k.c
		if slot == k.u.slot {
			s = &k.u
		}
		l := sc.last[slot]
		if l.kept != 0 && !s.keptSeen {
			s.keptSeen = true
			s.overdrawn.Store(true)
			k.poke()
		}
		if k.ownClock {
			continue
		}
		if n := int64(l.bytes); n != s.seen {
			s.seen = n
			if k.activity != nil && k.scanned != sc.round {
				k.scanned = sc.round
				// Under e.mu, so that no call comes after run has forgotten the
				// connection; Activity is cheap and does not block (Options).
				k.activity()
			}
		}
	}
}

// drainEvery is how often a relay that passed an EOF on checks that the bytes before it
// have left, to half-close the peer after them.
const drainEvery = time.Millisecond

// run waits for the connection to end, passing EOFs on, and tears it down. It looks at
// the sockets (step) only when woken: an idle connection costs sact nothing.
func (e *engine) run(ctx context.Context, k *kconn, opts Options) (s Stats, err error) {
	defer func() {
		// Out of the engine's scan first: k.c.seen and k.u.seen are run's from here.
		e.forget(k)
		k.stopCopies()
		cn, un := e.counted(&k.c), e.counted(&k.u)
		s.ClientToUpstream = cn + k.c.copied.Load()
		s.UpstreamToClient = un + k.u.copied.Load()
		copied := k.c.copied.Load() + k.u.copied.Load()
		kernelCopied.Add(copied)
		kernelMoved.Add(s.ClientToUpstream + s.UpstreamToClient - copied)
		e.detach(k)
		if (cn != k.c.seen || un != k.u.seen) && opts.Activity != nil {
			opts.Activity() // the bytes since the last look
		}
	}()
	// A relay with an IdleTimeout keeps its own clock, as fine as the timeout needs.
	var tickC <-chan time.Time
	lastMoved, copyMoves := time.Now(), int64(0)
	if k.ownClock {
		every := time.Duration(activityEvery.Load())
		if opts.IdleTimeout/4 < every {
			every = max(opts.IdleTimeout/4, time.Millisecond)
		}
		tick := time.NewTicker(every)
		defer tick.Stop()
		tickC = tick.C
	}
	var drain *time.Ticker
	var drainC <-chan time.Time
	defer func() {
		if drain != nil {
			drain.Stop()
		}
	}()
	for look := true; ; look = true {
		if look {
			done, waiting, err := e.step(k, opts)
			if err != nil || done {
				return s, err
			}
			switch {
			case waiting && drain == nil:
				drain = time.NewTicker(drainEvery)
				drainC = drain.C
			case !waiting && drain != nil:
				// Drained: a half-closed connection that then idles must not go on
				// waking every drainEvery.
				drain.Stop()
				drain, drainC = nil, nil
			}
		}
		select {
		case <-k.wake:
		case <-drainC:
		case <-ctx.Done():
			return s, context.Cause(ctx)
		case <-tickC:
			// Only counting: whatever else happens to the sockets wakes run.
			look = false
			cn, un := e.counted(&k.c), e.counted(&k.u)
			cm := k.copyMoves.Load()
			if cn != k.c.seen || un != k.u.seen {
				k.c.seen, k.u.seen = cn, un
				if opts.Activity != nil {
					opts.Activity()
				}
				lastMoved = time.Now()
			} else if cm != copyMoves {
				lastMoved = time.Now()
			} else if time.Since(lastMoved) >= opts.IdleTimeout {
				return s, ErrIdleTimeout
			}
			copyMoves = cm
		}
	}
}

// step looks at both sockets: an error ends the relay; an input that ended is passed on
// as a half-close of the peer once the bytes before it have left (waiting says it has not
// yet); done says both directions are over.
func (e *engine) step(k *kconn, opts Options) (done, waiting bool, err error) {
	kernelSteps.Add(1)
	for _, p := range []struct{ s, peer *kside }{{&k.c, &k.u}, {&k.u, &k.c}} {
		if !p.s.passing && p.s.overdrawn.Swap(false) {
			if e.kept(p.s) {
				p.s.passing = true
			} else if err := e.setCredit(p.s, p.peer); err != nil {
				return false, false, fmt.Errorf("kernel relay: moving a socket's credit on: %w", err)
			}
		}
		if p.s.passing {
			switch {
			case p.s.copyDone == nil:
				// The bytes it redirected go first: then sact copies what it kept.
				w, werr := written(p.peer.fd)
				if werr == nil && w-p.peer.base < e.counted(p.s) {
					waiting = true
					continue
				}
				if err := e.startCopy(k, p.s, p.peer, opts); err != nil {
					return false, false, err
				}
			case !p.s.eof:
				select {
				case err := <-p.s.copyDone:
					if err != nil {
						return false, false, err
					}
					p.s.eof, p.peer.shut = true, true // the copier passed the EOF on
				default:
				}
			}
		}
		if p.s.passing {
			// Its end is the copier's, but an error on it still ends the relay.
			if serr, _ := unix.GetsockoptInt(p.s.fd, unix.SOL_SOCKET, unix.SO_ERROR); serr != 0 {
				return false, false, os.NewSyscallError("read", unix.Errno(serr))
			}
			continue
		}
		fds := []unix.PollFd{{Fd: int32(p.s.fd), Events: unix.POLLRDHUP}}
		if _, err := unix.Poll(fds, 0); err != nil && err != unix.EINTR {
			return false, false, os.NewSyscallError("poll", err)
		}
		if fds[0].Revents&(unix.POLLERR|unix.POLLHUP) != 0 {
			if serr, _ := unix.GetsockoptInt(p.s.fd, unix.SOL_SOCKET, unix.SO_ERROR); serr != 0 {
				return false, false, os.NewSyscallError("read", unix.Errno(serr))
			}
		}
		if fds[0].Revents&(unix.POLLRDHUP|unix.POLLHUP) != 0 {
			p.s.eof = true
		}
		if p.s.eof && !p.peer.shut {
			w, werr := written(p.peer.fd)
			if werr == nil && w-p.peer.base < e.counted(p.s) {
				waiting = true
				continue
			}
			// An error here means the peer is closed or reset: the next look sees it.
			unix.Shutdown(p.peer.fd, unix.SHUT_WR)
			p.peer.shut = true
		}
	}
	return k.c.eof && k.u.eof && k.c.shut && k.u.shut, waiting, nil
}

// forget takes k out of what the engine's goroutines look at; its slots stay its own
// until releaseSlots.
func (e *engine) forget(k *kconn) {
	e.mu.Lock()
	delete(e.conns, k.id)
	delete(e.byCookie, k.c.cookie)
	delete(e.byCookie, k.u.cookie)
	for _, s := range []*kside{&k.c, &k.u} {
		if e.bySlot[s.slot] == k {
			e.bySlot[s.slot] = nil
		}
	}
	e.mu.Unlock()
}

// detach takes the connection out of the maps and closes its sockets.
func (e *engine) detach(k *kconn) {
	e.forget(k)
	for _, s := range []*kside{&k.c, &k.u} {
		unix.EpollCtl(e.epfd, unix.EPOLL_CTL_DEL, s.fd, nil)
		e.active.Delete(s.cookie)
	}
	for _, s := range []*kside{&k.c, &k.u} {
		e.targets.Delete(s.cookie)
		e.peers.Delete(s.cookie)
		e.credit.Delete(s.cookie)
		unix.Close(s.fd)
	}
	e.releaseSlots(k)
}
