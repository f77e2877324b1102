package listen

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"weak"
)

// The listening sockets this process holds (bound by Listen, or passed by systemd), so
// that a restart of sact can pass them on: without systemd to the new sact (sact restart,
// SIGUSR2), as nginx does when it upgrades its binary; under systemd into its file
// descriptor store (StoreInSystemd). Either way the new process serves on the very sockets
// clients queue on, and none is refused. Weak pointers: a listener closed and dropped by a
// reload is forgotten.
var held struct {
	mu   sync.Mutex
	tcp  []ref[net.TCPListener]
	unix []ref[net.UnixListener]
}

type ref[T any] struct {
	p           weak.Pointer[T]
	fromSystemd bool // passed by systemd, which holds it already
}

// hold records ln as one of this process's listening sockets.
func hold(ln net.Listener, fromSystemd bool) {
	held.mu.Lock()
	defer held.mu.Unlock()
	switch l := ln.(type) {
	case *net.TCPListener:
		held.tcp = append(held.tcp, ref[net.TCPListener]{weak.Make(l), fromSystemd})
	case *net.UnixListener:
		held.unix = append(held.unix, ref[net.UnixListener]{weak.Make(l), fromSystemd})
	}
}

// filer is what both kinds of listener can do.
type filer interface {
	File() (*os.File, error)
	Addr() net.Addr
}

// Files returns a copy of each listening socket this process still holds, for a new sact
// to take (LISTEN_FDS): it finds its own by address. Closed listeners are left out. The
// caller closes the files.
func Files() ([]*os.File, error) {
	files, _, err := heldFiles(true)
	return files, err
}

// heldFiles returns copies of the open listeners held, with their addresses; those
// systemd passed only if withSystemd.
func heldFiles(withSystemd bool) ([]*os.File, []net.Addr, error) {
	held.mu.Lock()
	defer held.mu.Unlock()
	var files []*os.File
	var addrs []net.Addr
	var err error
	add := func(l filer, fromSystemd bool) {
		if err != nil || (fromSystemd && !withSystemd) {
			return
		}
		f, e := l.File()
		if e != nil {
			if !errors.Is(e, net.ErrClosed) {
				err = fmt.Errorf("passing on the socket %s: %w", l.Addr(), e)
			}
			return
		}
		files = append(files, f)
		addrs = append(addrs, l.Addr())
	}
	held.tcp = live(held.tcp, func(l *net.TCPListener, sd bool) { add(l, sd) })
	held.unix = live(held.unix, func(l *net.UnixListener, sd bool) { add(l, sd) })
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, nil, err
	}
	return files, addrs, nil
}

// KeepSocketFiles makes closing the unix listeners this process holds leave their socket
// files in place: once a new sact serves on the same sockets, the old one closes its
// copies as it exits, and the paths must still lead clients to the new one.
func KeepSocketFiles() {
	held.mu.Lock()
	defer held.mu.Unlock()
	held.unix = live(held.unix, func(l *net.UnixListener, _ bool) { l.SetUnlinkOnClose(false) })
}

// live calls f on each listener still referenced and returns those.
func live[T any](rs []ref[T], f func(*T, bool)) []ref[T] {
	out := rs[:0]
	for _, r := range rs {
		if l := r.p.Value(); l != nil {
			f(l, r.fromSystemd)
			out = append(out, r)
		}
	}
	return out
}
