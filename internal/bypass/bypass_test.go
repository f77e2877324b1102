package bypass

import (
	"bufio"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"
	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// inNetns runs f on a thread of its own in a fresh network namespace, with lo up and
// 10.234.0.1 on it: the sockets f makes are that namespace's, so the tests touch no
// address of the host's, and a non-loopback upstream is at hand.
func inNetns(t *testing.T, f func()) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("SACT_REQUIRE_DOCKER") != "" {
			t.Fatal("the bypass tests need root (CI or SACT_REQUIRE_DOCKER=1)")
		}
		t.Skip("needs root")
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is never unlocked: it dies with the goroutine, and its namespace
		// with it.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare(CLONE_NEWNET): %v", err)
			return
		}
		for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "10.234.0.1/32", "dev", "lo"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				t.Errorf("ip %v: %v: %s", args, err, out)
				return
			}
		}
		f()
	}()
	<-done
}

// server accepts on ln and writes name to each connection, until the test ends.
func server(t *testing.T, ln net.Listener, name string) {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Write([]byte(name + "\n"))
			c.Close()
		}
	})
}

func listen(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	server(t, ln, name)
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

// reached dials addr (from local, if set) and returns the name of the server that
// answered.
func reached(t *testing.T, addr netip.AddrPort, local string) string {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	c, err := d.Dial("tcp4", addr.String())
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	s, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return s[:len(s)-1]
}

func openBypass(t *testing.T) *Bypass {
	t.Helper()
	w, err := bpfwatch.Open(bpfwatch.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	b, err := Open(w)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// TestRouteSendsConnectsToTheInstance: while routed, a connect to sact's address
// reaches the instance; held, closed, or from a socket bound to loopback when the
// instance is not on it, sact's own listener.
func TestRouteSendsConnectsToTheInstance(t *testing.T) {
	inNetns(t, func() {
		sact := listen(t, "127.0.0.1:0", "sact")
		inst := listen(t, "10.234.0.1:0", "instance")
		b := openBypass(t)
		r, err := b.Route([]netip.AddrPort{sact}, inst, unix.Gettid())
		if err != nil {
			t.Fatal(err)
		}
		step := func(what, local, want string) {
			t.Helper()
			if got := reached(t, sact, local); got != want {
				t.Errorf("%s: a connect to %s reached %q, want %q", what, sact, got, want)
			}
		}
		step("routed", "", "instance")
		step("from a socket bound to 127.0.0.1", "127.0.0.1", "sact")
		if n := r.Connects(); n != 1 {
			t.Errorf("%d connects rewritten, want 1", n)
		}
		if r.LastActive().IsZero() {
			t.Error("the instance's connection was not counted")
		}
		if err := r.Hold(); err != nil {
			t.Fatal(err)
		}
		step("held", "", "sact")
		if n := r.Connects(); n != 1 {
			t.Errorf("held: %d connects counted, want the 1 from before", n)
		}
		if err := r.Resume(); err != nil {
			t.Fatal(err)
		}
		step("resumed", "", "instance")
		// An instance whose listener is gone (crashed, before the engine says so) is
		// not sent clients: sact gets them, and starts it anew.
		gone, err := net.Listen("tcp4", "10.234.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		goneAddr := gone.Addr().(*net.TCPAddr).AddrPort()
		gone.Close()
		other := listen(t, "127.0.0.1:0", "sact for the crashed one")
		r2, err := b.Route([]netip.AddrPort{other}, goneAddr, unix.Gettid())
		if err != nil {
			t.Fatal(err)
		}
		if got := reached(t, other, ""); got != "sact for the crashed one" {
			t.Errorf("a connect to an instance with no listener reached %q, want sact", got)
		}
		r2.Close()
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		step("closed", "", "sact")
		if n := r.Connects(); n != 2 {
			t.Errorf("closed: %d connects counted, want 2", n)
		}
	})
}

// TestRouteOfAnUnspecifiedListener: a listener on 0.0.0.0 is reached through loopback
// and the host's addresses; a loopback upstream takes a loopback-bound client too.
func TestRouteOfAnUnspecifiedListener(t *testing.T) {
	inNetns(t, func() {
		ln, err := net.Listen("tcp4", "0.0.0.0:0")
		if err != nil {
			t.Fatal(err)
		}
		server(t, ln, "sact")
		port := uint16(ln.Addr().(*net.TCPAddr).Port)
		inst := listen(t, "127.0.0.1:0", "instance")
		b := openBypass(t)
		r, err := b.Route([]netip.AddrPort{netip.AddrPortFrom(netip.IPv4Unspecified(), port)}, inst, unix.Gettid())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		for _, c := range []struct{ to, local string }{{"127.0.0.1", ""}, {"10.234.0.1", ""}, {"127.0.0.1", "127.0.0.1"}} {
			to := netip.AddrPortFrom(netip.MustParseAddr(c.to), port)
			if got := reached(t, to, c.local); got != "instance" {
				t.Errorf("a connect to %s from %q reached %q, want the instance", to, c.local, got)
			}
		}
	})
}

// TestOtherNamespacesAreNotRewritten: a container's connect to an address that is sact's
// in the host's namespace means its own namespace's address, and is left alone.
func TestOtherNamespacesAreNotRewritten(t *testing.T) {
	inNetns(t, func() {
		sact := listen(t, "127.0.0.1:0", "sact")
		inst := listen(t, "10.234.0.1:0", "instance")
		b := openBypass(t)
		r, err := b.Route([]netip.AddrPort{sact}, inst, unix.Gettid())
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		inNetns(t, func() {
			listen(t, sact.String(), "the container's own")
			if got := reached(t, sact, ""); got != "the container's own" {
				t.Errorf("a connect from another namespace to %s reached %q", sact, got)
			}
		})
		if got := reached(t, sact, ""); got != "instance" {
			t.Errorf("the host's connect reached %q, want the instance", got)
		}
	})
}

// TestRouteRefusesWhatItCannotTake: IPv6 and unix stay with the relay.
func TestRouteRefusesWhatItCannotTake(t *testing.T) {
	b := &Bypass{addrs: hostAddrs}
	if _, err := b.keys([]netip.AddrPort{netip.MustParseAddrPort("[::1]:80")}, netip.MustParseAddrPort("10.0.0.1:80")); err == nil {
		t.Error("an IPv6-only listener was taken")
	}
	if _, err := b.Route(nil, netip.MustParseAddrPort("[fe80::1]:80"), 1); err == nil {
		t.Error("an IPv6 upstream was taken")
	}
	keys, err := b.keys([]netip.AddrPort{netip.MustParseAddrPort("10.0.0.1:80"), netip.MustParseAddrPort("127.0.0.1:81")}, netip.MustParseAddrPort("10.0.0.1:80"))
	if err != nil || len(keys) != 1 || keyString(keys[0]) != "127.0.0.1:81" {
		t.Errorf("keys %v, %v: want only 127.0.0.1:81 (never the upstream itself)", keys, err)
	}
}

// TestNetnsOf: a namespace other than sact's gets an id here, which the program's
// listener lookup takes; sact's own is "the connecting socket's".
func TestNetnsOf(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	own, err := netnsOf(unix.Gettid())
	if err != nil || own != currentNetns {
		t.Errorf("netnsOf(own thread) = %#x, %v; want currentNetns", own, err)
	}
	var tid int
	ready, release := make(chan struct{}), make(chan struct{})
	go func() {
		runtime.LockOSThread() // never unlocked: the thread and its namespace die with it
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			t.Errorf("unshare: %v", err)
		}
		tid = unix.Gettid()
		close(ready)
		<-release
	}()
	<-ready
	defer close(release)
	id, err := netnsOf(tid)
	if err != nil || id == currentNetns {
		t.Fatalf("netnsOf(another namespace) = %#x, %v; want an id", id, err)
	}
	again, err := netnsOf(tid)
	if err != nil || again != id {
		t.Errorf("the id changed: %d then %d (%v)", id, again, err)
	}
}

// TestContextLayout checks the offsets the program uses against the kernel's BTF.
func TestContextLayout(t *testing.T) {
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		t.Skip(err)
	}
	for name, want := range map[string]map[string]int{
		"bpf_sock_addr": {"user_ip4": saUserIP4, "user_port": saUserPort, "type": saType, "sk": saSk},
		"bpf_sock":      {"src_ip4": skSrcIP4},
	} {
		if err := bpfwatch.CheckLayout(spec, name, want); err != nil {
			t.Error(err)
		}
	}
}
