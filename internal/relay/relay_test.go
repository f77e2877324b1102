package relay

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/proxy"
)

// echoServer answers every connection with what it reads, until the test ends.
func echoServer(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() { defer c.Close(); io.Copy(c, c) })
		}
	})
	return ln.Addr().String()
}

// serve runs rt's app "app" behind a relay on a unix socket, until the test ends, and
// returns the socket and the connections not served, by reason.
func serve(t *testing.T, rt backend.Runtime, opts activator.Options) (string, *failures) {
	t.Helper()
	act := activator.New(rt, activator.Policy{Spec: backend.Spec{Name: "app"}, Idle: time.Hour}, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { act.Run(ctx); close(done) }()
	sock := filepath.Join(t.TempDir(), "app.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &failures{}
	s := NewServer(ctx, Options{Failed: f.add})
	s.Accept(ln, act, "unix:"+sock)
	t.Cleanup(func() {
		ln.Close()
		s.WaitAccepting()
		cancel()
		s.WaitConns()
		<-done
	})
	return sock, f
}

type failures struct {
	mu sync.Mutex
	by map[string]int
}

func (f *failures) add(_, reason string, n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.by == nil {
		f.by = map[string]int{}
	}
	f.by[reason] += n
}

func (f *failures) String() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fmt.Sprint(f.by)
}

func echo(t *testing.T, sock, line string) {
	t.Helper()
	c, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	fmt.Fprintln(c, line)
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

// TestRelayStartsTheApp: the first connection starts the app and is relayed to it; the
// next one finds it running.
func TestRelayStartsTheApp(t *testing.T) {
	rt := &fake.Runtime{Addr: echoServer(t), StartTime: 50 * time.Millisecond}
	sock, failed := serve(t, rt, activator.Options{})
	echo(t, sock, "one")
	echo(t, sock, "two")
	if starts, _ := rt.Counts(); starts != 1 {
		t.Errorf("%d starts, want 1", starts)
	}
	if s := failed.String(); s != "map[]" {
		t.Errorf("connections not served: %s", s)
	}
}

// TestRelayRetriesADeadInstance: an instance that dies between its start and the relay's
// dial (the engine's word comes after) makes the connection go to a fresh start, not
// fail.
func TestRelayRetriesADeadInstance(t *testing.T) {
	healthy := echoServer(t)
	const dying = "127.0.0.1:1"
	var rt *fake.Runtime
	var starts atomic.Int32
	rt = &fake.Runtime{Upstream: func(backend.Spec) backend.Addr {
		if starts.Add(1) == 1 {
			return backend.Addr{Network: "tcp", Address: dying}
		}
		return backend.Addr{Network: "tcp", Address: healthy}
	}}
	// The first instance answers the readiness poll's connection, its last: then it is
	// gone and refuses, and the engine says so a moment later. A dialer stands in for it
	// because a real listener's backlog may take the relay's dial before it closes.
	var dials atomic.Int32
	var crashed sync.WaitGroup
	t.Cleanup(crashed.Wait)
	var d net.Dialer
	dial := func(ctx context.Context, network, address string) (net.Conn, error) {
		if address != dying {
			return d.DialContext(ctx, network, address)
		}
		if dials.Add(1) > 1 {
			return nil, &net.OpError{Op: "dial", Net: network, Err: syscall.ECONNREFUSED}
		}
		crashed.Go(func() {
			time.Sleep(100 * time.Millisecond)
			rt.Crash("app")
		})
		c, s := net.Pipe()
		s.Close()
		return c, nil
	}
	sock, failed := serve(t, rt, activator.Options{Dial: dial})
	echo(t, sock, "fresh")
	if n, _ := rt.Counts(); n != 2 {
		t.Errorf("%d starts, want 2", n)
	}
	if s := failed.String(); s != "map[]" {
		t.Errorf("connections not served: %s", s)
	}
}

// TestKernelRelayedConnHoldsNoAcceptStack: a connection the kernel relay took holds no
// goroutine of the accept path, whose stack grew deep (8 KiB) while it dialed; only the
// relay's own watcher, on a small one. Shutdown still waits for those relays, and each
// is counted when it ends.
func TestKernelRelayedConnHoldsNoAcceptStack(t *testing.T) {
	if err := proxy.KernelRelay(); err != nil {
		t.Skip(err)
	}
	rt := &fake.Runtime{Addr: echoServer(t)}
	act := activator.New(rt, activator.Policy{Spec: backend.Spec{Name: "app"}, Idle: time.Hour}, activator.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	actDone := make(chan struct{})
	go func() { act.Run(ctx); close(actDone) }()
	defer func() { cancel(); <-actDone }()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var kernel atomic.Int32
	relayed := func(_ string, st proxy.Stats) {
		if st.Path == proxy.PathKernel {
			kernel.Add(1)
		}
	}
	s := NewServer(ctx, Options{Relayed: relayed, Mode: proxy.ModeKernel})
	s.Accept(ln, act, "tcp:"+ln.Addr().String())
	defer func() { ln.Close(); s.WaitAccepting() }()

	const n = 50
	for range n {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.WriteString(c, "x"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, 1)); err != nil {
			t.Fatal(err)
		}
	}
	var inHandle, watching int
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		inHandle, watching = goroutinesIn("relay.(*Server).handle("), goroutinesIn("proxy.(*engine).run(")
		if inHandle == 0 && watching >= n {
			break
		}
	}
	if watching < n {
		t.Fatalf("%d of %d connections watched by the kernel relay", watching, n)
	}
	if inHandle != 0 {
		t.Errorf("%d goroutines of the accept path held for %d idle kernel-relayed connections, want 0", inHandle, n)
	}

	cancel()
	waited := make(chan struct{})
	go func() { s.WaitConns(); close(waited) }()
	select {
	case <-waited:
	case <-time.After(10 * time.Second):
		t.Fatal("shutdown did not end the kernel relays")
	}
	if got := kernel.Load(); got != n {
		t.Errorf("%d kernel relays counted when they ended, want %d", got, n)
	}
}

// goroutinesIn counts the goroutines with fn in their stacks.
func goroutinesIn(fn string) int {
	buf := make([]byte, 1<<20)
	for {
		m := runtime.Stack(buf, true)
		if m < len(buf) {
			buf = buf[:m]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	n := 0
	for g := range strings.SplitSeq(string(buf), "\n\n") {
		if strings.Contains(g, fn) {
			n++
		}
	}
	return n
}
