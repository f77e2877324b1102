package bpfwatch

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
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
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The tests run on the real kernel, as root: the programs are attached at the host's
// cgroup2 root for the length of each test.

func TestMain(m *testing.M) {
	switch os.Getenv("BPFWATCH_CHILD") {
	case "open":
		// Re-executed as another user: report what Open says.
		_, err := Open(Options{Dir: os.TempDir()})
		fmt.Println(err)
		os.Exit(0)
	case "spin":
		// Spin for 100 ms of CPU when told, then wait.
		bufio.NewReader(os.Stdin).ReadString('\n')
		var ru unix.Rusage
		for {
			unix.Getrusage(unix.RUSAGE_SELF, &ru)
			if time.Duration(ru.Utime.Nano()+ru.Stime.Nano()) > 100*time.Millisecond {
				break
			}
		}
		fmt.Println("done")
		time.Sleep(time.Hour) // until killed
	case "hold":
		// Open, print the programs' ids, and wait to be killed.
		w, err := Open(Options{Dir: os.TempDir()})
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		for _, p := range w.progs {
			info, err := p.Info()
			if err != nil {
				fmt.Println("error:", err)
				os.Exit(1)
			}
			id, _ := info.ID()
			fmt.Println(id)
		}
		fmt.Println("ready")
		time.Sleep(time.Hour) // until killed
	}
	os.Exit(m.Run())
}

func open(t testing.TB, opts Options) *Watcher {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if opts.Dir == "" {
		opts.Dir = t.TempDir()
	}
	w, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := w.Close(); err != nil {
			t.Error(err)
		}
	})
	return w
}

func watch(t testing.TB, w *Watcher, a net.Addr) *Handle {
	t.Helper()
	h, err := w.Watch(a)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { h.Close() })
	return h
}

func activity(t testing.TB, h *Handle) Activity {
	t.Helper()
	a, err := h.Activity()
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// eventually reads h until ok accepts it, or fails after 5 s: the kernel finishes a
// loopback close a moment after the call that started it returned.
func eventually(t testing.TB, h *Handle, what string, ok func(Activity) bool) Activity {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a := activity(t, h)
		if ok(a) {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %s, have %+v", what, a)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// serve accepts on ln until it is closed, handing each connection to handle.
func serve(t testing.TB, ln net.Listener, handle func(net.Conn)) {
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { handle(c) })
		}
	})
	t.Cleanup(func() { ln.Close(); wg.Wait() })
}

func listenTCP(t testing.TB, address string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", address)
	if err != nil {
		t.Skipf("cannot listen on %s: %v", address, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

const (
	request  = "GET / HTTP/1.1\r\n\r\n" // 18 bytes
	response = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
)

// roundTrip sends a request on c and reads the response.
func roundTrip(t testing.TB, c net.Conn) {
	t.Helper()
	if _, err := io.WriteString(c, request); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, len(response))
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	if string(buf) != response {
		t.Fatalf("response %q", buf)
	}
}

// answer reads one request and writes the response; it reports false on EOF.
func answer(c net.Conn) bool {
	buf := make([]byte, len(request))
	if _, err := io.ReadFull(c, buf); err != nil {
		return false
	}
	_, err := io.WriteString(c, response)
	return err == nil
}

// Short connections, each opened and closed between two reads of the counters: every
// one counts, and its bytes, whichever side closes first. sock_diag misses those the
// client closes first (no TIME_WAIT on the app's side).
func TestTCPShortConnections(t *testing.T) {
	const n = 50
	for _, tc := range []struct {
		name   string
		server func(net.Conn)
		client func(testing.TB, net.Conn)
	}{
		{
			"client closes first",
			func(c net.Conn) {
				defer c.Close()
				answer(c)
				io.Copy(io.Discard, c) // until the client's FIN
			},
			func(t testing.TB, c net.Conn) { roundTrip(t, c); c.Close() },
		},
		{
			"server closes first",
			func(c net.Conn) { answer(c); c.Close() },
			func(t testing.TB, c net.Conn) {
				roundTrip(t, c)
				io.Copy(io.Discard, c) // until the server's FIN
				c.Close()
			},
		},
		{
			"client resets",
			func(c net.Conn) {
				defer c.Close()
				answer(c)
				io.Copy(io.Discard, c)
			},
			func(t testing.TB, c net.Conn) {
				roundTrip(t, c)
				c.(*net.TCPConn).SetLinger(0)
				c.Close()
			},
		},
		{
			"no data",
			func(c net.Conn) { io.Copy(io.Discard, c); c.Close() },
			func(t testing.TB, c net.Conn) { c.Close() },
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := open(t, Options{})
			ln := listenTCP(t, "127.0.0.1:0")
			h := watch(t, w, ln.Addr())
			serve(t, ln, tc.server)
			start := time.Now()
			for range n {
				c, err := net.Dial("tcp", ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				tc.client(t, c)
			}
			a := eventually(t, h, fmt.Sprintf("%d connects and closes", n), func(a Activity) bool {
				return a.Connects == n && a.Closes == n
			})
			if tc.name != "no data" {
				// Payload, plus one for each FIN (it takes a sequence number).
				if min := uint64(n * len(request)); a.BytesIn < min {
					t.Errorf("BytesIn = %d, want at least %d", a.BytesIn, min)
				}
				if min := uint64(n * len(response)); a.BytesOut < min {
					t.Errorf("BytesOut = %d, want at least %d", a.BytesOut, min)
				}
			}
			if a.Last.Before(start) || a.Last.After(time.Now()) {
				t.Errorf("Last = %v, want between %v and now", a.Last, start)
			}
			if o := a.Open("tcp"); o != 0 {
				t.Errorf("Open = %d, want 0", o)
			}
		})
	}
}

// A kept-alive connection with a request every 200 ms: each request shows as bytes in
// and out and moves Last, and the connection counts as open until it closes.
func TestTCPKeepAlive(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, "127.0.0.1:0")
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) {
		defer c.Close()
		for answer(c) {
		}
	})
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	prev := eventually(t, h, "1 connect", func(a Activity) bool { return a.Connects == 1 })
	for i := range 10 {
		time.Sleep(200 * time.Millisecond)
		sent := time.Now()
		roundTrip(t, c)
		a := eventually(t, h, fmt.Sprintf("request %d's bytes", i), func(a Activity) bool {
			return a.BytesIn >= prev.BytesIn+uint64(len(request)) && a.BytesOut >= prev.BytesOut+uint64(len(response))
		})
		if a.Last.Before(sent) {
			t.Errorf("request %d: Last = %v, before the request (%v)", i, a.Last, sent)
		}
		if a.Open("tcp") != 1 {
			t.Errorf("request %d: Open = %d, want 1", i, a.Open("tcp"))
		}
		prev = a
	}
	// Quiet: nothing moves, however often it is read.
	time.Sleep(300 * time.Millisecond)
	if a := activity(t, h); a != prev {
		t.Errorf("a quiet connection changed the counters: %+v, then %+v", prev, a)
	}
	c.Close()
	eventually(t, h, "the close", func(a Activity) bool { return a.Closes == 1 && a.Open("tcp") == 0 })
}

// Bytes a client sends with no answer count as they arrive, not at the close.
func TestTCPUploadCountsAsItArrives(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, "127.0.0.1:0")
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	total := 0
	for i := range 5 {
		time.Sleep(100 * time.Millisecond)
		chunk := bytes.Repeat([]byte{'x'}, 1000*(i+1))
		c.Write(chunk)
		total += len(chunk)
		eventually(t, h, fmt.Sprintf("%d bytes in", total), func(a Activity) bool { return a.BytesIn == uint64(total) })
	}
}

// A server that writes without reading (a stream): bytes out count as they are
// acknowledged.
func TestTCPDownloadCountsAsItIsAcked(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, "127.0.0.1:0")
	h := watch(t, w, ln.Addr())
	next := make(chan int)
	serve(t, ln, func(c net.Conn) {
		defer c.Close()
		for n := range next {
			c.Write(bytes.Repeat([]byte{'y'}, n))
		}
	})
	t.Cleanup(func() { close(next) })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go io.Copy(io.Discard, c)
	total := 0
	for i := range 5 {
		n := 5000 * (i + 1)
		next <- n
		total += n
		eventually(t, h, fmt.Sprintf("%d bytes out", total), func(a Activity) bool { return a.BytesOut == uint64(total) })
	}
}

// Connections the app has not accepted yet count: the kernel accepted them.
func TestTCPBacklogCounts(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, "127.0.0.1:0")
	h := watch(t, w, ln.Addr())
	for range 3 {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	eventually(t, h, "3 connects", func(a Activity) bool { return a.Connects == 3 && a.Open("tcp") == 3 })
}

// Connections to other ports are not counted, and work as before.
func TestTCPOtherPortsNotCounted(t *testing.T) {
	w := open(t, Options{})
	watched := listenTCP(t, "127.0.0.1:0")
	other := listenTCP(t, "127.0.0.1:0")
	h := watch(t, w, watched.Addr())
	echo := func(c net.Conn) { defer c.Close(); io.Copy(c, c) }
	serve(t, watched, echo)
	serve(t, other, echo)
	for range 20 {
		c, err := net.Dial("tcp", other.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		msg := strings.Repeat("z", 3000)
		io.WriteString(c, msg)
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != msg {
			t.Fatalf("echo through an unwatched port: %d bytes, %v", len(got), err)
		}
	}
	// Outgoing connections from the watched port's address are not its connections
	// either: the dials above went from 127.0.0.1 too.
	time.Sleep(50 * time.Millisecond)
	if a := activity(t, h); a != (Activity{}) {
		t.Errorf("connections to another port were counted: %+v", a)
	}
}

// A listener on the unspecified address counts connections to any local address of
// its port, over IPv4 and IPv6.
func TestTCPWildcard(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, ":0")
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { io.Copy(io.Discard, c); c.Close() })
	port := ln.Addr().(*net.TCPAddr).Port
	want := uint64(0)
	for _, host := range []string{"127.0.0.1", "::1"} {
		c, err := net.Dial("tcp", net.JoinHostPort(host, strconv.Itoa(port)))
		if err != nil {
			t.Logf("no %s: %v", host, err)
			continue
		}
		c.Close()
		want++
	}
	eventually(t, h, fmt.Sprintf("%d connects", want), func(a Activity) bool { return a.Connects == want && a.Closes == want })
}

func TestTCPIPv6(t *testing.T) {
	w := open(t, Options{})
	ln := listenTCP(t, "[::1]:0")
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { answer(c); c.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()
	eventually(t, h, "1 connect and close", func(a Activity) bool { return a.Connects == 1 && a.Closes == 1 })
}

// After Handle.Close the slot goes to the next listener with fresh counters, and
// connections of the old one still open do not count for it.
func TestSlotReuse(t *testing.T) {
	w := open(t, Options{MaxListeners: 1})
	old := listenTCP(t, "127.0.0.1:0")
	h, err := w.Watch(old.Addr())
	if err != nil {
		t.Fatal(err)
	}
	serve(t, old, func(c net.Conn) {
		defer c.Close()
		for answer(c) {
		}
	})
	kept, err := net.Dial("tcp", old.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer kept.Close()
	eventually(t, h, "1 connect", func(a Activity) bool { return a.Connects == 1 })
	other := listenTCP(t, "127.0.0.1:0")
	if _, err := w.Watch(other.Addr()); err == nil || !strings.Contains(err.Error(), "the most it can") {
		t.Fatalf("watching past MaxListeners: %v", err)
	}
	h.Close()
	if _, err := h.Activity(); err == nil {
		t.Error("a closed handle still reads counters")
	}
	h2 := watch(t, w, other.Addr())
	roundTrip(t, kept)
	time.Sleep(50 * time.Millisecond)
	if a := activity(t, h2); a != (Activity{}) {
		t.Errorf("the old listener's connection counted for the new one: %+v", a)
	}
	// A second handle on the same address shares its counters, and keeps them when
	// the first is closed.
	h3 := watch(t, w, other.Addr())
	serve(t, other, func(c net.Conn) { c.Close() })
	c, err := net.Dial("tcp", other.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	eventually(t, h3, "1 connect", func(a Activity) bool { return a.Connects == 1 })
	h2.Close()
	if a := activity(t, h3); a.Connects != 1 {
		t.Errorf("after the first handle's Close, the second reads %+v", a)
	}
}

func listenUnix(t testing.TB, path string) net.Listener {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// connectRaw connects to path the way nginx and C programs do: the whole struct
// sockaddr_un as the length, the path NUL-terminated, with whatever follows.
func connectRaw(t testing.TB, path string, junk byte) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	var sa unix.RawSockaddrUnix
	sa.Family = unix.AF_UNIX
	for i := range sa.Path {
		sa.Path[i] = int8(junk)
	}
	for i := range len(path) {
		sa.Path[i] = int8(path[i])
	}
	sa.Path[len(path)] = 0
	_, _, e := unix.Syscall(unix.SYS_CONNECT, uintptr(fd), uintptr(unsafe.Pointer(&sa)), unsafe.Sizeof(sa))
	if e != 0 {
		t.Fatalf("connect %s: %v", path, e)
	}
}

// Every connect(2) to a watched unix path counts, whoever closes first, whether or not
// it is accepted yet; connects to other paths do not.
func TestUnixConnects(t *testing.T) {
	w := open(t, Options{})
	if err := w.UnixErr(); err != nil {
		t.Skip(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "app.sock")
	ln := listenUnix(t, path)
	other := listenUnix(t, filepath.Join(dir, "app.sock2"))
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { answer(c); c.Close() })
	serve(t, other, func(c net.Conn) { answer(c); c.Close() })
	start := time.Now()
	for i := range 10 {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c)
		if i%2 == 0 {
			io.Copy(io.Discard, c) // the server closes first
		}
		c.Close()
	}
	connectRaw(t, path, 0)
	connectRaw(t, path, 'q') // a junk tail after the NUL
	for range 5 {
		c, err := net.Dial("unix", other.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		roundTrip(t, c)
		c.Close()
	}
	a := activity(t, h)
	if a.Connects != 12 {
		t.Errorf("Connects = %d, want 12", a.Connects)
	}
	if a.Last.Before(start) || a.Open("unix") != -1 {
		t.Errorf("Last = %v (want after %v), Open = %d (want -1)", a.Last, start, a.Open("unix"))
	}
}

func TestUnixAbstract(t *testing.T) {
	w := open(t, Options{})
	if err := w.UnixErr(); err != nil {
		t.Skip(err)
	}
	name := fmt.Sprintf("@sact-bpfwatch-test-%d", os.Getpid())
	ln := listenUnix(t, name)
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { c.Close() })
	for range 3 {
		c, err := net.Dial("unix", name)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
	}
	// A longer name with the same start is another socket.
	ln2 := listenUnix(t, name+"x")
	serve(t, ln2, func(c net.Conn) { c.Close() })
	c, err := net.Dial("unix", name+"x")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if a := activity(t, h); a.Connects != 3 {
		t.Errorf("Connects = %d, want 3", a.Connects)
	}
}

// Without the rights BPF needs, Open says so and how to fix it.
func TestOpenRefusedWithoutRoot(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root, to run the child as another user")
	}
	// The test binary's directory is private: run a copy from one that is not.
	dir, err := os.MkdirTemp("", "bpfwatch-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	bin, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, "bpfwatch.test")
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^$")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "BPFWATCH_CHILD=open", "TMPDIR="+dir)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child: %v\n%s", err, out)
	}
	msg := strings.TrimSpace(string(out))
	t.Log(msg)
	if !strings.Contains(msg, "operation not permitted") || !strings.Contains(msg, "sact needs root") {
		t.Errorf("Open as an unprivileged user: %q, want it to say that it needs root", msg)
	}
}

func TestOpenRefusedIsReported(t *testing.T) {
	_, err := Open(Options{refuse: unix.EPERM})
	if !errors.Is(err, unix.EPERM) {
		t.Fatalf("Open = %v", err)
	}
}

// The programs go when sact dies, however: bpf_links, not pinned attachments.
func TestProgramsDieWithTheProcess(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BPFWATCH_CHILD=hold")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var ids []ebpf.ProgramID
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "ready" {
		id, err := strconv.Atoi(sc.Text())
		if err != nil {
			cmd.Process.Kill()
			cmd.Wait()
			t.Fatalf("child: %s", sc.Text())
		}
		ids = append(ids, ebpf.ProgramID(id))
	}
	if len(ids) == 0 {
		t.Fatal("the child loaded no program")
	}
	for _, id := range ids {
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			t.Fatalf("program %d of the live child: %v", id, err)
		}
		p.Close()
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range ids {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				break
			}
			p.Close()
			if time.Now().After(deadline) {
				t.Fatalf("program %d is still loaded after its process was killed", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

// Close detaches and frees everything and unmounts the hierarchy it mounted.
func TestCloseRemovesEverything(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	w, err := Open(Options{Dir: t.TempDir(), mount: true})
	if err != nil {
		t.Fatal(err)
	}
	mnt := w.mounted
	if mnt == "" || !mountedAt(t, mnt) {
		t.Fatalf("no cgroup2 mounted at %q", mnt)
	}
	var ids []ebpf.ProgramID
	for _, p := range w.progs {
		info, _ := p.Info()
		id, _ := info.ID()
		ids = append(ids, id)
	}
	ln := listenTCP(t, "127.0.0.1:0")
	if _, err := w.Watch(ln.Addr()); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if mountedAt(t, mnt) {
		t.Errorf("%s is still mounted", mnt)
	}
	if _, err := os.Stat(mnt); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s is still there: %v", mnt, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range ids {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if err != nil {
				break
			}
			p.Close()
			if time.Now().After(deadline) {
				t.Fatalf("program %d is still loaded after Close", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if _, err := w.Watch(ln.Addr()); err == nil {
		t.Error("Watch after Close succeeded")
	}
}

func mountedAt(t testing.TB, dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// The offsets the programs use are the kernel's.
func TestContextLayout(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skip(err)
	}
	want := map[string]int{
		"op": opsOp, "args": opsArgs, "family": opsFamily, "local_ip4": opsLocalIP4,
		"local_ip6": opsLocalIP6, "local_port": opsLocalPort, "is_fullsock": opsFullsock,
		"bytes_received": opsBytesRecv, "bytes_acked": opsBytesAcked, "sk": opsSk,
		"bpf_sock_ops_cb_flags": opsCbFlags,
	}
	if err := CheckLayout(spec, "bpf_sock_ops", want); err != nil {
		t.Error(err)
	}
}

// CgroupCPU follows the CPU time of a process's cgroup: a child put in a cgroup of its
// own spins for 100 ms, and the cgroup's time grows by about that, not by what the
// test process does meanwhile.
func TestCgroupCPU(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	b, _ := os.ReadFile("/proc/self/mountinfo")
	mnt, ok := findMount(b, "cgroup", "cpuacct")
	if !ok {
		t.Skip("no cgroup v1 cpuacct hierarchy to make a cgroup in")
	}
	dir, err := os.MkdirTemp(mnt, "sact-bpfwatch-test-")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "BPFWATCH_CHILD=spin")
	in, _ := cmd.StdinPipe()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
		for os.Remove(dir) != nil && !t.Failed() {
			time.Sleep(10 * time.Millisecond) // until the killed child has left it
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(cmd.Process.Pid)), 0); err != nil {
		t.Fatal(err)
	}
	cpu, err := CgroupCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(cpu.Path()) != dir {
		t.Fatalf("CgroupCPU reads %s, want the file in %s", cpu.Path(), dir)
	}
	before, err := cpu.Read()
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(in, "go\n")
	bufio.NewReader(out).ReadString('\n')
	after, err := cpu.Read()
	if err != nil {
		t.Fatal(err)
	}
	if d := after - before; d < 80*time.Millisecond || d > 2*time.Second {
		t.Errorf("the cgroup used %v while its process spun for 100 ms", d)
	}
	// A process in sact's own cgroup (a plain process app) has no CPU time of its own:
	// the cgroup's would be sact's, or the whole host's.
	if c, err := CgroupCPU(os.Getpid()); err == nil {
		t.Errorf("CgroupCPU of a process in the caller's cgroup reads %s", c.Path())
	}
}

func TestCheck(t *testing.T) {
	if err := Check(Options{refuse: unix.EPERM}); !errors.Is(err, unix.EPERM) {
		t.Errorf("Check with BPF refused = %v", err)
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	err := Check(Options{Dir: t.TempDir(), NoUnix: true})
	if !errors.Is(err, ErrUnixUnsupported) {
		t.Errorf("Check without unix = %v, want ErrUnixUnsupported", err)
	}
	if err := Check(Options{Dir: t.TempDir()}); err != nil && !errors.Is(err, ErrUnixUnsupported) {
		t.Errorf("Check as root = %v", err)
	}
}

// The callbacks another sock_ops program asked for on a watched connection are kept:
// the programs add theirs (bpf_sock_ops_cb_flags_set replaces the set).
func TestOtherProgramsCallbacksKept(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	ln := listenTCP(t, "127.0.0.1:0")
	port := ln.Addr().(*net.TCPAddr).Port
	seen, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer seen.Close()
	// Another program, attached first: asks for RTO callbacks on connections to port,
	// and records the flags it finds at their state changes.
	other, err := ebpf.NewProgram(&ebpf.ProgramSpec{Type: ebpf.SockOps, License: "GPL", Instructions: asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, opsLocalPort, asm.Word),
		asm.JNE.Imm(asm.R2, int32(port), "allow"),
		asm.LoadMem(asm.R2, asm.R6, opsOp, asm.Word),
		asm.JEq.Imm(asm.R2, opStateCB, "state"),
		asm.JNE.Imm(asm.R2, opPassiveEstablished, "allow"),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.Mov.Imm(asm.R2, 1), // BPF_SOCK_OPS_RTO_CB_FLAG
		asm.FnSockOpsCbFlagsSet.Call(),
		asm.Ja.Label("allow"),
		asm.LoadMem(asm.R7, asm.R6, opsCbFlags, asm.Word).WithSymbol("state"),
		asm.StoreImm(asm.RFP, -4, 0, asm.Word),
		asm.LoadMapPtr(asm.R1, seen.FD()),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -4),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.StoreMem(asm.R0, 0, asm.R7, asm.Word),
		asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"),
		asm.Return(),
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	root, _, err := cgroupRoot(t.TempDir(), false)
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: int(cg.Fd()), Program: other, Attach: ebpf.AttachCGroupSockOps})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	w := open(t, Options{})
	h := watch(t, w, ln.Addr())
	serve(t, ln, func(c net.Conn) { answer(c); c.Close() })
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	roundTrip(t, c)
	c.Close()
	eventually(t, h, "the close", func(a Activity) bool { return a.Closes == 1 })
	var flags uint32
	if err := seen.Lookup(uint32(0), &flags); err != nil {
		t.Fatal(err)
	}
	if flags&1 == 0 || flags&callbacks != callbacks {
		t.Errorf("callback flags %#x at a state change, want the other program's 0x1 and ours %#x", flags, callbacks)
	}
}
