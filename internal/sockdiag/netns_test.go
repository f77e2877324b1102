package sockdiag

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// inOtherNetns runs fn on a thread moved into a new network namespace, as a process in
// a container would run, and waits for it. The thread is thrown away afterwards. It
// skips the test where namespaces cannot be made (no CAP_SYS_ADMIN).
func inOtherNetns(t *testing.T, fn func()) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread exits with the goroutine
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- err
			return
		}
		defer func() { errc <- nil }()
		fn()
	}()
	if err := <-errc; err != nil {
		if errors.Is(err, unix.EPERM) {
			t.Skipf("cannot make a network namespace: %v", err)
		}
		t.Fatal(err)
	}
}

// In handoff mode the app accepts from sact's listener inside its container's network
// namespace. A socket's namespace is fixed when it is made, and the kernel makes an
// accepted TCP socket as a clone of its listener, so the connection stays in sact's
// namespace, where sact's Prober sees it; a Prober in the app's namespace does not.
func TestTCPAcceptedInOtherNetnsIsSeen(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	var s net.Conn
	var inside Activity
	var insideErr error
	inOtherNetns(t, func() {
		if s, err = ln.Accept(); err != nil {
			return
		}
		var q *Prober
		if q, insideErr = New(); insideErr != nil {
			return
		}
		defer q.Close()
		var got []Activity
		if got, insideErr = q.Probe(context.Background(), ln.Addr()); insideErr == nil {
			inside = got[0]
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if insideErr != nil {
		t.Fatal(insideErr)
	}
	if inside != (Activity{}) {
		t.Errorf("from the app's namespace: have %+v, want nothing", inside)
	}
	eventually(t, p, ln.Addr(), "one open connection", counts(1, 0))
}

// A unix socket lives in the namespace of the process that made it, and the kernel
// makes the server side of a unix connection in the connecting client's namespace.
// So a client in another namespace (reaching the socket file through a bind mount) is
// queued in the listener's view but, once accepted, is not seen from sact's
// namespace. This documents that limit.
func TestUnixClientInOtherNetnsIsNotSeenOnceAccepted(t *testing.T) {
	p := newProber(t)
	ln := listenUnix(t, "unix", filepath.Join(t.TempDir(), "app.sock"))
	var c net.Conn
	var err error
	inOtherNetns(t, func() { c, err = net.Dial("unix", ln.Addr().String()) })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eventually(t, p, ln.Addr(), "one queued connection", counts(0, 1))
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := probe(t, p, ln.Addr()); got != (Activity{Listening: true}) {
		t.Errorf("have %+v; the accepted socket was thought invisible from here", got)
	}
}
