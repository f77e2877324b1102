package listen

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// fakeNotify plays systemd's notify socket and returns what it receives.
func fakeNotify(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

type notice struct {
	state string
	fds   []int
}

func receive(t *testing.T, conn *net.UnixConn) notice {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf, oob := make([]byte, 4096), make([]byte, 4096)
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	if err != nil {
		t.Fatalf("nothing sent to the notify socket: %v", err)
	}
	var fds []int
	msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
	for _, m := range msgs {
		got, _ := unix.ParseUnixRights(&m)
		fds = append(fds, got...)
	}
	return notice{state: string(buf[:n]), fds: fds}
}

func TestStoreInSystemd(t *testing.T) {
	notify := fakeNotify(t)
	ln, err := Listen(context.Background(), Addr{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	n, err := StoreInSystemd()
	if err != nil || n < 1 {
		t.Fatalf("StoreInSystemd() = %d, %v", n, err)
	}
	want := "FDSTORE=1\nFDNAME=" + storedName(ln.Addr())
	found := false
	for range n {
		got := receive(t, notify)
		if len(got.fds) != 1 || !strings.HasPrefix(got.state, "FDSTORE=1\nFDNAME="+storedPrefix) {
			t.Errorf("stored %q with fds %v; want FDSTORE=1, a name, one fd", got.state, got.fds)
			continue
		}
		f := os.NewFile(uintptr(got.fds[0]), "stored")
		stored, err := net.FileListener(f)
		f.Close()
		if err != nil {
			t.Errorf("the stored fd is not a listener: %v", err)
			continue
		}
		if got.state == want && stored.Addr().String() == ln.Addr().String() {
			found = true
		}
		stored.Close()
	}
	if !found {
		t.Errorf("the listener %s was not stored as %q", ln.Addr(), want)
	}
	if strings.ContainsRune(storedName(ln.Addr())[len(storedPrefix):], ':') {
		t.Errorf("stored name %q has a ':', which systemd refuses", storedName(ln.Addr()))
	}

	// A stored socket a new sact does not claim is removed from the store.
	in := &Inherited{socks: []inheritedSock{{name: storedName(ln.Addr()), ln: mustListen(t)}}}
	if rest := in.Rest(); len(rest) != 0 {
		t.Errorf("Rest() = %v; want no warning for sact's own stored socket", rest)
	}
	if got := receive(t, notify); got.state != "FDSTOREREMOVE=1\nFDNAME="+storedName(ln.Addr()) || len(got.fds) != 0 {
		t.Errorf("unclaimed stored socket: sent %q with fds %v; want FDSTOREREMOVE=1 and its name", got.state, got.fds)
	}
}

func mustListen(t *testing.T) net.Listener {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

func TestStoreInSystemdWithoutSystemd(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if n, err := StoreInSystemd(); n != 0 || err != nil {
		t.Errorf("without NOTIFY_SOCKET: %d, %v; want nothing done", n, err)
	}
}
