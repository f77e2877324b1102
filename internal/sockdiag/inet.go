package sockdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Constants of <linux/inet_diag.h> and <net/tcp_states.h> that x/sys/unix lacks.
const (
	inetDiagInfo = 2 // INET_DIAG_INFO: struct tcp_info

	tcpEstablished = 1
	tcpFinWait1    = 4
	tcpFinWait2    = 5
	tcpTimeWait    = 6
	tcpClose       = 7
	tcpCloseWait   = 8
	tcpLastAck     = 9
	tcpListen      = 10
	tcpClosing     = 11

	sizeofInetDiagReqV2 = 56
	sizeofInetDiagMsg   = 72
	inetDiagNoCookie    = ^uint32(0)
)

// tcpConnStates are the states asked for when looking for a listener's connections:
// those of full sockets and TIME_WAIT. SYN_SENT sockets are outgoing, and SYN_RECV
// handshakes are not connections yet.
const tcpConnStates = 1<<tcpEstablished | 1<<tcpFinWait1 | 1<<tcpFinWait2 | 1<<tcpTimeWait |
	1<<tcpClose | 1<<tcpCloseWait | 1<<tcpLastAck | 1<<tcpClosing

// inetMsg is the part of one struct inet_diag_msg (and its INET_DIAG_INFO) that sockdiag uses.
type inetMsg struct {
	state   uint8
	src     netip.AddrPort
	cookie  uint64
	expires uint32 // ms left on the socket's timer; for TIME_WAIT, until it is freed
	rqueue  uint32 // LISTEN: connections waiting for accept; else unread bytes
	wqueue  uint32 // bytes written but not yet acknowledged, sent or not
	inode   uint32
	info    []byte // struct tcp_info, as long as the kernel made it; nil if not asked or not a full socket
}

// inetReq builds a struct inet_diag_req_v2 for TCP over family, asking for the sockets in
// states whose local port is sport (0: any), and for tcp_info if info.
func inetReq(family uint8, states uint32, src netip.AddrPort, info bool) []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0] = family
	b[1] = unix.IPPROTO_TCP
	if info {
		b[2] = 1 << (inetDiagInfo - 1)
	}
	binary.NativeEndian.PutUint32(b[4:8], states)
	id := b[8:]
	binary.BigEndian.PutUint16(id[0:2], src.Port())
	if a := src.Addr(); a.IsValid() {
		if family == unix.AF_INET {
			a4 := a.Unmap().As4()
			copy(id[4:8], a4[:])
		} else {
			a16 := a.As16()
			copy(id[4:20], a16[:])
		}
	}
	binary.NativeEndian.PutUint32(id[40:44], inetDiagNoCookie)
	binary.NativeEndian.PutUint32(id[44:48], inetDiagNoCookie)
	return b
}

func parseInet(b []byte) (inetMsg, bool) {
	if len(b) < sizeofInetDiagMsg {
		return inetMsg{}, false
	}
	var m inetMsg
	m.state = b[1]
	id := b[4:52]
	port := binary.BigEndian.Uint16(id[0:2])
	var addr netip.Addr
	if b[0] == unix.AF_INET {
		addr = netip.AddrFrom4([4]byte(id[4:8]))
	} else {
		addr = netip.AddrFrom16([16]byte(id[4:20]))
	}
	m.src = netip.AddrPortFrom(addr, port)
	m.cookie = uint64(binary.NativeEndian.Uint32(id[40:44])) | uint64(binary.NativeEndian.Uint32(id[44:48]))<<32
	m.expires = binary.NativeEndian.Uint32(b[52:56])
	m.rqueue = binary.NativeEndian.Uint32(b[56:60])
	m.wqueue = binary.NativeEndian.Uint32(b[60:64])
	m.inode = binary.NativeEndian.Uint32(b[68:72])
	attrs(b[sizeofInetDiagMsg:], func(typ uint16, val []byte) {
		if typ == inetDiagInfo {
			m.info = val
		}
	})
	return m, true
}

// Offsets into struct tcp_info, taken from x/sys/unix's copy of it.
var (
	offLastDataSent = int(unsafe.Offsetof(unix.TCPInfo{}.Last_data_sent))
	offLastDataRecv = int(unsafe.Offsetof(unix.TCPInfo{}.Last_data_recv))
	offBytesAcked   = int(unsafe.Offsetof(unix.TCPInfo{}.Bytes_acked))
	offBytesRecv    = int(unsafe.Offsetof(unix.TCPInfo{}.Bytes_received))
)

func infoU32(info []byte, off int) (uint32, bool) {
	if len(info) < off+4 {
		return 0, false
	}
	return binary.NativeEndian.Uint32(info[off:]), true
}

func infoU64(info []byte, off int) (uint64, bool) {
	if len(info) < off+8 {
		return 0, false
	}
	return binary.NativeEndian.Uint64(info[off:]), true
}

func dumpTCP(ctx context.Context, c *conn, family uint8, states uint32, src netip.AddrPort, info bool, fn func(inetMsg)) error {
	err := c.request(ctx, inetReq(family, states, src, info), func(b []byte) {
		if m, ok := parseInet(b); ok {
			fn(m)
		}
	})
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%w: the kernel has no inet_diag for TCP: load the tcp_diag module (CONFIG_INET_DIAG)", err)
	}
	return err
}
