package upstream

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// server is a unix socket that answers every connection with its name and counts them.
type server struct {
	path     string
	accepted atomic.Int64
}

func serve(t *testing.T, path, name string) *server {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	s := &server{path: path}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s.accepted.Add(1)
			c.Write([]byte(name))
			c.Close()
		}
	}()
	return s
}

// read dials path and returns what the server said.
func read(path string, writable []string) (string, error) {
	var dirs *Dirs
	if writable != nil {
		dirs = NewDirs(writable)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialUnix(ctx, path, dirs)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

func mkdir(t *testing.T, path string, mode os.FileMode) {
	t.Helper()
	if err := os.Mkdir(path, mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode)
}

// hostileCases builds, in base, one upstream per way an app could aim sact elsewhere, each
// aiming at secret, and the one honest socket.
func layout(t *testing.T, base string) (honest string, secret *server, cases map[string]string) {
	t.Helper()
	secretDir := filepath.Join(base, "host")
	mkdir(t, secretDir, 0o755)
	secret = serve(t, filepath.Join(secretDir, "docker.sock"), "SECRET")
	app := filepath.Join(base, "app")
	mkdir(t, app, 0o777)
	serve(t, filepath.Join(app, "app.sock"), "APP")
	honest = filepath.Join(app, "app.sock")

	link := func(target, name string) string {
		p := filepath.Join(app, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cases = map[string]string{
		"final symlink":          link(secret.path, "link.sock"),
		"relative final symlink": link("../host/docker.sock", "rel.sock"),
		"symlinked intermediate": filepath.Join(link(secretDir, "sockets"), "docker.sock"),
		"symlink to parent (..)": filepath.Join(link("..", "up"), "host", "docker.sock"),
		"chain of links":         link(filepath.Join(app, "link.sock"), "chain.sock"),
		"dangling symlink":       link(filepath.Join(app, "nothing"), "dangling.sock"),
	}
	f := filepath.Join(app, "file.sock")
	os.WriteFile(f, []byte("x"), 0o644)
	cases["regular file"] = f
	d := filepath.Join(app, "dir.sock")
	mkdir(t, d, 0o755)
	cases["directory"] = d
	hard := filepath.Join(app, "hard.sock")
	if err := os.Link(secret.path, hard); err != nil {
		t.Fatal(err)
	}
	cases["hard link"] = hard
	fifo := filepath.Join(app, "fifo.sock")
	if err := unix.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	cases["fifo"] = fifo
	return honest, secret, cases
}

func TestDialUnixRefusesLinksAndNonSockets(t *testing.T) {
	for _, fallback := range []bool{false, true} {
		name := "openat2"
		if fallback {
			name = "without openat2"
		}
		t.Run(name, func(t *testing.T) {
			if fallback {
				old := openat2
				openat2 = func(int, string, *unix.OpenHow) (int, error) { return -1, unix.ENOSYS }
				t.Cleanup(func() { openat2 = old })
			}
			base := t.TempDir()
			honest, secret, cases := layout(t, base)
			app := filepath.Dir(honest)
			for _, writable := range [][]string{nil, {app}} {
				got, err := read(honest, writable)
				if err != nil || got != "APP" {
					t.Fatalf("honest socket, writable %v: %q, %v; want APP", writable, got, err)
				}
			}
			for name, path := range cases {
				t.Run(name, func(t *testing.T) {
					got, err := read(path, []string{app})
					var ue *UnsafePathError
					if !errors.As(err, &ue) {
						t.Fatalf("dial %s: %q, %v; want an *UnsafePathError", path, got, err)
					}
					if ue.Path != path || ue.At == "" || ue.Reason == "" {
						t.Errorf("error fields %+v: want Path %s and At, Reason set", ue, path)
					}
					t.Logf("%v", err)
				})
			}
			if n := secret.accepted.Load(); n != 0 {
				t.Errorf("the host socket was reached %d times", n)
			}
		})
	}
}

func TestDialUnixReasons(t *testing.T) {
	base := t.TempDir()
	_, _, cases := layout(t, base)
	want := map[string]string{
		"final symlink": ReasonSymlink, "symlinked intermediate": ReasonSymlink,
		"symlink to parent (..)": ReasonSymlink, "regular file": ReasonNotSocket,
		"directory": ReasonNotSocket, "fifo": ReasonNotSocket, "hard link": ReasonHardLink,
	}
	for name, reason := range want {
		_, err := read(cases[name], nil)
		var ue *UnsafePathError
		if !errors.As(err, &ue) || ue.Reason != reason {
			t.Errorf("%s: %v; want reason %q", name, err, reason)
		}
	}
	_, err := read(cases["symlinked intermediate"], nil)
	var ue *UnsafePathError
	if errors.As(err, &ue) && ue.At != filepath.Join(base, "app", "sockets") {
		t.Errorf("symlinked intermediate: At %s, want the linked directory", ue.At)
	}
	if _, err := read("relative/app.sock", nil); !errors.As(err, &ue) || ue.Reason != ReasonRelative {
		t.Errorf("relative path: %v, want reason %q", err, ReasonRelative)
	}
}

// A missing socket or one nobody accepts on is an ordinary dial error naming the path,
// not an unsafe one: the app is not up yet.
func TestDialUnixNotUp(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.sock")
	_, err := read(missing, nil)
	var ue *UnsafePathError
	var oe *net.OpError
	if err == nil || errors.As(err, &ue) || !errors.As(err, &oe) || !errors.Is(err, unix.ENOENT) {
		t.Errorf("missing socket: %v; want a *net.OpError with ENOENT", err)
	}
	dead := filepath.Join(dir, "dead.sock")
	ln, err := net.Listen("unix", dead)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	_, err = read(dead, nil)
	if !errors.Is(err, unix.ECONNREFUSED) || errors.As(err, &oe) && oe.Addr.String() != dead {
		t.Errorf("dead socket: %v; want connection refused on %s", err, dead)
	}
}

// ".." in what is resolved beneath the writable directory cannot leave it.
func TestOpenBeneathDotDot(t *testing.T) {
	base := t.TempDir()
	_, _, _ = layout(t, base)
	dirfd, err := unix.Open(filepath.Join(base, "app"), unix.O_PATH|unix.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dirfd)
	if fd, err := openBeneath(dirfd, "../host/docker.sock"); !errors.Is(err, unix.EXDEV) {
		unix.Close(fd)
		t.Errorf("openat2 ../host/docker.sock beneath app: %v, want EXDEV", err)
	}
	var ue *UnsafePathError
	if fd, err := walkBeneath(dirfd, "app", "../host/docker.sock"); !errors.As(err, &ue) || ue.Reason != ReasonEscapes {
		unix.Close(fd)
		t.Errorf("walk ../host/docker.sock beneath app: %v, want reason %q", err, ReasonEscapes)
	}
}

// The trusted prefix: outside /tmp (world-writable, so everything in it is beneath an
// untrusted directory), a chain of root-owned 0755 directories. Links there are the
// admin's and are followed; once a directory is a volume's source or owned by another
// user, they are not.
func TestDialUnixTrustedPrefix(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds root-owned directories in /run")
	}
	base, err := os.MkdirTemp("/run", "sact-upstream-test-")
	if err != nil {
		t.Skipf("cannot make a directory in /run: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	vol := filepath.Join(base, "vol")
	mkdir(t, vol, 0o755)
	real := filepath.Join(base, "real")
	mkdir(t, real, 0o755)
	serve(t, filepath.Join(real, "app.sock"), "REAL")
	os.Symlink(real, filepath.Join(vol, "sockets"))
	path := filepath.Join(vol, "sockets", "app.sock")

	if got, err := read(path, nil); err != nil || got != "REAL" {
		t.Errorf("link in a root-owned directory nobody else writes: %q, %v; want it followed", got, err)
	}
	var ue *UnsafePathError
	if _, err := read(path, []string{vol}); !errors.As(err, &ue) || ue.Reason != ReasonSymlink || ue.Dir != vol {
		t.Errorf("link in a volume's source: %v; want reason %q in %s", err, ReasonSymlink, vol)
	}
	if _, err := read(path, []string{filepath.Join(base, "alias")}); err != nil {
		t.Errorf("with an unrelated (missing) volume source: %v", err)
	}
	os.Symlink(vol, filepath.Join(base, "alias"))
	if _, err := read(path, []string{filepath.Join(base, "alias")}); !errors.As(err, &ue) {
		t.Errorf("volume source named through a link: %v; want it recognised", err)
	}
	os.Chown(vol, 1001, 1001)
	if _, err := read(path, nil); !errors.As(err, &ue) || ue.Reason != ReasonSymlink {
		t.Errorf("link in a directory owned by uid 1001: %v; want reason %q", err, ReasonSymlink)
	}
	os.Chown(vol, 0, 0)
	os.Chmod(vol, 0o775)
	os.Chown(vol, 0, 1001)
	if _, err := read(path, nil); !errors.As(err, &ue) {
		t.Errorf("link in a group-writable directory: %v; want refused", err)
	}
	os.Chmod(vol, 0o755)

	// The admin's /var/run -> /run is followed.
	if fi, err := os.Lstat("/var/run"); err == nil && fi.Mode()&os.ModeSymlink != 0 {
		if got, err := read(filepath.Join("/var", path), nil); err != nil || got != "REAL" {
			t.Errorf("through /var/run: %q, %v", got, err)
		}
	}
	// A volume under the engine's data root is writable whatever its mode.
	old := EngineRoots
	EngineRoots = []string{vol}
	defer func() { EngineRoots = old }()
	if _, err := read(path, nil); !errors.As(err, &ue) {
		t.Errorf("link under an engine root: %v; want refused", err)
	}
}

func TestDialTCP(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err == nil {
			c.Close()
		}
	}()
	c, err := Dial(context.Background(), "tcp", ln.Addr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
}

// BenchmarkDialUnix compares a dial through the checks with a plain one.
func BenchmarkDialUnix(b *testing.B) {
	dir := b.TempDir()
	path := filepath.Join(dir, "app.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	ctx := context.Background()
	var d net.Dialer
	dirs := NewDirs([]string{dir})
	for name, dial := range map[string]func() (net.Conn, error){
		"checked": func() (net.Conn, error) { return DialUnix(ctx, path, dirs) },
		"plain":   func() (net.Conn, error) { return d.DialContext(ctx, "unix", path) },
	} {
		b.Run(name, func(b *testing.B) {
			for b.Loop() {
				c, err := dial()
				for errors.Is(err, unix.EAGAIN) { // the backlog is full: let the accepter catch up
					time.Sleep(time.Millisecond)
					c, err = dial()
				}
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
		})
	}
}

func TestReadFile(t *testing.T) {
	base := t.TempDir()
	_, _, cases := layout(t, base)
	app := filepath.Join(base, "app")
	hostFile := filepath.Join(base, "host", "shadow")
	os.WriteFile(hostFile, []byte("HOST-SECRET"), 0o600)
	good := filepath.Join(app, "robots.txt")
	os.WriteFile(good, []byte("Disallow: /"), 0o644)
	if b, err := ReadFile(good, NewDirs([]string{app}), 100); err != nil || string(b) != "Disallow: /" {
		t.Fatalf("regular file: %q, %v", b, err)
	}
	if _, err := ReadFile(good, nil, 5); err == nil {
		t.Errorf("a file over max: no error")
	}
	if _, err := ReadFile(filepath.Join(app, "missing"), nil, 100); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v, want ErrNotExist", err)
	}
	os.Symlink(hostFile, filepath.Join(app, "link.txt"))
	os.Link(hostFile, filepath.Join(app, "hard.txt"))
	refused := map[string]string{
		"hard link":           filepath.Join(app, "hard.txt"),
		"link to a host file": filepath.Join(app, "link.txt"),
		"symlinked dir":       filepath.Join(app, "sockets", "shadow"),
		"fifo":                cases["fifo"],
		"directory":           cases["directory"],
		"socket":              filepath.Join(app, "app.sock"),
	}
	for name, path := range refused {
		done := make(chan struct{})
		go func() {
			defer close(done)
			b, err := ReadFile(path, NewDirs([]string{app}), 100)
			var ue *UnsafePathError
			if !errors.As(err, &ue) || !ue.File {
				t.Errorf("%s: %q, %v; want an *UnsafePathError", name, b, err)
			} else {
				t.Logf("%s: %v", name, err)
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("%s: ReadFile blocked", name)
		}
	}
}
