package sockdiag

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"
)

// inodeOf is the inode /proc/self/fd names for c's socket.
func inodeOf(t *testing.T, c syscall.Conn) uint32 {
	t.Helper()
	rc, err := c.SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var target string
	rc.Control(func(fd uintptr) { target, err = os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd)) })
	if err != nil {
		t.Fatal(err)
	}
	var ino uint32
	if _, err := fmt.Sscanf(target, "socket:[%d]", &ino); err != nil {
		t.Fatalf("%s: %v", target, err)
	}
	return ino
}

// Sockets names the inodes of a listener's accepted connections, TCP and unix, as the
// process holding them sees them in /proc/PID/fd: not the client's side, not the
// listener's, and no longer once closed.
func TestSocketsInodes(t *testing.T) {
	p := newProber(t)
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			addr := "127.0.0.1:0"
			if network == "unix" {
				addr = filepath.Join(t.TempDir(), "s.sock")
			}
			ln, err := net.Listen(network, addr)
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			c, err := net.Dial(network, ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			want := inodeOf(t, s.(syscall.Conn))
			acts, inodes, err := p.Sockets(context.Background(), ln.Addr(), ln.Addr())
			if err != nil {
				t.Fatal(err)
			}
			for i := range 2 {
				if acts[i].Open != 1 || !slices.Equal(inodes[i], []uint32{want}) {
					t.Errorf("address %d: open %d, inodes %v; want 1, [%d] (client %d, listener %d)", i, acts[i].Open, inodes[i], want,
						inodeOf(t, c.(syscall.Conn)), inodeOf(t, ln.(syscall.Conn)))
				}
			}
			s.Close()
			eventually(t, p, ln.Addr(), "closed", func(a Activity) bool { return a.Open == 0 })
			if _, inodes, err := p.Sockets(context.Background(), ln.Addr()); err != nil || len(inodes[0]) != 0 {
				t.Errorf("after the close: %v, %v; want no inode", inodes, err)
			}
		})
	}
}
