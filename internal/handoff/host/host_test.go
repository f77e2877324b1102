package host

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/listen"
)

func TestSameTCP(t *testing.T) {
	tests := []struct {
		configured string
		got        string
		want       bool
	}{
		{"127.0.0.1:9001", "127.0.0.1:9001", true},
		{"127.0.0.1:9001", "127.0.0.1:9002", false},
		{"127.0.0.1:9001", "127.0.0.2:9001", false},
		{":9001", "0.0.0.0:9001", true},
		{"0.0.0.0:9001", "0.0.0.0:9001", true},
		{"[::]:9001", "[::]:9001", true},
		{"[::1]:9001", "[::1]:9001", true},
		{"localhost:9001", "127.0.0.1:9001", true},
	}
	for _, tt := range tests {
		if got := sameTCP(tt.configured, netip.MustParseAddrPort(tt.got)); got != tt.want {
			t.Errorf("sameTCP(%q, %s) = %v, want %v", tt.configured, tt.got, got, tt.want)
		}
	}
}

// reclaim from sact's own process: the same system calls that take a handed-off app's
// sockets back, on sockets this test made.
func TestReclaim(t *testing.T) {
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	path := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	addrs := []listen.Addr{{Network: "unix", Address: path}, {Network: "tcp", Address: tl.Addr().String()}}

	lns, err := Reclaim(os.Getpid(), addrs)
	if err != nil {
		t.Fatal(err)
	}
	for i, ln := range lns {
		if ln.Addr().String() != addrs[i].Address {
			t.Errorf("listener %d is %s, want %s", i, ln.Addr(), addrs[i].Address)
		}
		// The same socket: a client of the original is accepted by the copy.
		c, err := net.Dial(addrs[i].Network, addrs[i].Address)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		c.Close()
		ln.Close()
	}

	missing := append(addrs, listen.Addr{Network: "tcp", Address: "127.0.0.1:1"})
	if _, err := Reclaim(os.Getpid(), missing); err == nil {
		t.Errorf("reclaim found a socket nobody listens on")
	}
}

// An app whose handoff cannot be set up is broken, alone: its clients are refused at
// once, it is retried with backoff, and it serves again once the cause is gone.
func TestHandoffBrokenRetried(t *testing.T) {
	runDir := t.TempDir()
	// The handoff directories' parent is a file: nothing can be made under it.
	parent := filepath.Join(runDir, "handoff")
	if err := os.WriteFile(parent, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	app := &config.App{Name: "app", Handoff: true, Listen: []listen.Addr{{Network: "tcp", Address: ln.Addr().String()}}}
	var logs syncBuffer
	log := slog.New(slog.NewJSONHandler(&logs, nil))
	// A runtime that runs nothing: every app is stopped, and a start fails.
	rt := &fake.Runtime{StartErr: errors.New("not in this test")}
	act := activator.New(rt, activator.Policy{Spec: backend.Spec{Name: "app"}}, activator.Options{Logger: log})
	var refused atomic.Int64
	var brokenNow atomic.Bool
	h := New(app, []net.Listener{ln}, act, Options{Dir: filepath.Join(parent, "app"), Logger: log,
		Failed: func(app, reason string, n int) {
			if reason == "handoff_broken" {
				refused.Add(int64(n))
			}
		},
		SetBroken: func(_ string, b bool) { brokenNow.Store(b) },
	})

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go act.Run(ctx)
	done := make(chan bool, 1)
	go func() { done <- h.serve(ctx) }()

	for deadline := time.Now().Add(5 * time.Second); h.Broken() == "" && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	if !strings.Contains(h.Broken(), "create handoff directory") || !brokenNow.Load() {
		t.Fatalf("broken %q (metric %v), want why the directory cannot be made", h.Broken(), brokenNow.Load())
	}
	// A client is refused at once, not left in the backlog.
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("client of a broken app: read %v, want the connection closed at once", err)
	}
	c.Close()

	// The cause goes away: a retry (after 1s, then 2s) sets the server up.
	time.Sleep(1500 * time.Millisecond)
	os.Remove(parent)
	os.Mkdir(parent, 0o700)
	select {
	case ok := <-done:
		if !ok {
			t.Fatal("listen gave up")
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("not repaired 10s after the cause went away; log:\n%s", logs.String())
	}
	defer h.Close()
	if h.Broken() != "" || brokenNow.Load() {
		t.Errorf("still broken after the repair: %q (metric %v)", h.Broken(), brokenNow.Load())
	}
	if refused.Load() != 1 {
		t.Errorf("%d connections counted as refused, want 1", refused.Load())
	}
	out := logs.String()
	for _, want := range []string{`"retry_in":1000000000`, `"retry_in":2000000000`, `"msg":"app's handoff repaired; serving it again"`, `"app":"app"`} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %s:\n%s", want, out)
		}
	}
	if _, err := os.Stat(filepath.Join(parent, "app", backend.ShimSocket)); err != nil {
		t.Errorf("handoff socket after the repair: %v", err)
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestTakeBackKeepsBlockingMode: taking a running app's sockets back (reclaim, after a
// restart of sact) or moving one to another unit (a reload) leaves the socket's blocking
// mode as the app set it. The file status flags are the open file description's, shared
// by every duplicate: net.FileListener's O_NONBLOCK made an app that accepts in blocking
// mode get EAGAIN (issue 12).
func TestTakeBackKeepsBlockingMode(t *testing.T) {
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
			addr = ln.Addr().String()
			if ul, ok := ln.(*net.UnixListener); ok {
				ul.SetUnlinkOnClose(false)
			}
			// The app's descriptor, in blocking mode as the shim leaves it; sact's own is
			// gone, as after a restart.
			var app int
			rc, _ := ln.(syscall.Conn).SyscallConn()
			rc.Control(func(fd uintptr) { app, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) })
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(app)
			if err := unix.SetNonblock(app, false); err != nil {
				t.Fatal(err)
			}
			ln.Close()

			// appAccepts checks that the app's blocking accept(2) waits for a client
			// rather than failing with EAGAIN.
			appAccepts := func(when string) {
				t.Helper()
				if fl, _ := unix.FcntlInt(uintptr(app), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 {
					t.Errorf("%s: the app's socket is non-blocking", when)
				}
				got := make(chan error, 1)
				go func() {
					c, _, err := unix.Accept4(app, unix.SOCK_CLOEXEC)
					if err == nil {
						unix.Close(c)
					}
					got <- err
				}()
				time.Sleep(50 * time.Millisecond)
				c, err := net.Dial(network, addr)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				select {
				case err := <-got:
					if err != nil {
						t.Errorf("%s: the app's blocking accept: %v", when, err)
					}
				case <-time.After(5 * time.Second):
					t.Fatalf("%s: the app's accept got no client", when)
				}
			}

			lns, err := Reclaim(os.Getpid(), []listen.Addr{{Network: network, Address: addr}})
			if err != nil {
				t.Fatal(err)
			}
			appAccepts("after reclaim")
			moved, err := listen.Move(lns[0])
			if err != nil {
				t.Fatal(err)
			}
			if ul, ok := moved.(*net.UnixListener); ok {
				ul.SetUnlinkOnClose(false)
			}
			defer moved.Close()
			appAccepts("after a move")
		})
	}
}
