package host

import (
	"net"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/listen"
)

// TestReclaimIgnoresSocketsOfAnotherNetns: when sact takes its listeners back from a
// handoff app's process, a socket the container made in its own network namespace with
// the same address (its own loopback, a path in its own mount namespace) is not taken
// for the app's listener.
func TestReclaimIgnoresSocketsOfAnotherNetns(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a network namespace")
	}
	host, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer host.Close()
	addrs := []listen.Addr{{Network: "tcp", Address: host.Addr().String()}}
	hostFile, _ := host.(*net.TCPListener).File()
	defer hostFile.Close()
	if i := matchListener(int(hostFile.Fd()), addrs); i != 0 {
		t.Fatalf("sact's own listener: match %d, want 0", i)
	}

	// The same address, bound in a namespace of its own, as a container could.
	fd := make(chan int)
	errs := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread goes away with its namespace
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errs <- err
			return
		}
		s, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			port := host.Addr().(*net.TCPAddr).Port
			if err = unix.Bind(s, &unix.SockaddrInet4{Port: port, Addr: [4]byte{127, 0, 0, 1}}); err == nil {
				err = unix.Listen(s, 8)
			}
		}
		if err != nil {
			errs <- err
			return
		}
		fd <- s
	}()
	select {
	case err := <-errs:
		t.Skipf("cannot bind in a new network namespace here: %v", err)
	case s := <-fd:
		defer unix.Close(s)
		if i := matchListener(s, addrs); i != -1 {
			t.Errorf("a socket of another network namespace with the app's address: match %d, want -1", i)
		}
	}
}
