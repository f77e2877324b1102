package sockdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// conn is one NETLINK_SOCK_DIAG socket, in the network namespace of the thread that
// opened it. It is not safe for concurrent use: Prober serializes calls.
type conn struct {
	f   *os.File // non-blocking, so reads wait in the runtime poller and honour deadlines
	rc  syscall.RawConn
	seq uint32
	buf []byte
}

// recvBufSize is the size of one read. The kernel sizes a dump's batches after the
// largest read it has seen, up to 32 KiB, so a larger buffer means fewer reads.
const recvBufSize = 64 << 10

func dial() (*conn, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_SOCK_DIAG)
	if err != nil {
		return nil, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind sock_diag netlink socket: %w", err)
	}
	f := os.NewFile(uintptr(fd), "sock_diag")
	rc, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open sock_diag netlink socket: %w", err)
	}
	return &conn{f: f, rc: rc, buf: make([]byte, recvBufSize)}, nil
}

func (c *conn) close() error { return c.f.Close() }

// errInterrupted marks a request cut short (by its context, or by an answer it could
// not read): the socket may hold the rest of the answer, so the caller must not reuse it.
var errInterrupted = errors.New("sock_diag request interrupted")

// request sends one SOCK_DIAG_BY_FAMILY dump request with body and calls fn with the
// body of each answer until the kernel says it is done.
func (c *conn) request(ctx context.Context, body []byte, fn func(msg []byte)) error {
	c.seq++
	seq := c.seq
	req := make([]byte, unix.SizeofNlMsghdr+len(body))
	binary.NativeEndian.PutUint32(req[0:4], uint32(len(req)))
	binary.NativeEndian.PutUint16(req[4:6], unix.SOCK_DIAG_BY_FAMILY)
	binary.NativeEndian.PutUint16(req[6:8], unix.NLM_F_REQUEST|unix.NLM_F_DUMP)
	binary.NativeEndian.PutUint32(req[8:12], seq)
	copy(req[unix.SizeofNlMsghdr:], body)

	if deadline, ok := ctx.Deadline(); ok {
		c.f.SetDeadline(deadline)
	}
	expired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.f.SetDeadline(time.Unix(1, 0))
		close(expired)
	})
	defer func() {
		if !stop() {
			<-expired // so that it cannot set the deadline after it is cleared below
		}
		c.f.SetDeadline(time.Time{})
	}()

	var werr error
	err := c.rc.Write(func(fd uintptr) bool {
		werr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return werr != unix.EAGAIN
	})
	if err == nil {
		err = werr
	}
	if err != nil {
		return c.ctxErr(ctx, fmt.Errorf("send sock_diag request: %w", err))
	}

	for {
		var n, rflags int
		var rerr error
		err := c.rc.Read(func(fd uintptr) bool {
			n, _, rflags, _, rerr = unix.Recvmsg(int(fd), c.buf, nil, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			return c.ctxErr(ctx, fmt.Errorf("read sock_diag answer: %w", err))
		}
		if rflags&unix.MSG_TRUNC != 0 {
			return fmt.Errorf("read sock_diag answer: %w: message larger than %d bytes", errInterrupted, len(c.buf))
		}
		done, err := parse(c.buf[:n], seq, fn)
		if err != nil || done {
			return err
		}
	}
}

// ctxErr reports err, or the context's error if it ended the request, marked so that
// the caller drops the socket.
func (c *conn) ctxErr(ctx context.Context, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("%w: %w", errInterrupted, cerr)
	}
	return fmt.Errorf("%w: %w", errInterrupted, err)
}

// parse walks the netlink messages in b. It reports done at the end of the dump or at
// an error, which ends it too.
func parse(b []byte, seq uint32, fn func(msg []byte)) (done bool, err error) {
	for len(b) >= unix.SizeofNlMsghdr {
		l := int(binary.NativeEndian.Uint32(b[0:4]))
		typ := binary.NativeEndian.Uint16(b[4:6])
		mseq := binary.NativeEndian.Uint32(b[8:12])
		if l < unix.SizeofNlMsghdr || l > len(b) {
			return true, fmt.Errorf("read sock_diag answer: %w: message length %d of %d bytes", errInterrupted, l, len(b))
		}
		body := b[unix.SizeofNlMsghdr:l]
		b = b[min(nlAlign(l), len(b)):]
		if mseq != seq {
			continue // not ours; cannot happen on a socket whose requests all ran to the end
		}
		switch typ {
		case unix.NLMSG_DONE, unix.NLMSG_ERROR:
			// NLMSG_DONE may carry the errno of a dump that failed part-way; NLMSG_ERROR
			// carries the errno of a refused request.
			if len(body) >= 4 {
				if errno := int32(binary.NativeEndian.Uint32(body[0:4])); errno < 0 {
					return true, syscall.Errno(-errno)
				}
			}
			return true, nil
		case unix.SOCK_DIAG_BY_FAMILY:
			fn(body)
		}
	}
	return false, nil
}

// nlaTypeMask clears NLA_F_NESTED and NLA_F_NET_BYTEORDER from an attribute type.
const nlaTypeMask = 0x3fff

func nlAlign(n int) int { return (n + unix.NLMSG_ALIGNTO - 1) &^ (unix.NLMSG_ALIGNTO - 1) }

// attrs calls fn for each netlink attribute (type, payload) in b.
func attrs(b []byte, fn func(typ uint16, val []byte)) {
	for len(b) >= unix.SizeofRtAttr {
		l := int(binary.NativeEndian.Uint16(b[0:2]))
		typ := binary.NativeEndian.Uint16(b[2:4]) & nlaTypeMask
		if l < unix.SizeofRtAttr || l > len(b) {
			return
		}
		fn(typ, b[unix.SizeofRtAttr:l])
		b = b[min(nlAlign(l), len(b)):]
	}
}
