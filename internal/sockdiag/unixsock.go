package sockdiag

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"syscall"

	"golang.org/x/sys/unix"
)

// Constants of <linux/unix_diag.h>.
const (
	udiagShowName  = 0x01
	udiagShowVFS   = 0x02
	udiagShowRQLen = 0x10

	unixDiagName  = 0
	unixDiagVFS   = 1
	unixDiagRQLen = 4

	sizeofUnixDiagReq = 24
	sizeofUnixDiagMsg = 16
)

// vfsKey names the file a unix socket is bound to: the inode of the socket file on disk
// and its filesystem's device, as major and minor numbers.
type vfsKey struct {
	major, minor uint32
	ino          uint32
}

// unixMsg is the part of one struct unix_diag_msg and its attributes that sockdiag uses.
type unixMsg struct {
	state    uint8
	ino      uint32 // the socket's own inode, as /proc/PID/fd names it
	cookie   uint64
	vfs      vfsKey
	hasVFS   bool
	name     []byte // sun_path as bound: a leading NUL for an abstract name
	rqueue   uint32 // LISTEN: connections waiting for accept; else unread bytes
	wqueue   uint32 // LISTEN: the backlog; else memory of output the peer has not read
	hasRQLen bool
}

func unixReq(states, show uint32) []byte {
	b := make([]byte, sizeofUnixDiagReq)
	b[0] = unix.AF_UNIX
	binary.NativeEndian.PutUint32(b[4:8], states)
	binary.NativeEndian.PutUint32(b[12:16], show)
	return b
}

func parseUnix(b []byte) (unixMsg, bool) {
	if len(b) < sizeofUnixDiagMsg {
		return unixMsg{}, false
	}
	var m unixMsg
	m.state = b[2]
	m.ino = binary.NativeEndian.Uint32(b[4:8])
	m.cookie = uint64(binary.NativeEndian.Uint32(b[8:12])) | uint64(binary.NativeEndian.Uint32(b[12:16]))<<32
	attrs(b[sizeofUnixDiagMsg:], func(typ uint16, val []byte) {
		switch typ {
		case unixDiagName:
			m.name = val
		case unixDiagVFS:
			if len(val) >= 8 {
				// udiag_vfs_dev is the kernel's internal dev_t: major<<20 | minor.
				dev := binary.NativeEndian.Uint32(val[4:8])
				m.vfs = vfsKey{major: dev >> 20, minor: dev & (1<<20 - 1), ino: binary.NativeEndian.Uint32(val[0:4])}
				m.hasVFS = true
			}
		case unixDiagRQLen:
			if len(val) >= 8 {
				m.rqueue = binary.NativeEndian.Uint32(val[0:4])
				m.wqueue = binary.NativeEndian.Uint32(val[4:8])
				m.hasRQLen = true
			}
		}
	})
	return m, true
}

func dumpUnix(ctx context.Context, c *conn, states, show uint32, fn func(unixMsg)) error {
	err := c.request(ctx, unixReq(states, show), func(b []byte) {
		if m, ok := parseUnix(b); ok {
			fn(m)
		}
	})
	if errors.Is(err, syscall.ENOENT) {
		return fmt.Errorf("%w: the kernel has no unix_diag: load the unix_diag module (CONFIG_UNIX_DIAG)", err)
	}
	return err
}
