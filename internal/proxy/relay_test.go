package proxy

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The tests run one after another (no t.Parallel): several compare the spliced counter,
// goroutines or fds before and after.

// topology is what the relay sits between: the client side's network and the
// upstream side's.
type topology struct{ client, upstream string }

func (tp topology) String() string { return tp.client + "-" + tp.upstream }

var sockets = []topology{{"tcp", "tcp"}, {"tcp", "unix"}, {"unix", "tcp"}, {"unix", "unix"}}

// withPipe adds net.Pipe on both sides, which takes the copying path.
var withPipe = append(sockets[:len(sockets):len(sockets)], topology{"pipe", "pipe"})

// connPair returns the two ends of a connection over network ("tcp", "unix" or "pipe"):
// a dialed, b accepted. Both are closed when the test ends.
func connPair(t testing.TB, network string) (a, b net.Conn) {
	t.Helper()
	if network == "pipe" {
		a, b = net.Pipe()
	} else {
		addr := "127.0.0.1:0"
		if network == "unix" {
			addr = filepath.Join(t.TempDir(), "s")
		}
		ln, err := net.Listen(network, addr)
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		a, err = net.Dial(network, ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		b, err = ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

type result struct {
	stats Stats
	err   error
}

// harness is a relay between a test client and a test server, over real sockets.
type harness struct {
	tp             topology
	mode           Mode
	client, server net.Conn // the test's ends
	done           chan result
	activity       atomic.Int64
}

func startRelay(t testing.TB, ctx context.Context, tp topology, opts Options) *harness {
	t.Helper()
	h := &harness{tp: tp, mode: testMode, done: make(chan result, 1)}
	if opts.Mode == "" {
		opts.Mode = testMode
	}
	h.mode = opts.Mode
	var rc, ru net.Conn
	h.client, rc = connPair(t, tp.client)
	ru, h.server = connPair(t, tp.upstream)
	if opts.Activity == nil {
		opts.Activity = func() { h.activity.Add(1) }
	}
	attached := kernelAttached.Load()
	go func() {
		s, err := Relay(ctx, rc, ru, opts)
		h.done <- result{s, err}
	}()
	if ctx.Err() == nil && h.wantPath() == PathKernel {
		// The kernel relay takes only established connections: a test that half-closes
		// at once waits for it to have them, or the connection is spliced.
		for deadline := time.Now().Add(10 * time.Second); kernelAttached.Load() == attached; time.Sleep(100 * time.Microsecond) {
			if time.Now().After(deadline) {
				t.Fatal("the kernel relay did not take the connection in 10s")
			}
		}
	}
	return h
}

// wait returns the relay's result, failing the test if it takes longer than 10s.
func (h *harness) wait(t testing.TB) result {
	t.Helper()
	select {
	case r := <-h.done:
		if want := h.wantPath(); r.stats.Path != want {
			why := ""
			if e := lastAttachErr.Load(); e != nil {
				why = (*e).Error()
			}
			t.Errorf("relay took the %s path, want %s (last refusal: %s)", r.stats.Path, want, why)
		}
		r.stats.Path = ""
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("relay did not return")
		return result{}
	}
}

// wantPath is the path the harness's relay should take: the kernel's for TCP to TCP when
// asked for (and loaded), splice otherwise.
func (h *harness) wantPath() string {
	if h.mode != ModeSplice && h.tp == (topology{"tcp", "tcp"}) && KernelRelay() == nil {
		return PathKernel
	}
	return PathSplice
}

// moved is the Stats of a relay that moved c2u and u2c bytes.
func moved(c2u, u2c int64) Stats { return Stats{ClientToUpstream: c2u, UpstreamToClient: u2c} }

// testMode is the mode startRelay asks for; forModes runs a test under each.
var testMode = ModeSplice

// forModes runs test once with the splice relay and once asking for the kernel's.
func forModes(t *testing.T, test func(t *testing.T)) {
	for _, m := range []Mode{ModeSplice, ModeKernel} {
		t.Run(string(m), func(t *testing.T) {
			if m == ModeKernel {
				if err := KernelRelay(); err != nil {
					t.Skipf("no kernel relay here: %v", err)
				}
			}
			testMode = m
			every := activityEvery.Swap(int64(10 * time.Millisecond))
			defer func() { testMode = ModeSplice; activityEvery.Store(every) }()
			test(t)
		})
	}
}

func closeWrite(t testing.TB, c net.Conn) {
	t.Helper()
	if err := c.(interface{ CloseWrite() error }).CloseWrite(); err != nil {
		t.Fatal(err)
	}
}

// readAll reads c to EOF with a deadline.
func readAll(t testing.TB, c net.Conn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		t.Fatalf("read to EOF: %v", err)
	}
	return string(b)
}

func write(t testing.TB, c net.Conn, s string) {
	t.Helper()
	if _, err := io.WriteString(c, s); err != nil {
		t.Fatal(err)
	}
}

func readN(t testing.TB, c net.Conn, n int) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return string(b)
}

// send writes n pseudo-random bytes from seed to w and returns their hash.
func send(w io.Writer, seed uint64, n int64) ([32]byte, error) {
	rng := rand.NewChaCha8([32]byte{byte(seed)})
	h := sha256.New()
	_, err := io.CopyN(io.MultiWriter(w, h), rng, n)
	return [32]byte(h.Sum(nil)), err
}

// recv reads exactly n bytes from r and returns their hash.
func recv(r io.Reader, n int64) ([32]byte, error) {
	h := sha256.New()
	_, err := io.CopyN(h, r, n)
	return [32]byte(h.Sum(nil)), err
}

// transfer moves n bytes each way at once between the harness's client and server and
// checks that they arrive intact, then passes EOF both ways (on sockets) or closes the
// client (on net.Pipe, which cannot half-close).
func transfer(t *testing.T, h *harness, n int64, halfClose bool) {
	t.Helper()
	type end struct {
		sent, got [32]byte
		err       error
	}
	run := func(c net.Conn, seed uint64, out chan<- end) {
		var e end
		sent := make(chan error, 1)
		go func() {
			var err error
			e.sent, err = send(c, seed, n)
			if err == nil && halfClose {
				err = c.(interface{ CloseWrite() error }).CloseWrite()
			}
			sent <- err
		}()
		e.got, e.err = recv(c, n)
		if e.err == nil && halfClose {
			if m, err := c.Read(make([]byte, 1)); m != 0 || err != io.EOF {
				e.err = fmt.Errorf("after %d bytes: read %d, %v; want EOF", n, m, err)
			}
		}
		if err := <-sent; e.err == nil {
			e.err = err
		}
		out <- e
	}
	fromClient, fromServer := make(chan end, 1), make(chan end, 1)
	h.client.SetDeadline(time.Now().Add(60 * time.Second))
	h.server.SetDeadline(time.Now().Add(60 * time.Second))
	go run(h.client, 1, fromClient)
	go run(h.server, 2, fromServer)
	c, s := <-fromClient, <-fromServer
	if c.err != nil || s.err != nil {
		t.Fatalf("client: %v; server: %v", c.err, s.err)
	}
	if c.sent != s.got {
		t.Error("bytes from the client arrived changed")
	}
	if s.sent != c.got {
		t.Error("bytes from the server arrived changed")
	}
	if !halfClose {
		h.client.Close()
	}
}

func TestRelayBulkBothWays(t *testing.T) {
	forModes(t, func(t *testing.T) {
		n := int64(64 << 20)
		if testing.Short() {
			n = 4 << 20
		}
		for _, tp := range withPipe {
			t.Run(tp.String(), func(t *testing.T) {
				before, kbefore, cbefore := spliced.Load(), kernelMoved.Load(), kernelCopied.Load()
				h := startRelay(t, t.Context(), tp, Options{})
				kernel := h.wantPath() == PathKernel
				transfer(t, h, n, tp.client != "pipe")
				r := h.wait(t)
				if r.err != nil {
					t.Errorf("Relay: %v", r.err)
				}
				if want := (moved(n, n)); r.stats != want {
					t.Errorf("stats %+v, want %+v", r.stats, want)
				}
				wantSpliced, wantKernel := 2*n, int64(0)
				if tp.client == "pipe" {
					wantSpliced = 0
				}
				if kernel {
					wantSpliced, wantKernel = 0, 2*n
				}
				sp, km, kc := spliced.Load()-before, kernelMoved.Load()-kbefore, kernelCopied.Load()-cbefore
				if kernel {
					// A reader slower than the kernel (the test's, under the race
					// detector) can take a direction past its credit: then sact copies
					// the rest of that direction.
					if km == 0 || sp != 0 || km+kc != wantKernel {
						t.Errorf("%d bytes moved by the kernel relay, %d copied by it and %d spliced, want %d in all, most by the kernel", km, kc, sp, wantKernel)
					}
				} else if sp != wantSpliced || km != 0 {
					t.Errorf("%d bytes spliced and %d moved by the kernel relay, want %d spliced", sp, km, wantSpliced)
				}
				// The kernel relay learns of bytes when it reads its counters (every
				// activityEvery, and at the end); the splice relay at every pipe's worth.
				if calls := h.activity.Load(); !kernel && calls < 2*n/pipeSize || calls < 1 {
					t.Errorf("Activity called %d times for %d bytes each way", calls, n)
				}
			})
		}
	})
}

// TestRelaySplicesUnixToUnix is the case Go's io.Copy never splices (nginx -> sact -> a
// unix socket in the app's container).
func TestRelaySplicesUnixToUnix(t *testing.T) {
	var calls atomic.Int64
	spliceCall = func(rfd int, roff *int64, wfd int, woff *int64, len int, flags int) (int64, error) {
		calls.Add(1)
		return unix.Splice(rfd, roff, wfd, woff, len, flags)
	}
	t.Cleanup(func() { spliceCall = unix.Splice })
	before := spliced.Load()
	h := startRelay(t, t.Context(), topology{"unix", "unix"}, Options{})
	transfer(t, h, 1<<20, true)
	if r := h.wait(t); r.err != nil || r.stats != (moved(1<<20, 1<<20)) {
		t.Fatalf("Relay: %+v, %v", r.stats, r.err)
	}
	if got := spliced.Load() - before; got != 2<<20 {
		t.Errorf("%d bytes spliced, want %d", got, 2<<20)
	}
	if calls.Load() < 2*(1<<20)/pipeSize {
		t.Errorf("splice(2) called %d times", calls.Load())
	}
}

func TestRelayHalfClose(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range sockets {
			t.Run(tp.String(), func(t *testing.T) {
				h := startRelay(t, t.Context(), tp, Options{})
				write(t, h.client, "question")
				closeWrite(t, h.client)
				if got := readAll(t, h.server); got != "question" {
					t.Fatalf("server read %q", got)
				}
				// The server's side still carries the answer after the client's EOF.
				write(t, h.server, "answer")
				time.Sleep(10 * time.Millisecond)
				write(t, h.server, ", at length")
				closeWrite(t, h.server)
				if got := readAll(t, h.client); got != "answer, at length" {
					t.Fatalf("client read %q", got)
				}
				r := h.wait(t)
				if r.err != nil || r.stats != (moved(8, 17)) {
					t.Errorf("Relay: %+v, %v", r.stats, r.err)
				}
			})
		}
	})
}

func TestRelayServerClosesFirst(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range withPipe {
			t.Run(tp.String(), func(t *testing.T) {
				h := startRelay(t, t.Context(), tp, Options{})
				write(t, h.client, "hi")
				if got := readN(t, h.server, 2); got != "hi" {
					t.Fatalf("server read %q", got)
				}
				write(t, h.server, "bye")
				h.server.Close()
				if got := readAll(t, h.client); got != "bye" {
					t.Fatalf("client read %q", got)
				}
				h.client.Close()
				r := h.wait(t)
				if r.err != nil || r.stats != (moved(2, 3)) {
					t.Errorf("Relay: %+v, %v", r.stats, r.err)
				}
			})
		}
	})
}

func TestRelayCancelClosesBoth(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range withPipe {
			t.Run(tp.String(), func(t *testing.T) {
				ctx, cancel := context.WithCancelCause(t.Context())
				h := startRelay(t, ctx, tp, Options{})
				// A silent connection, and one blocked writing to a client that does not
				// read: both end.
				write(t, h.client, "x")
				readN(t, h.server, 1)
				go send(h.server, 3, 16<<20)
				time.Sleep(20 * time.Millisecond)

				stopped := errors.New("app stopped")
				cancel(stopped)
				r := h.wait(t)
				if !errors.Is(r.err, stopped) {
					t.Errorf("Relay returned %v, want the context's cause", r.err)
				}
				h.server.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadAll(h.server); err != nil && !isClosedByPeer(err) {
					t.Errorf("server: %v, want EOF", err)
				}
				h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadAll(h.client); err != nil && !isClosedByPeer(err) {
					t.Errorf("client: %v, want EOF", err)
				}
			})
		}
	})
}

// isClosedByPeer reports whether err is how a conn's peer closing shows.
func isClosedByPeer(err error) bool {
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrClosedPipe)
}

func TestRelayCancelledBeforeStart(t *testing.T) {
	forModes(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		h := startRelay(t, ctx, topology{"unix", "tcp"}, Options{})
		if r := h.wait(t); !errors.Is(r.err, context.Canceled) {
			t.Errorf("Relay returned %v", r.err)
		}
		if got := readAll(t, h.server); got != "" {
			t.Errorf("server read %q", got)
		}
	})
}

func TestRelayPeerReset(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range sockets {
			t.Run(tp.String(), func(t *testing.T) {
				h := startRelay(t, t.Context(), tp, Options{})
				write(t, h.client, "unread")
				waitFor(t, func() bool { return h.activity.Load() > 0 })
				time.Sleep(10 * time.Millisecond)
				// Closing with unread input resets the connection: an RST on TCP,
				// ECONNRESET on the peer of a unix socket.
				h.server.Close()
				r := h.wait(t)
				if !errors.Is(r.err, syscall.ECONNRESET) {
					t.Errorf("Relay returned %v, want ECONNRESET", r.err)
				}
				if r.stats.ClientToUpstream != 6 {
					t.Errorf("stats %+v", r.stats)
				}
				h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
				if _, err := io.ReadAll(h.client); err != nil && !isClosedByPeer(err) {
					t.Errorf("client: %v, want EOF", err)
				}
			})
		}
	})
}

func TestRelayFallsBackWhenSpliceUnsupported(t *testing.T) {
	for _, after := range []int{0, 3} {
		t.Run(fmt.Sprintf("after %d reads", after), func(t *testing.T) {
			var reads atomic.Int64
			spliceCall = func(rfd int, roff *int64, wfd int, woff *int64, len int, flags int) (int64, error) {
				if !isPipe(rfd) && reads.Add(1) > int64(after) {
					return -1, unix.EINVAL
				}
				return unix.Splice(rfd, roff, wfd, woff, len, flags)
			}
			t.Cleanup(func() { spliceCall = unix.Splice })
			before := spliced.Load()
			h := startRelay(t, t.Context(), topology{"unix", "unix"}, Options{})
			transfer(t, h, 4<<20, true)
			if r := h.wait(t); r.err != nil || r.stats != (moved(4<<20, 4<<20)) {
				t.Fatalf("Relay: %+v, %v", r.stats, r.err)
			}
			if got := spliced.Load() - before; after == 0 && got != 0 || after > 0 && got == 0 {
				t.Errorf("%d bytes spliced", got)
			}
		})
	}
}

func TestRelayFallsBackWithoutPipes(t *testing.T) {
	pipe2Call = func([]int, int) error { return unix.EMFILE }
	t.Cleanup(func() { pipe2Call = unix.Pipe2 })
	// Empty the pool so that a pipe has to be made.
	runtime.GC()
	runtime.GC()
	h := startRelay(t, t.Context(), topology{"tcp", "unix"}, Options{})
	transfer(t, h, 1<<20, true)
	if r := h.wait(t); r.err != nil || r.stats != (moved(1<<20, 1<<20)) {
		t.Fatalf("Relay: %+v, %v", r.stats, r.err)
	}
}

func TestPipeWithDataIsNotReused(t *testing.T) {
	p := getPipe()
	if p == nil {
		t.Fatal("no pipe")
	}
	if _, err := unix.Write(p.w, []byte("left over")); err != nil {
		t.Fatal(err)
	}
	p.held = 9
	r := p.r
	putPipe(p)
	if _, err := unix.FcntlInt(uintptr(r), unix.F_GETFD, 0); err != unix.EBADF {
		t.Errorf("pipe with data still open after putPipe: %v", err)
	}
}

func isPipe(fd int) bool {
	var st unix.Stat_t
	return unix.Fstat(fd, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFIFO
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
	}
}

// TestRelayLeaksNothing runs relays that end every way there is and checks that the
// goroutines and fds they used are all gone afterwards, pooled pipes included once the
// pool drops them.
func TestRelayLeaksNothing(t *testing.T) {
	forModes(t, func(t *testing.T) {
		fdsBefore, goBefore := countFDs(t), runtime.NumGoroutine()
		for i := range 50 {
			for _, tp := range withPipe {
				t.Run(fmt.Sprintf("%d/%v", i, tp), func(t *testing.T) {
					ctx, cancel := context.WithCancel(t.Context())
					defer cancel()
					h := startRelay(t, ctx, tp, Options{IdleTimeout: time.Hour})
					write(t, h.client, "ping")
					readN(t, h.server, 4)
					switch {
					case i%3 == 0:
						cancel()
					case i%3 == 1 && tp.client != "pipe":
						h.server.Close()
						write(t, h.client, "pong") // to a closed socket: a reset
						h.client.SetReadDeadline(time.Now().Add(10 * time.Second))
						io.ReadAll(h.client)
						h.client.Close()
					default:
						write(t, h.server, "pong")
						readN(t, h.client, 4)
						h.client.Close()
						// The relay passes the client's EOF on as a half-close and waits
						// for the server to finish its side, as a server does.
						h.server.Close()
					}
					h.wait(t)
				})
			}
		}
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(time.Millisecond) {
			runtime.GC() // the pool drops its pipes after two
			// Pipes kept in the pool (at most idlePipes, TestIdlePipesAreBounded) are not
			// a leak: a test run alone starts with the pool empty.
			if runtime.NumGoroutine() <= goBefore && countFDs(t) <= fdsBefore+2*len(pipes) {
				break
			}
			if time.Now().After(deadline) {
				buf := make([]byte, 1<<20)
				ents, _ := os.ReadDir("/proc/self/fd")
				var fds []string
				for _, e := range ents {
					l, _ := os.Readlink("/proc/self/fd/" + e.Name())
					fds = append(fds, e.Name()+"="+l)
				}
				t.Fatalf("%d goroutines (%d before), %d fds (%d before): %v\n%s", runtime.NumGoroutine(), goBefore, countFDs(t), fdsBefore, fds, buf[:runtime.Stack(buf, true)])
			}
		}
	})
}

func countFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestIdleRelayHoldsNoPipe: an idle relayed connection must cost its two sockets and no
// pipe, or 10,000 idle connections would need 60,000 fds instead of 20,000.
func TestIdleRelayHoldsNoPipe(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range sockets {
			t.Run(tp.String(), func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				before := countPipes()
				const n = 20
				hs := make([]*harness, n)
				for i := range hs {
					hs[i] = startRelay(t, ctx, tp, Options{IdleTimeout: time.Hour})
					// Bytes both ways first: each direction has used a pipe and gone idle.
					write(t, hs[i].client, "ping")
					readN(t, hs[i].server, 4)
					write(t, hs[i].server, "pong")
					readN(t, hs[i].client, 4)
				}
				runtime.GC()
				runtime.GC() // the pool drops the idle pipes
				time.Sleep(50 * time.Millisecond)
				// A few may sit in the pool still; holding them would be 4 fds per relay.
				if pipes := countPipes() - before; pipes > 8 {
					t.Errorf("%d more pipe fds open with %d idle relays", pipes, n)
				}
				// And they still relay.
				for _, h := range hs {
					write(t, h.client, "again")
					readN(t, h.server, 5)
				}
			})
		}
	})
}

func countPipes() int {
	pipes := 0
	ents, _ := os.ReadDir("/proc/self/fd")
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && isPipe(fd) {
			pipes++
		}
	}
	return pipes
}

// BenchmarkRelayPingPong is the warm path of small requests: one 64-byte message each
// way per round trip, through the relay over TCP, the pattern of wrk's keep-alive GETs.
func BenchmarkRelayPingPong(b *testing.B) {
	ctx, cancel := context.WithCancel(b.Context())
	defer cancel()
	h := startRelay(b, ctx, topology{"tcp", "tcp"}, Options{IdleTimeout: time.Hour})
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	for b.Loop() {
		if _, err := h.client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(h.server, buf); err != nil {
			b.Fatal(err)
		}
		if _, err := h.server.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(h.client, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// TestIdlePipesAreBounded: after a burst that needed many pipes at once, the relay keeps
// at most idlePipes of them, whatever the garbage collector does (a sync.Pool kept a
// burst's pipes until collections an idle daemon may not run).
func TestIdlePipesAreBounded(t *testing.T) {
	fds := func() int {
		ents, err := os.ReadDir("/proc/self/fd")
		if err != nil {
			t.Skip(err)
		}
		return len(ents)
	}
	before := fds()
	var held []*pipe
	for range 40 {
		p := getPipe()
		if p == nil {
			t.Fatal("no pipe")
		}
		held = append(held, p)
	}
	for _, p := range held {
		putPipe(p)
	}
	if after := fds(); after > before+2*idlePipes {
		t.Errorf("%d fds after returning 40 pipes (%d before); want at most %d more", after, before, 2*idlePipes)
	}
	for range idlePipes { // leave the pool as other tests found it: empty
		if p := getPipe(); p != nil {
			p.held = 1
			putPipe(p)
		}
	}
}

// TestRelayBackPressure: a client that stops reading a large download must stop the
// server's writes after a bounded amount, the socket buffers' worth, rather than have the
// relay (or, on the kernel path, the sockmap's queue) take everything the server sends.
func TestRelayBackPressure(t *testing.T) {
	forModes(t, func(t *testing.T) {
		for _, tp := range sockets {
			t.Run(tp.String(), func(t *testing.T) {
				ctx, cancel := context.WithCancel(t.Context())
				defer cancel()
				h := startRelay(t, ctx, tp, Options{})
				var sent atomic.Int64
				go func() {
					buf := make([]byte, 64<<10)
					for {
						h.server.SetWriteDeadline(time.Now().Add(5 * time.Second))
						n, err := h.server.Write(buf)
						sent.Add(int64(n))
						if err != nil {
							return
						}
					}
				}()
				// Let the buffers fill, then see that the server no longer gets to send.
				var last int64
				for i := 0; ; i++ {
					time.Sleep(200 * time.Millisecond)
					now := sent.Load()
					if now == last && now > 0 {
						break
					}
					if i == 25 {
						t.Fatalf("after 5s the server is still sending (%d bytes) to a client that reads nothing", now)
					}
					last = now
				}
				const bound = 64 << 20
				if last > bound {
					t.Errorf("the server sent %d MiB to a client that reads nothing; want at most %d MiB", last>>20, bound>>20)
				}
				t.Logf("stalled after %d KiB", last>>10)
				// And what was sent arrives.
				if got, err := recv(h.client, last); err != nil {
					t.Errorf("reading the %d bytes sent: %v (%x)", last, err, got[:4])
				}
			})
		}
	})
}

// TestRelayFallsBackWhenBPFRefused: where the kernel relay cannot load (here: refused as
// an unprivileged user would be), asking for it splices, and Stats.Path says so.
func TestRelayFallsBackWhenBPFRefused(t *testing.T) {
	savedOpen := openEngine
	savedEngine, savedErr := kernelEngine() // the real one, back for the tests after
	openEngine = func() (*engine, error) {
		return nil, explainBPF("creating a SOCKHASH map", unix.EPERM)
	}
	engineOnce, theEngine, engineErr = sync.Once{}, nil, nil
	t.Cleanup(func() {
		openEngine = savedOpen
		engineOnce, theEngine, engineErr = sync.Once{}, savedEngine, savedErr
		engineOnce.Do(func() {})
	})
	if err := KernelRelay(); !errors.Is(err, unix.EPERM) {
		t.Fatalf("KernelRelay() = %v, want EPERM", err)
	}
	for _, mode := range []Mode{ModeKernel, ModeAuto} {
		t.Run(string(mode), func(t *testing.T) {
			before := spliced.Load()
			h := startRelay(t, t.Context(), topology{"tcp", "tcp"}, Options{Mode: mode})
			transfer(t, h, 1<<20, true)
			r := h.wait(t) // checks Path: splice, the kernel relay being refused
			if r.err != nil || r.stats != moved(1<<20, 1<<20) {
				t.Fatalf("Relay: %+v, %v", r.stats, r.err)
			}
			if got := spliced.Load() - before; got != 2<<20 {
				t.Errorf("%d bytes spliced, want %d", got, 2<<20)
			}
		})
	}
}
