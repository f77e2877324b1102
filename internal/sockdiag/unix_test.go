package sockdiag

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

func listenUnix(t testing.TB, network, path string) *net.UnixListener {
	t.Helper()
	ln, err := net.Listen(network, path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.UnixListener)
}

func TestUnixLifecycle(t *testing.T) {
	for name, tc := range map[string]struct{ network, path string }{
		"stream":    {"unix", filepath.Join(t.TempDir(), "app.sock")},
		"seqpacket": {"unixpacket", filepath.Join(t.TempDir(), "app.sock")},
		"abstract":  {"unix", "@sact-sockdiag-test-" + strconv.Itoa(os.Getpid())},
	} {
		t.Run(name, func(t *testing.T) {
			p := newProber(t)
			ln := listenUnix(t, tc.network, tc.path)
			addr := ln.Addr()

			if got := probe(t, p, addr); got != (Activity{Listening: true}) {
				t.Fatalf("no connection: have %+v, want only Listening", got)
			}

			c, err := net.Dial(tc.network, tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			eventually(t, p, addr, "one queued connection", counts(0, 1))

			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			got := eventually(t, p, addr, "one open connection", counts(1, 0))
			if got.ConnSet == 0 || got.Pending != 0 || !got.LastActivity.IsZero() {
				t.Errorf("fresh connection: have %+v, want a ConnSet and nothing else", got)
			}

			if _, err := c.Write(make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			eventually(t, p, addr, "100 bytes pending", func(a Activity) bool { return a.Open == 1 && a.Pending == 100 })
			if _, err := io.ReadFull(s, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write(make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			// Output the client has not read counts as the buffer memory holding it.
			eventually(t, p, addr, "output pending", func(a Activity) bool { return a.Open == 1 && a.Pending >= 100 })
			if _, err := io.ReadFull(c, make([]byte, 100)); err != nil {
				t.Fatal(err)
			}
			eventually(t, p, addr, "nothing pending", func(a Activity) bool { return a.Open == 1 && a.Pending == 0 })

			s.Close()
			eventually(t, p, addr, "no connection", func(a Activity) bool { return a == Activity{Listening: true} })
		})
	}
}

func TestUnixListenersApart(t *testing.T) {
	p := newProber(t)
	dir := t.TempDir()
	busy := listenUnix(t, "unix", filepath.Join(dir, "busy.sock"))
	quiet := listenUnix(t, "unix", filepath.Join(dir, "quiet.sock"))
	for range 3 {
		c, err := net.Dial("unix", busy.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	for range 2 {
		s, err := busy.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	// The same socket file by another path.
	alias := &net.UnixAddr{Net: "unix", Name: dir + "/./busy.sock"}
	got, err := p.Probe(context.Background(), quiet.Addr(), busy.Addr(), alias)
	if err != nil {
		t.Fatal(err)
	}
	if got[0] != (Activity{Listening: true}) || got[1].Open != 2 || got[1].Queued != 1 || got[2] != got[1] {
		t.Errorf("have %+v, want the second and third addresses busy, with 2 open and 1 queued", got)
	}
}

func TestUnixMany(t *testing.T) {
	p := newProber(t)
	ln := listenUnix(t, "unix", filepath.Join(t.TempDir(), "app.sock"))
	const accepted, queued = 500, 30
	for i := range accepted + queued {
		c, err := net.Dial("unix", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if i < accepted {
			s, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
		}
	}
	eventually(t, p, ln.Addr(), "500 open, 30 queued", counts(accepted, queued))
}

func TestUnixGone(t *testing.T) {
	p := newProber(t)
	dir := t.TempDir()
	ln := listenUnix(t, "unix", filepath.Join(dir, "app.sock"))
	c, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	eventually(t, p, ln.Addr(), "one open", counts(1, 0))

	// A plain file in its place: not a socket.
	path := filepath.Join(dir, "app.sock")
	os.Remove(path)
	if err := os.WriteFile(path, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := probe(t, p, ln.Addr()); got != (Activity{}) {
		t.Errorf("path replaced by a file: have %+v, want nothing", got)
	}
	// No file at all.
	missing := &net.UnixAddr{Net: "unix", Name: filepath.Join(dir, "missing.sock")}
	if got := probe(t, p, missing); got != (Activity{}) {
		t.Errorf("missing path: have %+v, want nothing", got)
	}
}
