package listen

import (
	"fmt"
	"net"
	"os"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
	"golang.org/x/sys/unix"
)

// Inherited holds the listening sockets passed to sact by systemd (LISTEN_FDS), so that a
// restarted sact serves on the very sockets clients already queue on: none is refused
// while it restarts.
type Inherited struct {
	mu    sync.Mutex
	socks []inheritedSock
	quiet bool // from a handover: see FromHandover
}

type inheritedSock struct {
	name string // FileDescriptorName=, or "" when systemd gave none
	// f is the socket as passed, made a listener only when an app takes it (listener);
	// ln is set once it is one.
	f    *os.File
	addr net.Addr
	ln   net.Listener
}

// listener is the socket as a net.Listener, made now if it was not yet. net.FileListener
// sets O_NONBLOCK on the open file description, which a running handoff app shares: made
// for every passed socket at once, it handed EAGAIN to an app accepting in blocking mode
// on a socket that sact takes back from the app instead. Only a socket an app takes here
// is made one (and then accepted on by sact, or cleared again by the shim).
func (s *inheritedSock) listener() (net.Listener, error) {
	if s.ln != nil {
		return s.ln, nil
	}
	ln, err := net.FileListener(s.f)
	s.f.Close()
	s.f = nil
	if err != nil {
		return nil, err
	}
	hold(ln, true)
	s.ln = ln
	return ln, nil
}

func (s *inheritedSock) close() {
	if s.ln != nil {
		s.ln.Close()
	}
	if s.f != nil {
		s.f.Close()
	}
}

func (s *inheritedSock) address() net.Addr {
	if s.ln != nil {
		return s.ln.Addr()
	}
	return s.addr
}

// FromSystemd takes the sockets systemd passed (and unsets LISTEN_* so that children do
// not see them). Sockets that are not stream listeners are closed and ignored.
func FromSystemd() *Inherited {
	in := &Inherited{}
	for _, f := range activation.Files(true) {
		addr, err := listenerAddr(f)
		if err != nil {
			f.Close()
			continue
		}
		name := f.Name()
		if strings.HasPrefix(name, "LISTEN_FD_") { // go-systemd's name when none was given
			name = ""
		}
		in.socks = append(in.socks, inheritedSock{name: name, f: f, addr: addr})
	}
	return in
}

// listenerAddr is the address of f if it is a listening stream socket, read without
// touching its flags (os.File.Fd would put it in blocking mode).
func listenerAddr(f *os.File) (net.Addr, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var addr net.Addr
	var serr error
	err = rc.Control(func(fd uintptr) {
		typ, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_TYPE)
		if err != nil || typ != unix.SOCK_STREAM {
			serr = fmt.Errorf("not a stream socket")
			return
		}
		if on, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || on == 0 {
			serr = fmt.Errorf("not listening")
			return
		}
		sa, err := unix.Getsockname(int(fd))
		if err != nil {
			serr = err
			return
		}
		switch sa := sa.(type) {
		case *unix.SockaddrInet4:
			addr = &net.TCPAddr{IP: net.IP(sa.Addr[:]).To16(), Port: sa.Port}
		case *unix.SockaddrInet6:
			addr = &net.TCPAddr{IP: net.IP(sa.Addr[:]), Port: sa.Port}
		case *unix.SockaddrUnix:
			addr = &net.UnixAddr{Name: sa.Name, Net: "unix"}
		default:
			serr = fmt.Errorf("not a tcp or unix socket")
		}
	})
	if err == nil {
		err = serr
	}
	return addr, err
}

// FromHandover takes the sockets an older sact passed (sact restart), like FromSystemd.
// That older sact passes every socket it holds, including those of handoff apps, which the
// new sact takes back from the apps' containers instead: Rest closes the unclaimed ones
// without naming them for a warning.
func FromHandover() *Inherited {
	in := FromSystemd()
	in.quiet = true
	return in
}

// Take returns the inherited socket named name (systemd's FileDescriptorName=, matched to
// an app's name) or bound to a, and removes it from the set; nil if there is none.
func (in *Inherited) Take(a Addr, name string) net.Listener {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	for i := range in.socks {
		s := &in.socks[i]
		if (s.name != "" && s.name == name && s.address().Network() == a.Network) || sameAddr(s.address(), a) {
			ln, err := s.listener()
			in.socks = append(in.socks[:i], in.socks[i+1:]...)
			if err != nil {
				return nil // gone bad since it was passed: the app binds anew
			}
			return ln
		}
	}
	return nil
}

// Rest closes the sockets nobody claimed and returns their addresses, for a warning.
// Those sact itself stored in systemd (StoreInSystemd) are removed from the store instead.
func (in *Inherited) Rest() []string {
	if in == nil {
		return nil
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	var out []string
	for _, s := range in.socks {
		if strings.HasPrefix(s.name, storedPrefix) {
			// sact stored it as it stopped, and its app is gone: free the address.
			forgetStored(s.name)
		} else if !in.quiet {
			out = append(out, s.address().String())
		}
		s.close()
	}
	in.socks = nil
	return out
}

func sameAddr(got net.Addr, a Addr) bool {
	if got.Network() != a.Network {
		return false
	}
	if a.Network == "unix" {
		return got.String() == a.Address
	}
	want, err := net.ResolveTCPAddr("tcp", a.Address)
	if err != nil {
		return false
	}
	g, ok := got.(*net.TCPAddr)
	if !ok || g.Port != want.Port {
		return false
	}
	if want.IP == nil || want.IP.IsUnspecified() {
		return g.IP.IsUnspecified()
	}
	return g.IP.Equal(want.IP)
}
