package proxy

import (
	"io"
	"net"
	"os"
	"runtime"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// pipeSize is the capacity asked of each splice pipe, so the most one splice(2) moves.
// It is the kernel's default, so asking is free of the per-user pipe limit that larger
// pipes run into for an unprivileged sact (fs.pipe-user-pages-soft: 16384 pages, 1024
// default pipes across all of the user's processes), and BenchmarkRelay shows no gain
// from larger pipes on sockets whose buffers hold little more. The size is asked rather
// than assumed because a pipe made past that limit gets 2 pages; the actual size is read
// back and used.
const pipeSize = 256 << 10

// spliceFlags: SPLICE_F_NONBLOCK makes the pipe end never block, the socket end being
// O_NONBLOCK already, so EAGAIN comes back and the netpoller waits instead of a thread;
// SPLICE_F_MOVE is a hint to move pages rather than copy them.
const spliceFlags = unix.SPLICE_F_NONBLOCK | unix.SPLICE_F_MOVE

// The system calls, replaceable by tests.
var (
	spliceCall = unix.Splice
	pipe2Call  = unix.Pipe2
)

// spliced counts the bytes moved by splice(2), so tests can tell it is used.
var spliced atomic.Int64

// rawStreams returns the raw conns of dst and src if both are TCP or unix stream sockets,
// which the kernel can splice from and to.
func rawStreams(dst, src net.Conn) (d, s syscall.RawConn, ok bool) {
	d, ok = rawStream(dst)
	if !ok {
		return nil, nil, false
	}
	s, ok = rawStream(src)
	return d, s, ok
}

func rawStream(c net.Conn) (syscall.RawConn, bool) {
	var rc syscall.RawConn
	var err error
	switch c := c.(type) {
	case *net.TCPConn:
		rc, err = c.SyscallConn()
	case *net.UnixConn:
		// Not "unixpacket" or "unixgram": a splice would merge their messages.
		if a, ok := c.LocalAddr().(*net.UnixAddr); !ok || a.Net != "unix" {
			return nil, false
		}
		rc, err = c.SyscallConn()
	default:
		return nil, false
	}
	return rc, err == nil
}

// splice moves bytes from src to dst until src's EOF or an error, in the kernel: splice
// from src into a pipe, then from the pipe into dst, until the pipe is empty again. It
// returns the bytes written to dst. fallback reports that the kernel cannot splice from
// src (EINVAL, ENOSYS) or no pipe could be made; nothing is then left in flight and the
// caller should copy the rest.
//
// The pipe is always empty when a splice from src starts, so EAGAIN from it means src has
// nothing to read, never that the pipe is full, and the netpoller waiting for src to be
// readable is right. A pipe is held only while bytes are in flight: an idle connection
// waits for its socket with no pipe, so it costs its two sockets' fds, not six.
func (r *relay) splice(dst, src syscall.RawConn) (n int64, fallback bool, err error) {
	defer func() { spliced.Add(n) }()
	for {
		var p *pipe
		var in int64
		var serr error
		noPipe := false
		rerr := src.Read(func(fd uintptr) bool {
			if p = getPipe(); p == nil {
				noPipe = true
				return true
			}
			for {
				in, serr = spliceCall(int(fd), nil, p.w, nil, p.size, spliceFlags)
				if serr != unix.EINTR {
					break
				}
			}
			if serr == unix.EAGAIN {
				putPipe(p) // empty: back to the pool while the socket is quiet
				p = nil
				return false
			}
			return true
		})
		if p == nil {
			if noPipe {
				return n, true, nil
			}
			return n, false, rerr
		}
		switch {
		case rerr != nil:
			putPipe(p)
			return n, false, rerr
		case serr == unix.EINVAL || serr == unix.ENOSYS:
			putPipe(p)
			return n, true, nil
		case serr != nil:
			putPipe(p)
			return n, false, os.NewSyscallError("splice", serr)
		case in == 0:
			putPipe(p)
			return n, false, nil // EOF
		}
		p.held = in

		werr := dst.Write(func(fd uintptr) bool {
			for p.held > 0 {
				out, err := spliceCall(p.r, nil, int(fd), nil, int(p.held), spliceFlags)
				if out > 0 {
					p.held -= out
					n += out
					r.moved()
				}
				switch {
				case err == unix.EINTR:
				case err == unix.EAGAIN:
					return false
				case err != nil:
					serr = err
					return true
				case out == 0:
					serr = io.ErrNoProgress // the pipe holds less than counted: a bug
					return true
				}
			}
			return true
		})
		putPipe(p) // closed rather than pooled if bytes are left in it
		if werr != nil {
			return n, false, werr
		}
		if serr != nil {
			return n, false, os.NewSyscallError("splice", serr)
		}
	}
}

// pipe is a kernel pipe that carries spliced bytes from one socket to another.
type pipe struct {
	r, w    int
	size    int   // capacity in bytes
	held    int64 // bytes in the pipe
	cleanup runtime.Cleanup
}

// pipes holds empty pipes for reuse: making one costs two fds and three system calls. It
// is bounded (idlePipes), not a sync.Pool: a sync.Pool keeps what a burst left until
// garbage collections that an idle daemon may not run for minutes, so the fds a daemon
// holds after its connections closed would depend on the collector.
var pipes = make(chan *pipe, idlePipes)

// idlePipes is how many empty pipes are kept: a pipe is held only while a chunk crosses
// it, so a few serve many connections.
const idlePipes = 8

func getPipe() *pipe {
	select {
	case p := <-pipes:
		return p
	default:
	}
	var fds [2]int
	if err := pipe2Call(fds[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil // out of fds, most likely: copy instead
	}
	p := &pipe{r: fds[0], w: fds[1]}
	size, err := unix.FcntlInt(uintptr(p.w), unix.F_SETPIPE_SZ, pipeSize)
	if err != nil {
		// Over the per-user limit, say: the pipe keeps the size it was made with.
		size, err = unix.FcntlInt(uintptr(p.w), unix.F_GETPIPE_SZ, 0)
	}
	if err != nil || size <= 0 {
		unix.Close(p.r)
		unix.Close(p.w)
		return nil
	}
	p.size = size
	p.cleanup = runtime.AddCleanup(p, closePipe, fds)
	return p
}

// putPipe returns p to the pool if it is empty, and closes it otherwise: bytes left in it
// after an error belong to a dead connection and must never reach another.
func putPipe(p *pipe) {
	if p.held == 0 {
		select {
		case pipes <- p:
			return
		default: // enough kept already
		}
	}
	p.cleanup.Stop()
	closePipe([2]int{p.r, p.w})
}

func closePipe(fds [2]int) {
	unix.Close(fds[0])
	unix.Close(fds[1])
}
