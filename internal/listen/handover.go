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
// that a restart of sact without systemd (sact restart, SIGUSR2) can pass them to the new
// sact, as nginx does when it upgrades its binary: the new process serves on the very
// sockets clients queue on, and none is refused. Weak pointers: a listener closed and
// dropped by a reload is forgotten.
var held struct {
	mu   sync.Mutex
	tcp  []weak.Pointer[net.TCPListener]
	unix []weak.Pointer[net.UnixListener]
}

// hold records ln as one of this process's listening sockets.
func hold(ln net.Listener) {
	held.mu.Lock()
	defer held.mu.Unlock()
	switch l := ln.(type) {
	case *net.TCPListener:
		held.tcp = append(held.tcp, weak.Make(l))
	case *net.UnixListener:
		held.unix = append(held.unix, weak.Make(l))
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
	held.mu.Lock()
	defer held.mu.Unlock()
	var files []*os.File
	add := func(l filer) error {
		f, err := l.File()
		if err != nil {
			if isClosed(err) {
				return nil
			}
			return fmt.Errorf("passing on the socket %s: %w", l.Addr(), err)
		}
		files = append(files, f)
		return nil
	}
	var err error
	held.tcp = live(held.tcp, func(l *net.TCPListener) {
		if err == nil {
			err = add(l)
		}
	})
	held.unix = live(held.unix, func(l *net.UnixListener) {
		if err == nil {
			err = add(l)
		}
	})
	if err != nil {
		for _, f := range files {
			f.Close()
		}
		return nil, err
	}
	return files, nil
}

// KeepSocketFiles makes closing the unix listeners this process holds leave their socket
// files in place: once a new sact serves on the same sockets, the old one closes its
// copies as it exits, and the paths must still lead clients to the new one.
func KeepSocketFiles() {
	held.mu.Lock()
	defer held.mu.Unlock()
	held.unix = live(held.unix, func(l *net.UnixListener) { l.SetUnlinkOnClose(false) })
}

// live calls f on each listener still referenced and returns those.
func live[T any](ps []weak.Pointer[T], f func(*T)) []weak.Pointer[T] {
	out := ps[:0]
	for _, p := range ps {
		if l := p.Value(); l != nil {
			f(l)
			out = append(out, p)
		}
	}
	return out
}

func isClosed(err error) bool { return errors.Is(err, net.ErrClosed) }
