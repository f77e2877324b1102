package handoff

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// What a hostile container could leave in its handoff directory on an earlier sact (which
// gave the directory to the container's uid), and what a hostile container does to its
// handoff socket now (issue 11, cases 3 and 4).

// serveAt runs a Server for one TCP listener at path until the test ends.
func serveAt(t *testing.T, path string, opts Options) (*Server, *logBuffer) {
	t.Helper()
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	logs := &logBuffer{}
	opts.Logger = slog.New(slog.NewTextHandler(logs, nil))
	s, err := NewServer(path, []Socket{{Name: "http", Conn: tcp}}, opts)
	if err != nil {
		t.Fatalf("NewServer: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return s, logs
}

func ownerMode(t *testing.T, path string) (uid, gid uint32, mode os.FileMode) {
	t.Helper()
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return st.Uid, st.Gid, fi.Mode()
}

// The handoff directory is sact's own, 0711, whoever the container runs as; only the
// socket in it is the container's.
func TestHandoffDirOwnedBySact(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to hand the socket to another uid")
	}
	path := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
	serveAt(t, path, Options{User: "65534:65534"})
	if uid, _, mode := ownerMode(t, filepath.Dir(path)); uid != 0 || mode != os.ModeDir|0o711 {
		t.Errorf("handoff directory: owner %d, mode %v; want root's, drwx--x--x (the container must not write in it)", uid, mode)
	}
	if uid, gid, mode := ownerMode(t, path); uid != 65534 || gid != 65534 || mode != os.ModeSocket|0o600 {
		t.Errorf("handoff socket: owner %d:%d, mode %v; want 65534:65534, 0600", uid, gid, mode)
	}
}

// Whatever sits where the directory or the socket should be is removed (never followed)
// and logged, and the Server serves.
func TestHandoffClobberedPaths(t *testing.T) {
	type setup func(t *testing.T, dir, sock, outside string)
	symlinkTo := func(target string) func(t *testing.T, from string) {
		return func(t *testing.T, from string) {
			if err := os.Symlink(target, from); err != nil {
				t.Fatal(err)
			}
		}
	}
	mkdir := func(t *testing.T, dir string) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	for name, tc := range map[string]struct {
		setup setup
		what  string // logged as what was there
	}{
		"socket path is a directory": {func(t *testing.T, dir, sock, _ string) {
			mkdir(t, filepath.Join(sock, "sub"))
			os.WriteFile(filepath.Join(sock, "sub", "f"), []byte("x"), 0o600)
		}, "directory"},
		"socket path is a file": {func(t *testing.T, dir, sock, _ string) {
			mkdir(t, dir)
			os.WriteFile(sock, []byte("x"), 0o600)
		}, "regular file"},
		"socket path is a fifo": {func(t *testing.T, dir, sock, _ string) {
			mkdir(t, dir)
			if err := unix.Mkfifo(sock, 0o600); err != nil {
				t.Fatal(err)
			}
		}, "fifo"},
		"socket path is a symlink to a host file": {func(t *testing.T, dir, sock, outside string) {
			mkdir(t, dir)
			symlinkTo(filepath.Join(outside, "marker"))(t, sock)
		}, "symlink"},
		"socket path is a symlink to a host directory": {func(t *testing.T, dir, sock, outside string) {
			mkdir(t, dir)
			symlinkTo(outside)(t, sock)
		}, "symlink"},
		"directory is a symlink to a host directory": {func(t *testing.T, dir, sock, outside string) {
			mkdir(t, filepath.Dir(dir))
			symlinkTo(outside)(t, dir)
		}, "symlink"},
		"directory is a file": {func(t *testing.T, dir, sock, outside string) {
			mkdir(t, filepath.Dir(dir))
			os.WriteFile(dir, []byte("x"), 0o644)
		}, "regular file"},
		"directory has the wrong mode": {func(t *testing.T, dir, sock, outside string) {
			mkdir(t, dir)
			os.Chmod(dir, 0o777)
			os.WriteFile(filepath.Join(dir, "junk"), []byte("x"), 0o666)
		}, ""},
	} {
		t.Run(name, func(t *testing.T) {
			// A directory of the host's that the container must never reach through sact.
			outside := t.TempDir()
			marker := filepath.Join(outside, "marker")
			if err := os.WriteFile(marker, []byte("host data"), 0o644); err != nil {
				t.Fatal(err)
			}
			os.Chmod(outside, 0o755)
			sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
			dir := filepath.Dir(sock)
			tc.setup(t, dir, sock, outside)

			_, logs := serveAt(t, sock, Options{})

			if fi, err := os.Lstat(dir); err != nil || fi.Mode() != os.ModeDir|0o711 {
				t.Errorf("handoff directory after NewServer: %v, %v; want a directory, 0711", fi.Mode(), err)
			}
			if fi, err := os.Lstat(sock); err != nil || fi.Mode().Type() != os.ModeSocket {
				t.Errorf("handoff socket after NewServer: %v, %v; want a socket", fi.Mode(), err)
			}
			ents, _ := os.ReadDir(dir)
			if len(ents) != 1 {
				t.Errorf("handoff directory holds %d entries, want only the socket: %v", len(ents), ents)
			}
			fds, _, err := receive(sock, 5*time.Second)
			if err != nil {
				t.Fatalf("receive after the repair: %v", err)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
			// Nothing outside was followed: same files, same modes.
			if b, err := os.ReadFile(marker); err != nil || string(b) != "host data" {
				t.Errorf("host file behind the link: %q, %v", b, err)
			}
			if _, _, mode := ownerMode(t, marker); mode != 0o644 {
				t.Errorf("host file behind the link has mode %v now, want 0644", mode)
			}
			if _, _, mode := ownerMode(t, outside); mode != os.ModeDir|0o755 {
				t.Errorf("host directory behind the link has mode %v now, want 0755", mode)
			}
			if ents, _ := os.ReadDir(outside); len(ents) != 1 {
				t.Errorf("host directory behind the link holds %v, want only the marker", ents)
			}
			if tc.what != "" && !strings.Contains(logs.String(), "what="+tc.what) && !strings.Contains(logs.String(), fmt.Sprintf("what=%q", tc.what)) {
				t.Errorf("log does not say a %s was removed:\n%s", tc.what, logs)
			}
			if !strings.Contains(logs.String(), "path=") {
				t.Errorf("the repair logs no path:\n%s", logs)
			}
		})
	}
}

// A flood of peers costs a bounded number of goroutines, and a peer over the cap is
// closed at once rather than queued behind the slow ones.
func TestHandoffPeerCap(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
	_, logs := serveAt(t, sock, Options{})
	before := runtime.NumGoroutine()

	// Peers that connect and never say hello: each holds its slot until the deadline.
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range 200 {
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	time.Sleep(200 * time.Millisecond)
	grown := runtime.NumGoroutine() - before
	t.Logf("200 silent peers: %d more goroutines", grown)
	if grown > 20 {
		t.Errorf("200 silent peers cost the server %d goroutines, want a small bound", grown)
	}
	// The latest peer is closed at once: it reads EOF well before the peer deadline.
	last := conns[len(conns)-1]
	last.SetReadDeadline(time.Now().Add(time.Second))
	if _, err := last.Read(make([]byte, 64)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("peer over the cap: read %v, want it closed at once", err)
	}
	if n := strings.Count(logs.String(), "too many handoff peers"); n == 0 || n > 5 {
		t.Errorf("%d log lines for 196 peers over the cap, want a few (rate-limited):\n%s", n, logs)
	}
}

// The container's pid is looked up at most once per PidEvery, shared by every peer, and
// cached: 500 peers that are not the first process cost a few lookups, a legitimate
// peer costs none once the pid is known, and a pid the engine has not recorded yet is
// waited for within the peer's deadline.
func TestHandoffPidCache(t *testing.T) {
	// Without the cap (MaxPeers 1000) every peer reaches the pid check at once.
	for _, maxPeers := range []int{0, 1000} {
		t.Run(fmt.Sprintf("flood of other processes, max_peers %d", maxPeers), func(t *testing.T) { floodPids(t, maxPeers) })
	}
	t.Run("first process, cached", func(t *testing.T) {
		var calls atomic.Int32
		sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
		serveAt(t, sock, Options{Pid: func(context.Context) (int, error) {
			calls.Add(1)
			return os.Getpid(), nil
		}})
		for i := range 20 {
			fds, _, err := receive(sock, 5*time.Second)
			if err != nil {
				t.Fatalf("peer %d: %v", i, err)
			}
			for _, fd := range fds {
				unix.Close(fd)
			}
		}
		if calls.Load() != 1 {
			t.Errorf("%d pid lookups for 20 handoffs to the same process, want 1", calls.Load())
		}
	})
	t.Run("pid not recorded yet", func(t *testing.T) {
		var calls atomic.Int32
		sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
		serveAt(t, sock, Options{Pid: func(context.Context) (int, error) {
			if calls.Add(1) < 3 {
				return 0, nil // the engine has not recorded the process yet
			}
			return os.Getpid(), nil
		}})
		began := time.Now()
		fds, _, err := receive(sock, 5*time.Second)
		if err != nil {
			t.Fatalf("receive while the engine catches up: %v", err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		// Asked again soon (10ms, then 20ms): this wait is part of every cold start.
		if took := time.Since(began); calls.Load() != 3 || took < 30*time.Millisecond || took > 200*time.Millisecond {
			t.Errorf("%d lookups in %v, want 3, 10ms then 20ms apart", calls.Load(), took)
		}
	})
	t.Run("container not running", func(t *testing.T) {
		// Peers keep connecting while the engine reports no process (a host user with the
		// container's uid, say): the quick retries end, and then it is 4 lookups a second.
		var calls atomic.Int32
		sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
		serveAt(t, sock, Options{Pid: func(context.Context) (int, error) {
			calls.Add(1)
			return 0, nil
		}})
		began := time.Now()
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for time.Since(began) < 3*time.Second {
					if _, _, err := receive(sock, 5*time.Second); err == nil {
						t.Error("a peer got the sockets while the container does not run")
						return
					}
				}
			})
		}
		wg.Wait()
		took := time.Since(began)
		max := int32(6 + took/(250*time.Millisecond))
		t.Logf("%v of peers while the container does not run: %d lookups (bound %d)", took.Round(time.Millisecond), calls.Load(), max)
		if calls.Load() > max {
			t.Errorf("%d lookups in %v, want at most %d", calls.Load(), took, max)
		}
	})
}

// floodPids connects 500 peers at once, none of them the container's first process, and
// counts the pid lookups they cost.
func floodPids(t *testing.T, maxPeers int) {
	var calls atomic.Int32
	sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
	_, logs := serveAt(t, sock, Options{MaxPeers: maxPeers, Pid: func(context.Context) (int, error) {
		calls.Add(1)
		return 1, nil // never this test process
	}})
	began := time.Now()
	var wg sync.WaitGroup
	var refused, closed atomic.Int32
	for range 500 {
		wg.Go(func() {
			_, _, err := receive(sock, 10*time.Second)
			switch {
			case err == nil:
				t.Error("a peer that is not the first process got the sockets")
			case strings.Contains(err.Error(), "is not the container's first process"):
				refused.Add(1)
			default:
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	took := time.Since(began)
	max := int32(2 + took/(250*time.Millisecond))
	t.Logf("500 peers in %v: %d refused, %d closed over the cap, %d pid lookups (bound %d)", took.Round(time.Millisecond), refused.Load(), closed.Load(), calls.Load(), max)
	if calls.Load() > max {
		t.Errorf("%d pid lookups for 500 peers in %v, want at most %d (one per 250ms)", calls.Load(), took, max)
	}
	if refused.Load() == 0 {
		t.Errorf("no peer was told why it was refused")
	}
	if n := strings.Count(logs.String(), "level=WARN"); n > 20 {
		t.Errorf("%d warnings logged for one flood, want them rate-limited", n)
	}
}

// During a deploy the next incarnation's first process is let in beside the running
// one's (Options.Next): while its pid is not known yet its peer waits rather than being
// refused, once known it gets the sockets, marked shared (its shim keeps their mode),
// and once the deploy is over it is refused again like any other process.
func TestHandoffNextIncarnation(t *testing.T) {
	var deploying atomic.Bool
	var nextKnown atomic.Bool
	var nextCalls atomic.Int32
	sock := filepath.Join(t.TempDir(), "handoff", "app", "handoff.sock")
	srv, _ := serveAt(t, sock, Options{
		Pid: func(context.Context) (int, error) { return 1, nil }, // the running one: not us
		Next: func(context.Context) (int, bool, error) {
			nextCalls.Add(1)
			switch {
			case !deploying.Load():
				return 0, false, nil
			case !nextKnown.Load():
				return 0, true, nil // being started
			}
			return os.Getpid(), true, nil
		},
		PidEvery: 20 * time.Millisecond,
	})
	if _, _, err := receive(sock, 5*time.Second); err == nil {
		t.Fatal("another process than the first got the sockets with no deploy under way")
	}
	deploying.Store(true)
	time.AfterFunc(150*time.Millisecond, func() { nextKnown.Store(true) })
	fds, _, shared, err := receiveShared(sock, 5*time.Second)
	if err != nil {
		t.Fatalf("the next incarnation's first process, its pid known a moment after it connected: %v", err)
	}
	if !shared {
		t.Error("the next incarnation was not told that the sockets are in use (their mode is the running one's)")
	}
	for _, fd := range fds {
		unix.Close(fd)
	}
	deploying.Store(false)
	srv.Recheck()
	if _, _, err := receive(sock, 5*time.Second); err == nil {
		t.Error("the next incarnation's process still got the sockets after the deploy")
	}
}
