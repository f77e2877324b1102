package handoff

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// A Server whose socket path was taken over by a newer Server (a new sact started by
// `sact restart` binds the same handoff socket before the old one exits) leaves the newer
// one's socket in place when it closes: the next start of the app's container must find
// it. (issue 16)
func TestCloseLeavesAReplacedSocket(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	path := filepath.Join(t.TempDir(), "app", "handoff.sock")
	sockets := []Socket{{Name: "http", Conn: tcp.(*net.TCPListener)}}
	old, err := NewServer(path, sockets, Options{})
	if err != nil {
		t.Fatal(err)
	}
	newer, err := NewServer(path, sockets, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer newer.Close()
	before, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil {
		t.Fatal(err)
	}
	after, err := os.Lstat(path)
	if err != nil {
		t.Fatalf("the old Server's Close removed the newer Server's socket: %v", err)
	}
	if !os.SameFile(before, after) {
		t.Errorf("the newer Server's socket was replaced")
	}
	// Its own socket, a Server still removes.
	newer.Close()
	if _, err := os.Lstat(path); err == nil {
		t.Errorf("the socket file remains after its own Server closed")
	}
}
