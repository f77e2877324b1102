package sockdiag

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Activity is what the kernel says, at one instant, about the connections of one
// listening socket. See the package documentation for what is exact and what is not.
type Activity struct {
	// Listening reports that a listening socket was found at the address. When it is
	// false every other field is zero: nothing listens there (any more), or, for a unix
	// path, the path no longer names a socket.
	Listening bool

	// Open counts the connections accepted from the listener that a process still
	// holds: TCP sockets in any state but LISTEN and TIME_WAIT that have a file (an
	// inode), so CLOSE_WAIT (the client hung up, the app has not) counts and orphans the
	// app closed (FIN_WAIT, LAST_ACK) do not; for unix, accepted sockets of the listener
	// that live in sact's network namespace (see the package documentation).
	Open int

	// Queued counts connections that completed their handshake and wait in the
	// listener's accept queue: sk_ack_backlog for TCP, the listener's receive queue for
	// unix. Handshakes still in SYN_RECV are not counted.
	Queued int

	// BytesReceived and BytesSent sum tcp_info's tcpi_bytes_received and
	// tcpi_bytes_acked (sent and acknowledged by the peer) over the Open TCP
	// connections. They are cumulative per connection, so the sums fall when a
	// connection closes; compare ConnSet before comparing them. Always zero for unix:
	// the kernel keeps no byte counters for unix sockets.
	BytesReceived, BytesSent uint64

	// Pending is what sits in the Open connections' buffers right now: input the app
	// has not read plus output the peer has not acknowledged (TCP) or read (unix; the
	// kernel reports unix output as buffer memory, not payload bytes). Non-zero means
	// bytes are moving at this instant.
	Pending uint64

	// LastActivity is when data last moved on a TCP connection of this listener, as far
	// as the kernel remembers: the latest of tcp_info's last_data_recv and
	// last_data_sent over every connection from this listener still in the kernel
	// (open, queued, or closed by the app and finishing its FIN handshake; a new
	// connection counts from its handshake), and, for connections the app closed
	// first, the moment each entered TIME_WAIT (its 60 s timer shows when). ACKs alone,
	// such as keepalive probes, do not count. Zero when no such connection is left, and
	// always zero for unix.
	LastActivity time.Time

	// ConnSet is a digest of which connections are Open (of their socket cookies,
	// which the kernel never reuses before a reboot). It changes whenever a connection
	// opens or closes, even when another took its place between two probes and Open
	// stayed the same; it is zero when Open is zero.
	ConnSet uint64
}

// Prober asks the kernel about listening sockets through one NETLINK_SOCK_DIAG socket,
// reused across calls. It is safe for concurrent use; calls take turns.
type Prober struct {
	mu sync.Mutex
	c  *conn // nil after a request was interrupted, until the next call redials
}

// New opens a Prober. It sees the sockets of the network namespace of the thread that
// calls it; a Prober made on the host sees sact's own listeners, wherever the process
// that accepts from them runs.
func New() (*Prober, error) {
	c, err := dial()
	if err != nil {
		return nil, err
	}
	return &Prober{c: c}, nil
}

// Close closes the netlink socket. Probe must not be called after Close.
func (p *Prober) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		return nil
	}
	err := p.c.close()
	p.c = nil
	return err
}

// Probe reports on the listening sockets at addrs, one Activity per address, in order.
// Each address is what the listener's Addr method returns: a *net.TCPAddr, or a
// *net.UnixAddr of a stream or seqpacket socket bound to a path or an abstract name
// ("@name").
//
// Call it once per round with every listener rather than once per listener: its cost
// is one walk of the kernel's TCP hash table per address family asked about (about
// 0.2 ms for the 262144 buckets of a 24 GiB machine; the table grows with memory), one
// walk of the unix socket table if any unix address is asked about, and about a
// microsecond per socket of the namespace that is listening or connected, however many
// addresses are asked about. If every TCP address of a family has the same port, the
// kernel filters by port and the per-socket cost goes too.
//
// The error is about the request as a whole (an address of another kind, netlink
// failing, ctx ending); an address with nothing listening is not an error but an
// Activity with Listening false.
func (p *Prober) Probe(ctx context.Context, addrs ...net.Addr) ([]Activity, error) {
	q, err := p.probe(ctx, addrs, false)
	if err != nil {
		return nil, err
	}
	return q.result(), nil
}

// Sockets is Probe, with, for each address, the inodes of its Open connections: the
// socket files the processes that accepted them hold, which /proc/PID/fd names
// "socket:[INODE]". It tells which process took a connection from a listener two
// processes share (a handoff app's deploy).
func (p *Prober) Sockets(ctx context.Context, addrs ...net.Addr) ([]Activity, [][]uint32, error) {
	q, err := p.probe(ctx, addrs, true)
	if err != nil {
		return nil, nil, err
	}
	inodes := make([][]uint32, len(addrs))
	for i, s := range q.slotOf {
		inodes[i] = q.inodes[s]
	}
	return q.result(), inodes, nil
}

func (q *query) result() []Activity {
	out := make([]Activity, len(q.slotOf))
	for i, s := range q.slotOf {
		out[i] = q.slots[s]
	}
	return out
}

func (p *Prober) probe(ctx context.Context, addrs []net.Addr, inodes bool) (*query, error) {
	q, err := newQuery(addrs)
	if err != nil {
		return nil, err
	}
	if inodes {
		q.inodes = make([][]uint32, len(q.slots))
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.c == nil {
		if p.c, err = dial(); err != nil {
			return nil, err
		}
	}
	if err := q.run(ctx, p.c); err != nil {
		if errors.Is(err, errInterrupted) {
			// The socket may still hold the rest of an answer (and the kernel refuses a
			// new dump while one is under way), so start afresh next time.
			p.c.close()
			p.c = nil
		}
		return nil, err
	}
	return q, nil
}

// query is one Probe call: the distinct listeners asked about (slots) and how to find
// each from what the kernel reports.
type query struct {
	slots  []Activity
	slotOf []int // for each address asked about, its slot

	tcp [2]tcpTable // AF_INET, AF_INET6

	unixVFS  map[vfsKey]int
	unixName map[string]int
	unixAsk  []unixTarget
	// unixSame lists slots whose path names the same socket file as another slot's
	// (through "..", a symlink or a hard link): each gets a copy of the other's answer.
	unixSame []struct{ slot, like int }
	// inodes, if not nil, gets each slot's Open connections' inodes (Sockets).
	inodes [][]uint32
}

type tcpTable struct {
	family uint8
	// exact maps a listener's own address to its slot; wild maps the port of a listener
	// bound to the unspecified address (0.0.0.0 or ::) to its slot.
	exact map[netip.AddrPort]int
	wild  map[uint16]int
	port  uint16 // the port all listeners share, or 0 if they do not
}

type unixTarget struct {
	path string
	slot int
}

func newQuery(addrs []net.Addr) (*query, error) {
	q := &query{slotOf: make([]int, len(addrs))}
	q.tcp[0].family = unix.AF_INET
	q.tcp[1].family = unix.AF_INET6
	var unixSlot map[string]int
	for i, a := range addrs {
		switch a := a.(type) {
		case *net.TCPAddr:
			ap := a.AddrPort()
			ap = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
			if !ap.Addr().IsValid() || ap.Port() == 0 {
				return nil, fmt.Errorf("probe %v: not the address of a bound TCP listener", a)
			}
			t := &q.tcp[0]
			if ap.Addr().Is6() {
				t = &q.tcp[1]
			}
			s, ok := t.exact[ap]
			if !ok {
				s = q.newSlot()
				t.add(ap, s, len(addrs))
			}
			q.slotOf[i] = s
		case *net.UnixAddr:
			if a.Net != "unix" && a.Net != "unixpacket" || a.Name == "" {
				return nil, fmt.Errorf("probe %s %q: not the address of a unix stream or seqpacket listener", a.Net, a.Name)
			}
			s, ok := unixSlot[a.Name]
			if !ok {
				if unixSlot == nil {
					unixSlot = make(map[string]int)
				}
				s = q.newSlot()
				unixSlot[a.Name] = s
				q.unixAsk = append(q.unixAsk, unixTarget{path: a.Name, slot: s})
			}
			q.slotOf[i] = s
		default:
			return nil, fmt.Errorf("probe %T %v: want the address of a TCP or unix listener", a, a)
		}
	}
	return q, nil
}

func (q *query) newSlot() int {
	q.slots = append(q.slots, Activity{})
	return len(q.slots) - 1
}

func (t *tcpTable) add(ap netip.AddrPort, slot, sizeHint int) {
	if t.exact == nil {
		t.exact = make(map[netip.AddrPort]int, sizeHint)
		t.wild = make(map[uint16]int)
		t.port = ap.Port()
	}
	t.exact[ap] = slot
	if ap.Addr().IsUnspecified() {
		t.wild[ap.Port()] = slot
	}
	if t.port != ap.Port() {
		t.port = 0
	}
}

func (q *query) run(ctx context.Context, c *conn) error {
	for i := range q.tcp {
		if err := q.runTCP(ctx, c, &q.tcp[i]); err != nil {
			return err
		}
	}
	return q.runUnix(ctx, c)
}

// timeWaitLen is TCP_TIMEWAIT_LEN, the fixed life of a TIME_WAIT socket.
const timeWaitLen = 60 * time.Second

func (q *query) runTCP(ctx context.Context, c *conn, t *tcpTable) error {
	if t.exact == nil {
		return nil
	}
	filter := netip.AddrPortFrom(netip.Addr{}, t.port)
	err := dumpTCP(ctx, c, t.family, 1<<tcpListen, filter, false, func(m inetMsg) {
		if s, ok := t.exact[m.src]; ok {
			a := &q.slots[s]
			a.Listening = true
			a.Queued += int(m.rqueue)
		}
	})
	if err != nil {
		return fmt.Errorf("dump TCP listeners: %w", err)
	}
	now := time.Now()
	err = dumpTCP(ctx, c, t.family, tcpConnStates, filter, true, func(m inetMsg) {
		s, ok := t.exact[m.src]
		if !ok {
			if s, ok = t.wild[m.src.Port()]; !ok {
				return
			}
		}
		a := &q.slots[s]
		if m.state == tcpTimeWait {
			if m.expires <= uint32(timeWaitLen/time.Millisecond) {
				at := now.Add(-timeWaitLen + time.Duration(m.expires)*time.Millisecond)
				if at.After(a.LastActivity) {
					a.LastActivity = at
				}
			}
			return
		}
		if sent, ok := infoU32(m.info, offLastDataSent); ok {
			recv, _ := infoU32(m.info, offLastDataRecv)
			at := now.Add(-time.Duration(min(sent, recv)) * time.Millisecond)
			if at.After(a.LastActivity) {
				a.LastActivity = at
			}
		}
		if m.inode == 0 {
			return // waiting to be accepted, or closed by the app
		}
		a.Open++
		a.ConnSet += mix(m.cookie)
		a.Pending += uint64(m.rqueue) + uint64(m.wqueue)
		if q.inodes != nil {
			q.inodes[s] = append(q.inodes[s], m.inode)
		}
		if n, ok := infoU64(m.info, offBytesRecv); ok {
			a.BytesReceived += n
		}
		if n, ok := infoU64(m.info, offBytesAcked); ok {
			a.BytesSent += n
		}
	})
	if err != nil {
		return fmt.Errorf("dump TCP connections: %w", err)
	}
	// Connections on the port of a listener that is gone are not its connections.
	for _, s := range t.exact {
		if !q.slots[s].Listening {
			q.slots[s] = Activity{}
			q.dropInodes(s)
		}
	}
	return nil
}

func (q *query) dropInodes(s int) {
	if q.inodes != nil {
		q.inodes[s] = nil
	}
}

func (q *query) runUnix(ctx context.Context, c *conn) error {
	if len(q.unixAsk) == 0 {
		return nil
	}
	show := uint32(udiagShowVFS | udiagShowRQLen)
	for _, u := range q.unixAsk {
		if u.path[0] == '@' {
			if q.unixName == nil {
				q.unixName = make(map[string]int)
			}
			q.unixName["\x00"+u.path[1:]] = u.slot
			show |= udiagShowName
			continue
		}
		// Accepted sockets share their listener's path (the same dentry), so the
		// socket file's identity names them all, even if the file was renamed.
		var st unix.Stat_t
		if err := unix.Stat(u.path, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
			continue // nothing listens there: Listening stays false
		}
		if q.unixVFS == nil {
			q.unixVFS = make(map[vfsKey]int)
		}
		// The kernel reports only the low 32 bits of the inode number.
		key := vfsKey{major: unix.Major(st.Dev), minor: unix.Minor(st.Dev), ino: uint32(st.Ino)}
		if like, ok := q.unixVFS[key]; ok {
			q.unixSame = append(q.unixSame, struct{ slot, like int }{u.slot, like})
			continue
		}
		q.unixVFS[key] = u.slot
	}
	if q.unixVFS == nil && q.unixName == nil {
		return nil
	}
	err := dumpUnix(ctx, c, 1<<tcpEstablished|1<<tcpListen, show, func(m unixMsg) {
		var s int
		var ok bool
		if m.hasVFS {
			s, ok = q.unixVFS[m.vfs]
		} else if len(m.name) > 0 && m.name[0] == 0 {
			s, ok = q.unixName[string(m.name)]
		}
		if !ok {
			return
		}
		a := &q.slots[s]
		if m.state == tcpListen {
			a.Listening = true
			a.Queued += int(m.rqueue)
			return
		}
		a.Open++
		a.ConnSet += mix(m.cookie)
		a.Pending += uint64(m.rqueue) + uint64(m.wqueue)
		if q.inodes != nil {
			q.inodes[s] = append(q.inodes[s], m.ino)
		}
	})
	if err != nil {
		return fmt.Errorf("dump unix sockets: %w", err)
	}
	// Sockets accepted from a listener that was closed keep its path; without the
	// listener they are not this address's connections any more.
	for _, s := range q.unixVFS {
		if !q.slots[s].Listening {
			q.slots[s] = Activity{}
			q.dropInodes(s)
		}
	}
	for _, s := range q.unixName {
		if !q.slots[s].Listening {
			q.slots[s] = Activity{}
			q.dropInodes(s)
		}
	}
	for _, same := range q.unixSame {
		q.slots[same.slot] = q.slots[same.like]
		if q.inodes != nil {
			q.inodes[same.slot] = q.inodes[same.like]
		}
	}
	return nil
}

// mix is splitmix64's finalizer: summing it over cookies gives an order-independent
// digest in which one connection replacing another is as good as certain to show.
func mix(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
