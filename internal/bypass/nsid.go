package bypass

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"

	"golang.org/x/sys/unix"
)

// currentNetns is the program's netns argument for "the connecting socket's own
// namespace" (BPF_F_CURRENT_NETNS, -1 as a signed 32-bit value).
const currentNetns = 0xffffffff

// netnsOf is the id, in sact's network namespace, of the namespace process pid is in,
// as bpf_sk_lookup_tcp takes it: currentNetns when it is sact's own, else the id the
// kernel gives that namespace here (RTM_GETNSID), assigned first if it has none.
func netnsOf(pid int) (uint32, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return 0, fmt.Errorf("opening the network namespace of process %d: %w", pid, err)
	}
	defer f.Close()
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &theirs); err != nil {
		return 0, err
	}
	// The calling thread's: a thread may be in a namespace of its own (the tests').
	if err := unix.Stat("/proc/thread-self/ns/net", &ours); err != nil {
		return 0, err
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return currentNetns, nil
	}
	id, err := nsid(int(f.Fd()), false)
	if err == nil && id < 0 {
		if _, err = nsid(int(f.Fd()), true); err == nil {
			id, err = nsid(int(f.Fd()), false)
		}
	}
	if err != nil {
		return 0, fmt.Errorf("the id of the network namespace of process %d: %w", pid, err)
	}
	if id < 0 {
		return 0, fmt.Errorf("the network namespace of process %d has no id here", pid)
	}
	return uint32(id), nil
}

// nsid asks rtnetlink for the id of the namespace of fd (RTM_GETNSID), or, with assign,
// has it assign one (RTM_NEWNSID with NETNSA_NSID -1).
func nsid(fd int, assign bool) (int32, error) {
	s, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
	if err != nil {
		return 0, fmt.Errorf("rtnetlink socket: %w", err)
	}
	defer unix.Close(s)
	if err := unix.Bind(s, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("rtnetlink bind: %w", err)
	}
	typ, flags := uint16(unix.RTM_GETNSID), uint16(unix.NLM_F_REQUEST)
	attrs := attr(unix.NETNSA_FD, uint32(fd))
	if assign {
		typ, flags = unix.RTM_NEWNSID, unix.NLM_F_REQUEST|unix.NLM_F_ACK
		attrs = append(attrs, attr(unix.NETNSA_NSID, 0xffffffff)...)
	}
	// struct nlmsghdr, struct rtgenmsg (one byte, padded to four), the attributes.
	msg := make([]byte, unix.NLMSG_HDRLEN+4, unix.NLMSG_HDRLEN+4+len(attrs))
	msg = append(msg, attrs...)
	binary.NativeEndian.PutUint32(msg[0:], uint32(len(msg)))
	binary.NativeEndian.PutUint16(msg[4:], typ)
	binary.NativeEndian.PutUint16(msg[6:], flags)
	binary.NativeEndian.PutUint32(msg[8:], 1) // sequence
	msg[unix.NLMSG_HDRLEN] = unix.AF_UNSPEC
	if err := unix.Sendto(s, msg, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK}); err != nil {
		return 0, fmt.Errorf("rtnetlink send: %w", err)
	}
	buf := make([]byte, 4096)
	n, _, err := unix.Recvfrom(s, buf, 0)
	if err != nil {
		return 0, fmt.Errorf("rtnetlink receive: %w", err)
	}
	msgs, err := syscall.ParseNetlinkMessage(buf[:n])
	if err != nil {
		return 0, fmt.Errorf("rtnetlink reply: %w", err)
	}
	for _, m := range msgs {
		switch m.Header.Type {
		case unix.NLMSG_ERROR:
			if len(m.Data) >= 4 {
				if e := int32(binary.NativeEndian.Uint32(m.Data)); e != 0 {
					return 0, fmt.Errorf("rtnetlink: %w", syscall.Errno(-e))
				}
			}
			return -1, nil // the ack of an assignment
		case unix.RTM_NEWNSID:
			for b := m.Data[min(4, len(m.Data)):]; len(b) >= 4; {
				l := int(binary.NativeEndian.Uint16(b))
				t := binary.NativeEndian.Uint16(b[2:])
				if l < 4 || l > len(b) {
					break
				}
				if t == unix.NETNSA_NSID && l >= 8 {
					return int32(binary.NativeEndian.Uint32(b[4:])), nil
				}
				b = b[min((l+3)&^3, len(b)):]
			}
		}
	}
	return 0, errors.New("rtnetlink: no namespace id in the reply")
}

func attr(typ uint16, v uint32) []byte {
	b := make([]byte, 8)
	binary.NativeEndian.PutUint16(b, 8)
	binary.NativeEndian.PutUint16(b[2:], typ)
	binary.NativeEndian.PutUint32(b[4:], v)
	return b
}
