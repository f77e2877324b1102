package listen

import (
	"net"
	"strings"
	"sync"

	"github.com/coreos/go-systemd/v22/activation"
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
	ln   net.Listener
}

// FromSystemd takes the sockets systemd passed (and unsets LISTEN_* so that children do
// not see them). Sockets that are not stream listeners are closed and ignored.
func FromSystemd() *Inherited {
	in := &Inherited{}
	for _, f := range activation.Files(true) {
		ln, err := net.FileListener(f)
		name := f.Name()
		f.Close()
		if err != nil {
			continue
		}
		if strings.HasPrefix(name, "LISTEN_FD_") { // go-systemd's name when none was given
			name = ""
		}
		hold(ln, true)
		in.socks = append(in.socks, inheritedSock{name: name, ln: ln})
	}
	return in
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
	for i, s := range in.socks {
		if (s.name != "" && s.name == name && sameNetwork(s.ln, a)) || sameAddr(s.ln.Addr(), a) {
			in.socks = append(in.socks[:i], in.socks[i+1:]...)
			return s.ln
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
			out = append(out, s.ln.Addr().String())
		}
		s.ln.Close()
	}
	in.socks = nil
	return out
}

func sameNetwork(ln net.Listener, a Addr) bool {
	return ln.Addr().Network() == a.Network
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
