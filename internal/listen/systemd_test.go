package listen

import (
	"os"
	"os/exec"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"
)

// TestInheritedKeepsBlockingMode: a socket passed to sact (systemd, or an older sact's
// handover) that a running handoff app holds in blocking mode stays blocking until an
// app of sact's takes it. Before, every passed socket became a net.FileListener at once,
// which set O_NONBLOCK on the description the app shares: its blocking accept got EAGAIN.
func TestInheritedKeepsBlockingMode(t *testing.T) {
	if os.Getenv("SACT_TEST_INHERIT_CHILD") == "1" {
		os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		in := FromSystemd()
		if len(in.socks) != 1 {
			os.Exit(3)
		}
		if in.Rest() == nil {
			os.Exit(4) // the warning names the unclaimed socket
		}
		os.Exit(0)
	}
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0) // blocking, as an app keeps it
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "app-socket")
	defer f.Close()
	if err := unix.Bind(fd, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 8); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestInheritedKeepsBlockingMode$")
	cmd.Env = append(os.Environ(), "SACT_TEST_INHERIT_CHILD=1", "LISTEN_FDS=1")
	cmd.ExtraFiles = []*os.File{f} // fd 3 in the child, the same open file description
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		t.Fatal(err)
	}
	if flags&unix.O_NONBLOCK != 0 {
		t.Fatal("the socket is non-blocking after sact took in the sockets passed to it: an app accepting on it in blocking mode gets EAGAIN")
	}
}

// TestInheritedTakenIsAListener: the socket an app takes is a working listener.
func TestInheritedTakenIsAListener(t *testing.T) {
	ln := mustListen(t)
	f, err := ln.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	addr, err := listenerAddr(f)
	if err != nil {
		t.Fatal(err)
	}
	in := &Inherited{socks: []inheritedSock{{f: f, addr: addr}}}
	got := in.Take(Addr{Network: "tcp", Address: ln.Addr().String()}, "web")
	if got == nil {
		t.Fatalf("Take(%s) = nil", ln.Addr())
	}
	defer got.Close()
	if got.Addr().String() != ln.Addr().String() {
		t.Fatalf("took %s, want %s", got.Addr(), ln.Addr())
	}
	if rest := in.Rest(); len(rest) != 0 {
		t.Fatalf("Rest = %v after the only socket was taken", rest)
	}
}
