package listen

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Move gives a listener a new fd for the same socket and closes the old one, so
// that an accept loop on the old one ends while the socket, its address and the clients
// in its backlog stay: how a listener changes apps in a reload.
func Move(ln net.Listener) (net.Listener, error) {
	fl, ok := ln.(interface{ File() (*os.File, error) })
	if !ok {
		return nil, errors.New("listener cannot be duplicated")
	}
	f, err := fl.File()
	if err != nil {
		return nil, err
	}
	defer f.Close()
	rc, err := f.SyscallConn() // not f.Fd(): it would make the socket blocking
	if err != nil {
		return nil, err
	}
	fd := -1
	rc.Control(func(raw uintptr) { fd = int(raw) })
	// A running handoff app shares the socket's blocking mode: keep it.
	moved, err := KeepStatusFlags(fd, func() (net.Listener, error) { return net.FileListener(f) })
	if err != nil {
		return nil, err
	}
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
		moved.(*net.UnixListener).SetUnlinkOnClose(true)
	}
	ln.Close()
	return moved, nil
}

// KeepStatusFlags runs mk, which makes a listener from a duplicate of fd, and puts the
// socket's blocking mode back as it was. A duplicate shares the open file description,
// file status flags included, with every other: net.FileListener's O_NONBLOCK on a
// socket that a running app holds made an app that accepts in blocking mode get EAGAIN
// (issue 12). sact never accepts on a handoff app's listener: it polls it, duplicates
// it and reads its address, none of which needs O_NONBLOCK (the pending watch sets it
// while the app is stopped, the relay before its accept loop).
func KeepStatusFlags(fd int, mk func() (net.Listener, error)) (net.Listener, error) {
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return nil, fmt.Errorf("reading the socket's flags: %w", err)
	}
	ln, err := mk()
	if err != nil || flags&unix.O_NONBLOCK != 0 {
		return ln, err
	}
	if err := unix.SetNonblock(fd, false); err != nil {
		ln.Close()
		return nil, fmt.Errorf("putting the socket back in blocking mode: %w", err)
	}
	return ln, nil
}

// SetNonblock puts ln's socket in non-blocking mode, which Go's accept needs: a socket
// that was a handoff app's may be blocking (KeepStatusFlags).
func SetNonblock(ln net.Listener) error {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = unix.SetNonblock(int(fd), true) }); err != nil {
		return err
	}
	return serr
}
