package bpfwatch

import (
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// connections makes n short connections to ln (request, response, the client closes)
// and returns the time per connection.
func connections(tb testing.TB, addr string, n int) time.Duration {
	start := time.Now()
	for range n {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			tb.Fatal(err)
		}
		roundTrip(tb, c)
		c.Close()
	}
	return time.Since(start) / time.Duration(n)
}

func echoServer(tb testing.TB) net.Listener {
	ln := listenTCP(tb, "127.0.0.1:0")
	serve(tb, ln, func(c net.Conn) {
		defer c.Close()
		answer(c)
		io.Copy(io.Discard, c)
	})
	return ln
}

// TestMeasureCost compares the time of a short TCP connection (dial, request, response,
// close, on loopback) without the programs, with them attached (a connection to a port
// nobody watches), and to a watched listener: 7 rounds of 2000 connections each,
// interleaved, medians reported. Run with BPFWATCH_MEASURE=1 -v.
func TestMeasureCost(t *testing.T) {
	if os.Getenv("BPFWATCH_MEASURE") == "" {
		t.Skip("set BPFWATCH_MEASURE=1 to measure")
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	const rounds, n = 7, 2000
	watched, unwatched := echoServer(t), echoServer(t)
	var bare, attached, counted []time.Duration
	connections(t, unwatched.Addr().String(), 200) // warm up
	// The kernel's own account of the programs' run time (kernel.bpf_stats_enabled).
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	var runs, runNs [2]uint64 // unwatched, watched
	progRuns := func(w *Watcher) (n, ns uint64) {
		for _, p := range w.progs {
			st, err := p.Stats()
			if err != nil {
				t.Fatal(err)
			}
			n += st.RunCount
			ns += uint64(st.Runtime)
		}
		return n, ns
	}
	for range rounds {
		bare = append(bare, connections(t, unwatched.Addr().String(), n))
		w, err := Open(Options{Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		h, err := w.Watch(watched.Addr())
		if err != nil {
			t.Fatal(err)
		}
		c0, ns0 := progRuns(w)
		attached = append(attached, connections(t, unwatched.Addr().String(), n))
		c1, ns1 := progRuns(w)
		counted = append(counted, connections(t, watched.Addr().String(), n))
		c2, ns2 := progRuns(w)
		runs[0] += c1 - c0
		runNs[0] += ns1 - ns0
		runs[1] += c2 - c1
		runNs[1] += ns2 - ns1
		a, _ := h.Activity()
		if a.Connects != n {
			t.Errorf("counted %d connections of %d", a.Connects, n)
		}
		w.Close()
	}
	med := func(d []time.Duration) time.Duration { slices.Sort(d); return d[len(d)/2] }
	t.Logf("per connection, median of %d rounds of %d: no programs %v, attached (port not watched) %v, watched %v",
		rounds, n, med(bare), med(attached), med(counted))
	total := uint64(rounds * n)
	t.Logf("programs' own run time per connection (kernel stats): port not watched %d runs, %d ns; watched %d runs, %d ns",
		runs[0]/total, runNs[0]/total, runs[1]/total, runNs[1]/total)
}

// TestMeasureUnixCost is the connect_unix program's own run time per connect(2) of a
// unix socket, watched or not (kernel stats). Run with BPFWATCH_MEASURE=1 -v.
func TestMeasureUnixCost(t *testing.T) {
	if os.Getenv("BPFWATCH_MEASURE") == "" {
		t.Skip("set BPFWATCH_MEASURE=1 to measure")
	}
	w := open(t, Options{})
	if w.UnixErr() != nil {
		t.Skip(w.UnixErr())
	}
	stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
	if err != nil {
		t.Fatal(err)
	}
	defer stats.Close()
	dir := t.TempDir()
	watched := listenUnix(t, dir+"/watched.sock")
	other := listenUnix(t, dir+"/a-longer-name-for-the-socket-that-nobody-watches.sock")
	watch(t, w, watched.Addr())
	for _, ln := range []net.Listener{watched, other} {
		serve(t, ln, func(c net.Conn) { c.Close() })
	}
	p := w.progs[len(w.progs)-1]
	const n = 5000
	for _, ln := range []net.Listener{other, watched} {
		st0, _ := p.Stats()
		start := time.Now()
		for range n {
			c, err := net.Dial("unix", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			c.Close()
		}
		took := time.Since(start) / n
		st1, _ := p.Stats()
		t.Logf("%s: %d ns of program per connect, %v per connection in all", ln.Addr(), uint64(st1.Runtime-st0.Runtime)/(st1.RunCount-st0.RunCount), took)
	}
}

// bulk sends size bytes from a server on ln to a client and returns the throughput.
func bulk(tb testing.TB, ln net.Listener, size int) float64 {
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		tb.Fatal(err)
	}
	defer c.Close()
	start := time.Now()
	fmt.Fprintf(c, "%d\n", size)
	n, err := io.Copy(io.Discard, c)
	if err != nil || n != int64(size) {
		tb.Fatalf("bulk: %d bytes, %v", n, err)
	}
	return float64(size) / time.Since(start).Seconds() / (1 << 20)
}

func bulkServer(tb testing.TB) net.Listener {
	ln := listenTCP(tb, "127.0.0.1:0")
	buf := make([]byte, 1<<16)
	serve(tb, ln, func(c net.Conn) {
		defer c.Close()
		var size int
		fmt.Fscanf(c, "%d\n", &size)
		for size > 0 {
			n, err := c.Write(buf[:min(size, len(buf))])
			if err != nil {
				return
			}
			size -= n
		}
	})
	return ln
}

// TestMeasureBulk compares a 256 MiB download from a watched listener with one from an
// unwatched one, the programs attached: every ACK and every segment sent runs the
// program. 5 rounds, interleaved, medians. Run with BPFWATCH_MEASURE=1 -v.
func TestMeasureBulk(t *testing.T) {
	if os.Getenv("BPFWATCH_MEASURE") == "" {
		t.Skip("set BPFWATCH_MEASURE=1 to measure")
	}
	w := open(t, Options{})
	watched, unwatched := bulkServer(t), bulkServer(t)
	h := watch(t, w, watched.Addr())
	const size = 256 << 20
	var on, off []float64
	for range 5 {
		off = append(off, bulk(t, unwatched, size))
		on = append(on, bulk(t, watched, size))
	}
	a := activity(t, h)
	if a.BytesOut < 5*size {
		t.Errorf("BytesOut = %d, want at least %d", a.BytesOut, 5*size)
	}
	med := func(d []float64) float64 { slices.Sort(d); return d[len(d)/2] }
	t.Logf("256 MiB over loopback, median of 5: not watched %.0f MiB/s, watched %.0f MiB/s", med(off), med(on))
}

// BenchmarkActivity is the cost of one poll of a handle.
func BenchmarkActivity(b *testing.B) {
	w := open(b, Options{})
	ln := echoServer(b)
	h := watch(b, w, ln.Addr())
	for b.Loop() {
		if _, err := h.Activity(); err != nil {
			b.Fatal(err)
		}
	}
}
