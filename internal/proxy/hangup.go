package proxy

import (
	"context"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrClientGone is the cause of WatchHangup's context once the client has hung up.
var ErrClientGone = errors.New("client hung up")

// WatchHangup returns a context that ends, with cause ErrClientGone, when the client on c
// hangs up while nothing reads from it: a connection that waits for its app to start.
// Every `every` it asks the kernel, without reading, whether the client is gone: reset
// (POLLERR, POLLHUP: a unix peer that closed), or shut down (POLLRDHUP) with no byte sent
// before. A TCP client that sent its request and then shut its side down may be waiting
// for the answer (a half-close, as `nc -N` does), and the kernel cannot tell that from a
// close, so it keeps waiting; its bytes stay unread for the relay.
//
// stop ends the watch and the context; call it once the wait is over, before the relay
// reads from c. A conn that is not a socket (no SyscallConn) is never found gone.
func WatchHangup(parent context.Context, c net.Conn, every time.Duration) (ctx context.Context, stop func()) {
	ctx, cancel := context.WithCancelCause(parent)
	sc, ok := c.(syscall.Conn)
	if !ok {
		return ctx, func() { cancel(nil) }
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return ctx, func() { cancel(nil) }
	}
	var mu sync.Mutex
	stopped := false
	var t *time.Timer
	mu.Lock() // t is set before the first tick reads it
	defer mu.Unlock()
	t = time.AfterFunc(every, func() {
		if hungUp(rc) {
			cancel(ErrClientGone)
			return
		}
		mu.Lock()
		if !stopped {
			t.Reset(every)
		}
		mu.Unlock()
	})
	return ctx, func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
		cancel(nil)
	}
}

// hungUp polls the socket once, without blocking and without reading.
func hungUp(rc syscall.RawConn) bool {
	gone := false
	rc.Control(func(fd uintptr) {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN | unix.POLLRDHUP}}
		if n, err := unix.Poll(fds, 0); err != nil || n == 0 {
			return
		}
		ev := fds[0].Revents
		if ev&(unix.POLLERR|unix.POLLHUP|unix.POLLNVAL) != 0 {
			gone = true
			return
		}
		if ev&unix.POLLRDHUP != 0 {
			// Shut down: gone if the first thing in the queue is the end, not a request.
			var b [1]byte
			n, _, err := unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
			gone = n == 0 && err == nil
		}
	})
	return gone
}
