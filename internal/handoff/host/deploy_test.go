package host

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// tookOne finds, in a process's fd table, a connection accepted from the listeners it
// is given, and nothing else: not the listeners themselves, not a connection the
// process made to another address, not one accepted from another listener.
func TestTookOne(t *testing.T) {
	for _, network := range []string{"tcp", "unix"} {
		t.Run(network, func(t *testing.T) {
			listen := func() net.Listener {
				addr := "127.0.0.1:0"
				if network == "unix" {
					addr = filepath.Join(t.TempDir(), "s.sock")
				}
				ln, err := net.Listen(network, addr)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
				return ln
			}
			ours, other := listen(), listen()
			addrs := []net.Addr{ours.Addr()}
			judged := map[string]bool{}
			if tookOne(os.Getpid(), addrs, judged) {
				t.Fatal("found an accepted connection with none open")
			}
			// A connection this process makes and accepts on the other listener.
			c, err := net.Dial(network, other.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			s, err := other.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			if tookOne(os.Getpid(), addrs, judged) {
				t.Fatal("took a connection of another listener for one of ours")
			}
			// A client of ours: its own side is not accepted, the accepted side is.
			c2, err := net.Dial(network, ours.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if network == "tcp" && tookOne(os.Getpid(), addrs, judged) {
				t.Fatal("took the client's side, still in the backlog, for an accepted connection")
			}
			s2, err := ours.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s2.Close()
			if !tookOne(os.Getpid(), addrs, judged) {
				t.Fatal("did not find the connection accepted from our listener")
			}
		})
	}
}
