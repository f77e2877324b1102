package sockdiag

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newProber(t testing.TB) *Prober {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func probe(t testing.TB, p *Prober, a net.Addr) Activity {
	t.Helper()
	got, err := p.Probe(context.Background(), a)
	if err != nil {
		t.Fatal(err)
	}
	return got[0]
}

// eventually probes a until ok accepts the answer, or fails the test after 5 seconds:
// the kernel finishes a loopback handshake or a close a moment after the call that
// started it returned.
func eventually(t testing.TB, p *Prober, a net.Addr, what string, ok func(Activity) bool) Activity {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := probe(t, p, a)
		if ok(got) {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("%v: want %s, have %+v", a, what, got)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func counts(open, queued int) func(Activity) bool {
	return func(a Activity) bool { return a.Listening && a.Open == open && a.Queued == queued }
}

// listenTCP listens on network's loopback, or skips the test if the machine has none.
func listenTCP(t testing.TB, network, address string) *net.TCPListener {
	t.Helper()
	ln, err := net.Listen(network, address)
	if err != nil {
		t.Skipf("no %s loopback: %v", network, err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln.(*net.TCPListener)
}

func TestTCPLifecycle(t *testing.T) {
	for name, tc := range map[string]struct{ network, listen, dial string }{
		"ipv4":       {"tcp4", "127.0.0.1:0", "127.0.0.1"},
		"ipv6":       {"tcp6", "[::1]:0", "::1"},
		"dual stack": {"tcp", ":0", "127.0.0.1"}, // [::]:port; the connection is ::ffff:127.0.0.1
	} {
		t.Run(name, func(t *testing.T) {
			p := newProber(t)
			ln := listenTCP(t, tc.network, tc.listen)
			addr := ln.Addr()
			port := addr.(*net.TCPAddr).Port

			if got := probe(t, p, addr); got != (Activity{Listening: true}) {
				t.Fatalf("no connection: have %+v, want only Listening", got)
			}

			c, err := net.Dial("tcp", net.JoinHostPort(tc.dial, strconv.Itoa(port)))
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
			if got.ConnSet == 0 || got.BytesReceived != 0 || got.BytesSent != 0 {
				t.Errorf("fresh connection: have %+v, want a ConnSet and no bytes", got)
			}
			if age := time.Since(got.LastActivity); age < -time.Second || age > 5*time.Second {
				t.Errorf("fresh connection: LastActivity %v ago, want its handshake, just now", age)
			}
			set := got.ConnSet

			// Unread input is Pending until the app reads it.
			if _, err := c.Write(make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			eventually(t, p, addr, "1000 bytes pending", func(a Activity) bool { return a.Pending == 1000 && a.BytesReceived == 1000 })
			if _, err := io.ReadFull(s, make([]byte, 1000)); err != nil {
				t.Fatal(err)
			}
			if _, err := s.Write(make([]byte, 500)); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(c, make([]byte, 500)); err != nil {
				t.Fatal(err)
			}
			got = eventually(t, p, addr, "500 bytes acknowledged", func(a Activity) bool { return a.BytesSent == 500 && a.Pending == 0 })
			if got.BytesReceived != 1000 || got.Open != 1 || got.ConnSet != set {
				t.Errorf("after the exchange: have %+v, want 1000 bytes received on the same connection", got)
			}
			if age := time.Since(got.LastActivity); age < -time.Second || age > time.Second {
				t.Errorf("after the exchange: LastActivity %v ago, want just now", age)
			}

			// The app closes first, so its side lingers in TIME_WAIT: the close is still
			// seen as activity.
			s.Close()
			c.Close()
			got = eventually(t, p, addr, "no connection", counts(0, 0))
			if got.ConnSet != 0 || got.BytesReceived != 0 || got.Pending != 0 {
				t.Errorf("after close: have %+v, want counters back to zero", got)
			}
			if age := time.Since(got.LastActivity); age < -time.Second || age > 5*time.Second {
				t.Errorf("after close: LastActivity %v ago, want the close, just now", age)
			}
		})
	}
}

func TestTCPListenersApart(t *testing.T) {
	p := newProber(t)
	busy := listenTCP(t, "tcp4", "127.0.0.1:0")
	quiet := listenTCP(t, "tcp4", "127.0.0.1:0")
	// Same port, other address: 127.0.0.2 is loopback too.
	other, err := net.Listen("tcp4", "127.0.0.2:"+strconv.Itoa(busy.Addr().(*net.TCPAddr).Port))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	var conns []net.Conn
	for range 3 {
		c, err := net.Dial("tcp4", busy.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	for range 2 {
		s, err := busy.Accept()
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	eventually(t, p, busy.Addr(), "two open, one queued", counts(2, 1))

	got, err := p.Probe(context.Background(), quiet.Addr(), busy.Addr(), other.Addr(), quiet.Addr())
	if err != nil {
		t.Fatal(err)
	}
	idle := Activity{Listening: true}
	if got[0] != idle || got[2] != idle || got[3] != idle || got[1].Open != 2 || got[1].Queued != 1 {
		t.Errorf("have %+v, want only the second address busy", got)
	}
}

func TestTCPMany(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	const accepted, queued = 500, 30
	for i := range accepted + queued {
		c, err := net.Dial("tcp4", ln.Addr().String())
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

func TestTCPConnSetSeesReplacement(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	connect := func() (net.Conn, net.Conn) {
		c, err := net.Dial("tcp4", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		return c, s
	}
	c1, s1 := connect()
	first := eventually(t, p, ln.Addr(), "one open", counts(1, 0))
	c2, s2 := connect()
	defer c2.Close()
	defer s2.Close()
	s1.Close()
	c1.Close()
	second := eventually(t, p, ln.Addr(), "one open", counts(1, 0))
	if first.ConnSet == second.ConnSet {
		t.Errorf("ConnSet %#x before and after one connection replaced another", first.ConnSet)
	}
}

func TestTCPListenerClosed(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	c, err := net.Dial("tcp4", ln.Addr().String())
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
	ln.Close()
	if got := probe(t, p, ln.Addr()); got != (Activity{}) {
		t.Errorf("closed listener: have %+v, want nothing", got)
	}
}

func TestProbeErrors(t *testing.T) {
	p := newProber(t)
	for name, a := range map[string]net.Addr{
		"udp":       &net.UDPAddr{Port: 53},
		"port zero": &net.TCPAddr{},
		"unixgram":  &net.UnixAddr{Net: "unixgram", Name: "/run/x"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := p.Probe(context.Background(), a); err == nil {
				t.Errorf("Probe(%v) succeeded, want an error", a)
			}
		})
	}
}

func TestProbeCanceled(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := p.Probe(ctx, ln.Addr()); err == nil {
		t.Error("Probe with a canceled context succeeded")
	}
	if got := probe(t, p, ln.Addr()); !got.Listening {
		t.Errorf("Probe after a canceled one: have %+v, want Listening", got)
	}
}

func TestTCPTimeWaitRemembersClose(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	c, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	// A short request the app closes: between two probes it leaves only its TIME_WAIT.
	s.Close()
	c.Close()
	closed := time.Now()
	time.Sleep(300 * time.Millisecond)
	got := probe(t, p, ln.Addr())
	if got.Open != 0 || got.LastActivity.IsZero() {
		t.Fatalf("have %+v, want no connection but a LastActivity", got)
	}
	if d := got.LastActivity.Sub(closed); d < -100*time.Millisecond || d > 100*time.Millisecond {
		t.Errorf("LastActivity is %v from the close, want within 100ms", d)
	}
}

func TestRequestHonoursContext(t *testing.T) {
	c, err := dial()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	ctx, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancel()
	err = dumpTCP(ctx, c, unix.AF_INET, tcpConnStates, netip.AddrPort{}, true, func(inetMsg) {})
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, errInterrupted) {
		t.Errorf("dump with an expired context: have %v, want an interrupted request", err)
	}
}

func TestProbeConcurrently(t *testing.T) {
	p := newProber(t)
	ln := listenTCP(t, "tcp4", "127.0.0.1:0")
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 20 {
				got, err := p.Probe(context.Background(), ln.Addr())
				if err != nil || !got[0].Listening {
					t.Errorf("Probe: have %+v, %v", got, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
