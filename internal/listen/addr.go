// Package listen parses the addresses sact listens on ("unix:/path", "tcp:host:port") and
// binds them, so that the rest of sact only ever sees a net.Listener.
package listen

import (
	"fmt"
	"io/fs"
	"net"
	"strconv"
	"strings"
)

// Addr is one address an app (or the HTTP front door) listens on.
type Addr struct {
	Network string // "unix" or "tcp"
	Address string // an absolute path, or host:port

	// Unix sockets only. Mode is the socket file's permission bits; zero means 0666, as
	// systemd's SocketMode defaults, so that nginx running as another user can connect.
	// Owner and Group are user and group names or numeric ids; "" leaves them as created.
	Mode  fs.FileMode
	Owner string
	Group string
}

// String returns the address in the form Parse accepts.
func (a Addr) String() string { return a.Network + ":" + a.Address }

// Parse parses "unix:/abs/path" or "tcp:host:port" (host may be empty, an IP, or a name;
// IPv6 in brackets).
func Parse(s string) (Addr, error) {
	network, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Addr{}, fmt.Errorf("%q has no scheme: write unix:/path/to.sock or tcp:127.0.0.1:9001", s)
	}
	switch network {
	case "unix":
		if !strings.HasPrefix(rest, "/") {
			return Addr{}, fmt.Errorf("%q: unix socket path must be absolute, like unix:/run/sact/app.sock", s)
		}
		if len(rest) > 107 {
			return Addr{}, fmt.Errorf("%q: unix socket path is %d bytes, the kernel allows 107", s, len(rest))
		}
		return Addr{Network: "unix", Address: rest}, nil
	case "tcp":
		host, port, err := net.SplitHostPort(rest)
		if err != nil {
			return Addr{}, fmt.Errorf("%q: %v; write tcp:HOST:PORT, like tcp:127.0.0.1:9001", s, err)
		}
		n, err := strconv.Atoi(port)
		if err != nil || n < 0 || n > 65535 {
			return Addr{}, fmt.Errorf("%q: port %q is not a number from 0 to 65535", s, port)
		}
		return Addr{Network: "tcp", Address: net.JoinHostPort(host, port)}, nil
	default:
		return Addr{}, fmt.Errorf("%q: unknown scheme %q: use unix:/path or tcp:host:port", s, network)
	}
}
