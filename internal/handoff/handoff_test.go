package handoff

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// logBuffer collects a Server's log lines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fixture is a host side: a TCP and a unix listener (named "http" and "admin") and a
// running Server handing them off.
type fixture struct {
	tcp   *net.TCPListener
	unix  *net.UnixListener
	srv   *Server
	sock  string
	peers chan Peer
	logs  *logBuffer
}

func newFixture(t *testing.T, opts Options) *fixture {
	t.Helper()
	dir := t.TempDir()
	tcp, err := net.ListenTCP("tcp", &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tcp.Close() })
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(dir, "app.sock"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ul.Close() })

	f := &fixture{tcp: tcp, unix: ul, peers: make(chan Peer, 10), logs: &logBuffer{}}
	f.sock = filepath.Join(dir, "handoff", "app", "handoff.sock")
	authorize := opts.Authorize
	opts.Authorize = func(p Peer) error {
		f.peers <- p
		if authorize != nil {
			return authorize(p)
		}
		return nil
	}
	opts.Logger = slog.New(slog.NewTextHandler(f.logs, nil))
	f.srv, err = NewServer(f.sock, []Socket{{Name: "http", Conn: tcp}, {Name: "admin", Conn: ul}}, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if _, err := os.Lstat(f.sock); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("handoff socket still there after Run: %v", err)
		}
	})
	return f
}

// readLine reads one line from c, waiting at most 20 seconds.
func readLine(t *testing.T, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		t.Errorf("read answer: %v (got %q)", err, line)
	}
	return strings.TrimSpace(line)
}

// runHandoff runs `shim -- bin serve` against f with extra env, a TCP client connected
// before the child starts and a unix client after, and checks both get answers.
func runHandoff(t *testing.T, f *fixture, bin string, env []string, attr *syscall.SysProcAttr) {
	t.Helper()
	early, err := net.Dial("tcp", f.tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()

	env = append(env, SocketEnv+"="+f.sock, "SACT_TEST_WANT_NAMES=http:admin", "SACT_TEST_WANT_FAMILIES=inet:unix",
		"NOTIFY_SOCKET=/run/systemd/notify", "LISTEN_PIDFDID=42", "LISTEN_FDS=7")
	cmd := helperCmd(t, bin, env, "shim", "--", bin, "serve")
	cmd.SysProcAttr = attr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	waited := false
	defer func() {
		if !waited {
			cmd.Process.Kill()
			cmd.Wait()
			t.Logf("child stderr:\n%s", stderr.String())
		}
	}()

	late, err := net.Dial("unix", f.unix.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	if got, want := readLine(t, early), fmt.Sprintf("http %d", pid); got != want {
		t.Errorf("TCP client connected before the app started got %q, want %q", got, want)
	}
	if got, want := readLine(t, late), fmt.Sprintf("admin %d", pid); got != want {
		t.Errorf("unix client got %q, want %q", got, want)
	}
	err = cmd.Wait()
	waited = true
	if err != nil {
		t.Fatalf("child: %v\n%s", err, stderr.String())
	}
	select {
	case p := <-f.peers:
		if p.PID != pid {
			t.Errorf("peer pid %d, want the child's %d", p.PID, pid)
		}
	default:
		t.Error("Authorize was not asked")
	}
	waitLog(t, f.logs, "sockets handed off")
}

// waitLog waits until the log holds want; the Server logs after the child has moved on.
func waitLog(t *testing.T, logs *logBuffer, want string) {
	t.Helper()
	for range 100 {
		if strings.Contains(logs.String(), want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("log has no %q:\n%s", want, logs.String())
}

func TestHandoff(t *testing.T) {
	for name, env := range map[string][]string{
		"clean": nil,
		// Go's poller started before Shim: its epoll fd sits at 3..66, so the shim
		// must re-execute itself rather than overwrite it.
		"poller started": {"SACT_TEST_DIRTY=1"},
	} {
		t.Run(name, func(t *testing.T) {
			f := newFixture(t, Options{})
			runHandoff(t, f, os.Args[0], env, nil)
		})
	}
}

func TestHandoffAsOtherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run the child as another user")
	}
	// The child runs as nobody, so it needs a copy of the test binary it may execute.
	binDir := t.TempDir()
	openUp(t, binDir)
	bin := filepath.Join(binDir, "handoff.test")
	copyFile(t, os.Args[0], bin, 0o755)

	f := newFixture(t, Options{User: "65534:65534"})
	fi, err := os.Stat(filepath.Dir(f.sock))
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if fi.Mode().Perm() != 0o711 || st.Uid != 0 {
		t.Errorf("handoff directory mode %v owner %d:%d, want 0711 root's: the container may not write in it", fi.Mode().Perm(), st.Uid, st.Gid)
	}
	// On the host the child reaches the socket by its full path; in a container the
	// bind mount hides the ancestors.
	openUp(t, filepath.Dir(filepath.Dir(f.sock)))
	runHandoff(t, f, bin, nil, &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}})
}

// openUp makes dir and its ancestors up to the filesystem root traversable by anyone.
func openUp(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != "/"; d = filepath.Dir(d) {
		fi, err := os.Stat(d)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm()&0o011 != 0o011 {
			if err := os.Chmod(d, fi.Mode().Perm()|0o011); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, mode); err != nil {
		t.Fatal(err)
	}
}

// runShim runs `shim args...` as a child with env and returns its exit code and stderr.
func runShim(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := helperCmd(t, os.Args[0], env, append([]string{"shim"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	return cmd.ProcessState.ExitCode(), stderr.String()
}

func TestShimErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	if err := os.WriteFile(plain, []byte("data"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A socket file nobody listens on, and one of the wrong type.
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: stale, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	stream := filepath.Join(dir, "stream.sock")
	sl, err := net.Listen("unix", stream)
	if err != nil {
		t.Fatal(err)
	}
	defer sl.Close()

	self := os.Args[0]
	for name, tc := range map[string]struct {
		env  []string
		args []string
		code int
		want string
	}{
		"no command":     {args: []string{"--"}, code: 125, want: "no command: use sact shim -- CMD"},
		"not found":      {args: []string{"--", "no-such-command"}, env: []string{"PATH=" + dir}, code: 127, want: "no-such-command: command not found in PATH=" + dir},
		"not found path": {args: []string{"--", dir + "/nope"}, code: 127, want: dir + "/nope"},
		"not executable": {args: []string{"--", plain}, code: 126, want: "not executable"},
		"in PATH, not executable": {
			args: []string{"--", "plain"}, env: []string{"PATH=" + dir}, code: 126, want: "plain: not executable",
		},
		"directory":      {args: []string{"--", dir}, code: 126, want: "is a directory"},
		"missing socket": {args: []string{"--", self}, env: []string{SocketEnv + "=" + dir + "/none.sock"}, code: 125, want: "no handoff socket at " + dir + "/none.sock: start the container through sact with `handoff: true`"},
		"stale socket":   {args: []string{"--", self}, env: []string{SocketEnv + "=" + stale}, code: 125, want: "nobody listens"},
		"stream socket":  {args: []string{"--", self}, env: []string{SocketEnv + "=" + stream}, code: 125, want: "is not a sact handoff socket (wrong socket type)"},
	} {
		t.Run(name, func(t *testing.T) {
			code, stderr := runShim(t, tc.env, tc.args...)
			if code != tc.code || !strings.Contains(stderr, tc.want) {
				t.Errorf("exit %d, stderr %q; want exit %d and %q", code, stderr, tc.code, tc.want)
			}
		})
	}
}

func TestShimExecFails(t *testing.T) {
	// The command exists and is executable, but its interpreter is missing: the
	// sockets arrive, the exec fails with ENOENT, and the message says why.
	script := filepath.Join(t.TempDir(), "script")
	if err := os.WriteFile(script, []byte("#!/no/such/interpreter\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	f := newFixture(t, Options{})
	code, stderr := runShim(t, []string{SocketEnv + "=" + f.sock}, "--", script)
	if code != 127 || !strings.Contains(stderr, "interpreter or loader is missing") {
		t.Errorf("exit %d, stderr %q; want 127 and a hint about the interpreter", code, stderr)
	}
}

func TestSecondPeer(t *testing.T) {
	f := newFixture(t, Options{})
	for i := range 2 {
		fds, names, err := receive(f.sock, 5*time.Second)
		if err != nil {
			t.Fatalf("peer %d: %v", i, err)
		}
		for _, fd := range fds {
			unix.Close(fd)
		}
		if len(fds) != 2 || strings.Join(names, ":") != "http:admin" {
			t.Errorf("peer %d got %d fds named %q", i, len(fds), names)
		}
	}
	for range 100 {
		if strings.Count(f.logs.String(), "sockets handed off") == 2 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Errorf("want two handoffs logged:\n%s", f.logs)
}

func TestRefused(t *testing.T) {
	t.Run("authorize", func(t *testing.T) {
		f := newFixture(t, Options{Authorize: func(p Peer) error {
			return fmt.Errorf("pid %d is not the container's first process", p.PID)
		}})
		_, _, err := receive(f.sock, 5*time.Second)
		want := fmt.Sprintf("sact refused the handoff: pid %d is not the container's first process", os.Getpid())
		if err == nil || err.Error() != want {
			t.Errorf("receive: %v, want %q", err, want)
		}
		waitLog(t, f.logs, "handoff peer refused")
	})
	t.Run("wrong uid", func(t *testing.T) {
		if os.Geteuid() != 0 {
			t.Skip("needs root to connect as another user")
		}
		f := newFixture(t, Options{User: "12345"})
		// Let anyone reach the socket so that only the credential check stands.
		openUp(t, filepath.Dir(f.sock))
		if err := os.Chmod(f.sock, 0o666); err != nil {
			t.Fatal(err)
		}
		bin := filepath.Join(t.TempDir(), "handoff.test")
		openUp(t, filepath.Dir(bin))
		copyFile(t, os.Args[0], bin, 0o755)
		cmd := helperCmd(t, bin, []string{SocketEnv + "=" + f.sock}, "receive")
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		want := "error: sact refused the handoff: the shim runs as uid 65534 but the app's `user:` says uid 12345"
		if !strings.HasPrefix(string(out), want) {
			t.Errorf("got %q, want %q...", out, want)
		}
	})
}

func TestProtocolMismatch(t *testing.T) {
	// The shim's side: a fake sact answers the hello with the given packet.
	fakeSact := func(t *testing.T, answer []byte) string {
		path := filepath.Join(t.TempDir(), "h.sock")
		ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		go func() {
			c, err := ln.AcceptUnix()
			if err != nil {
				return
			}
			defer c.Close()
			c.Read(make([]byte, 64))
			c.Write(answer)
			c.Read(make([]byte, 64))
		}()
		return path
	}
	newer := append([]byte(magic), 99, kindFiles, 0)
	for name, tc := range map[string]struct {
		answer []byte
		want   string
	}{
		"newer sact": {newer, "sact speaks handoff protocol version 99 but this shim speaks version 1: the container runs another sact binary than the daemon; recreate the container"},
		"not sact":   {[]byte("HTTP/1.1 400"), "is not a sact handoff socket (unexpected message)"},
		"error text": {append([]byte(magic), 99, kindError, 'n', 'o'), "no"},
		"bad name":   {encode(kindFiles, []byte{1, 3, 'a', ':', 'b'}), "has ':'"},
		"no fds":     {encode(kindFiles, encodeNames([]string{"http"})), "1 names but 0 fds arrived"},
	} {
		t.Run("shim/"+name, func(t *testing.T) {
			_, _, err := receive(fakeSact(t, tc.answer), 5*time.Second)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("receive: %v, want %q", err, tc.want)
			}
		})
	}

	// sact's side: an older or newer shim says hello in another version.
	t.Run("server/newer shim", func(t *testing.T) {
		f := newFixture(t, Options{})
		c, err := net.Dial("unixpacket", f.sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write(append([]byte(magic), 2, kindHello))
		buf := make([]byte, maxPacket)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		n, err := c.Read(buf)
		if err != nil {
			t.Fatal(err)
		}
		_, _, err = decode(buf[:n])
		want := "the shim in the container speaks handoff protocol version 2 but the sact daemon speaks version 1"
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("answer %v, want %q", err, want)
		}
		waitLog(t, f.logs, "handoff failed")
	})
	t.Run("server/no ack", func(t *testing.T) {
		f := newFixture(t, Options{})
		c, err := net.Dial("unixpacket", f.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(encode(kindHello, nil))
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, maxPacket)); err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitLog(t, f.logs, "wait for the shim's ack")
	})
}

func TestNewServerErrors(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	conn, err := net.Dial("tcp", tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	dir := t.TempDir()
	ok := filepath.Join(dir, "h", "handoff.sock")
	one := []Socket{{Name: "http", Conn: tcp.(*net.TCPListener)}}
	many := make([]Socket, MaxFiles+1)
	for i := range many {
		many[i] = one[0]
	}

	for name, tc := range map[string]struct {
		path    string
		sockets []Socket
		user    string
		want    string
	}{
		"relative path": {path: "h/handoff.sock", sockets: one, want: "must be absolute"},
		"long path":     {path: "/" + strings.Repeat("x", 120), sockets: one, want: "the kernel allows 107"},
		"no sockets":    {path: ok, want: "needs at least one listen address"},
		"too many":      {path: ok, sockets: many, want: "65 sockets to hand off, at most 64"},
		"colon":         {path: ok, sockets: []Socket{{Name: "a:b", Conn: one[0].Conn}}, want: "use printable ASCII without ':'"},
		"empty name":    {path: ok, sockets: []Socket{{Conn: one[0].Conn}}, want: "socket name is empty"},
		"no listener":   {path: ok, sockets: []Socket{{Name: "http"}}, want: `socket "http": no listener given`},
		"connection":    {path: ok, sockets: []Socket{{Name: "http", Conn: conn.(*net.TCPConn)}}, want: "not listening; hand off the listener, not a connection"},
		"user name":     {path: ok, sockets: one, user: "www-data", want: "needs the numeric uid"},
		"bad group":     {path: ok, sockets: one, user: "1:staff", want: "must be a numeric gid"},
	} {
		t.Run(name, func(t *testing.T) {
			s, err := NewServer(tc.path, tc.sockets, Options{User: tc.user})
			if err == nil {
				s.Close()
				t.Fatalf("NewServer succeeded, want %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %q, want %q", err, tc.want)
			}
		})
	}
}

func TestServerLifecycle(t *testing.T) {
	tcp, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tcp.Close()
	path := filepath.Join(t.TempDir(), "a", "b", "handoff.sock")
	// A stale socket from an earlier run is replaced.
	os.MkdirAll(filepath.Dir(path), 0o755)
	old, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	old.SetUnlinkOnClose(false)
	old.Close()

	s, err := NewServer(path, []Socket{{Name: "http", Conn: tcp.(*net.TCPListener)}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	for p, want := range map[string]os.FileMode{filepath.Dir(path): 0o711 | os.ModeDir, path: 0o600 | os.ModeSocket} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode() != want {
			t.Errorf("%s: mode %v (%v), want %v", p, fi.Mode(), err, want)
		}
	}
	// The caller may close its listener: the Server holds its own copy.
	tcp.Close()
	if _, _, err := receive(path, 200*time.Millisecond); err == nil {
		t.Error("receive succeeded before Run")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	if err := s.Run(context.Background()); err == nil {
		t.Error("Run after Close succeeded")
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "app")
	os.WriteFile(exe, []byte("#!/bin/true\n"), 0o755)
	os.WriteFile(filepath.Join(dir, "data"), nil, 0o644)
	os.Mkdir(filepath.Join(dir, "sub"), 0o755)
	other := t.TempDir()
	os.WriteFile(filepath.Join(other, "data"), []byte("#!/bin/true\n"), 0o755)

	for name, tc := range map[string]struct {
		file, path string
		want       string
		code       int
	}{
		"in PATH":             {file: "app", path: "/nonexistent:" + dir, want: dir + "/app"},
		"absolute":            {file: exe, path: "", want: exe},
		"first executable":    {file: "data", path: dir + ":" + other, want: other + "/data"},
		"directory skipped":   {file: "sub", path: dir, code: 126},
		"missing":             {file: "nope", path: dir, code: 127},
		"empty entry is cwd":  {file: "nope", path: ":" + dir, code: 127},
		"default PATH":        {file: "no-such-cmd-anywhere", path: "", code: 127},
		"slash, missing":      {file: dir + "/nope", code: 127},
		"slash, not runnable": {file: dir + "/data", code: 126},
	} {
		t.Run(name, func(t *testing.T) {
			got, err := lookPath(tc.file, tc.path)
			if ExitCode(err) != tc.code || got != tc.want {
				t.Errorf("lookPath(%q, %q) = %q, %v (code %d); want %q, code %d", tc.file, tc.path, got, err, ExitCode(err), tc.want, tc.code)
			}
		})
	}
}

func TestListenEnv(t *testing.T) {
	in := []string{"PATH=/bin", "LISTEN_FDS=9", "LISTEN_PID=1", "LISTEN_FDNAMES=x", "LISTEN_PIDFDID=5",
		"NOTIFY_SOCKET=/run/systemd/notify", "WATCHDOG_USEC=1", SocketEnv + "=/x", reexecEnv + "=1", "APP=1=2"}
	got := strings.Join(listenEnv(in, 2, []string{"http", "admin"}, 42), " ")
	want := "PATH=/bin APP=1=2 LISTEN_FDS=2 LISTEN_PID=42 LISTEN_FDNAMES=http:admin"
	if got != want {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

func TestRuntimeFD(t *testing.T) {
	// This test process runs Go's poller; if its epoll fd is in the sockets' range,
	// runtimeFD must see it.
	ents, _ := os.ReadDir("/proc/self/fd")
	sawEpoll := false
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		link, _ := os.Readlink("/proc/self/fd/" + e.Name())
		if link == "anon_inode:[eventpoll]" {
			sawEpoll = true
			if _, held := runtimeFD(fd); !held {
				t.Errorf("runtimeFD(%d) (%s) = false", fd, link)
			}
		}
	}
	if !sawEpoll {
		t.Error("no epoll fd in a process that uses the poller?")
	}
	f, err := os.Open("/proc/self/status") // a regular file: safe to overwrite
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, held := runtimeFD(int(f.Fd())); held {
		t.Errorf("runtimeFD(regular file) = true")
	}
	inherited, err := unix.Dup(int(f.Fd())) // no close-on-exec: not the runtime's
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(inherited)
	r, w, _ := os.Pipe()
	defer r.Close()
	defer w.Close()
	if _, held := runtimeFD(int(r.Fd())); !held {
		t.Errorf("runtimeFD(close-on-exec pipe) = false")
	}
	nd, _ := unix.Dup(int(r.Fd()))
	defer unix.Close(nd)
	if _, held := runtimeFD(nd); held {
		t.Errorf("runtimeFD(inherited pipe) = true")
	}
}
