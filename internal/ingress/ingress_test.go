package ingress

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// A test's three namespaces: the host (sact's, where the rules go; a fresh namespace
// of the test's own thread), a client elsewhere, and an instance; each of the last two
// joined to the host by a veth pair.
const (
	hostToClient   = "10.235.1.1"
	clientAddr     = "10.235.1.2"
	hostToInstance = "10.235.2.1"
	instanceAddr   = "10.235.2.2"
)

type world struct {
	t                *testing.T
	client, instance string // namespace names
	instancePid      int    // a process in the instance's namespace
	closers          []func()
}

// inHost runs f on a thread of its own in a fresh network namespace joined to two
// others by veth pairs, with forwarding on: the rules f makes are that namespace's,
// so the tests touch nothing of the host's.
func inHost(t *testing.T, f func(w *world)) {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("SACT_REQUIRE_DOCKER") != "" {
			t.Fatal("the ingress tests need root (CI or SACT_REQUIRE_DOCKER=1)")
		}
		t.Skip("needs root")
	}
	for _, tool := range []string{"ip", "iptables", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("SACT_REQUIRE_DOCKER") != "" {
				t.Fatalf("the ingress tests need %s: %v", tool, err)
			}
			t.Skipf("needs %s", tool)
		}
	}
	id := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano()%1e6)
	w := &world{t: t, client: "sactig-c-" + id, instance: "sactig-i-" + id}
	t.Cleanup(func() {
		exec.Command("ip", "netns", "del", w.client).Run()
		exec.Command("ip", "netns", "del", w.instance).Run()
	})
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread is never unlocked: it dies with the goroutine, and its namespace
		// with it.
		runtime.LockOSThread()
		if err := unshareNet(); err != nil {
			t.Errorf("unshare(CLONE_NEWNET): %v", err)
			return
		}
		cmds := [][]string{
			{"ip", "link", "set", "lo", "up"},
			{"sysctl", "-qw", "net.ipv4.ip_forward=1"},
			{"ip", "netns", "add", w.client},
			{"ip", "netns", "add", w.instance},
			{"ip", "link", "add", "hc", "type", "veth", "peer", "name", "eth0", "netns", w.client},
			{"ip", "link", "add", "hi", "type", "veth", "peer", "name", "eth0", "netns", w.instance},
			{"ip", "addr", "add", hostToClient + "/24", "dev", "hc"},
			{"ip", "addr", "add", hostToInstance + "/24", "dev", "hi"},
			{"ip", "link", "set", "hc", "up"},
			{"ip", "link", "set", "hi", "up"},
		}
		for _, ns := range []struct{ name, addr, gw string }{{w.client, clientAddr, hostToClient}, {w.instance, instanceAddr, hostToInstance}} {
			x := []string{"ip", "netns", "exec", ns.name}
			cmds = append(cmds,
				append(x, "ip", "link", "set", "lo", "up"),
				append(x, "ip", "addr", "add", ns.addr+"/24", "dev", "eth0"),
				append(x, "ip", "link", "set", "eth0", "up"),
				append(x, "ip", "route", "add", "default", "via", ns.gw))
		}
		for _, c := range cmds {
			run(t, c...)
		}
		sleep := exec.Command("ip", "netns", "exec", w.instance, "sleep", "3600")
		if err := sleep.Start(); err != nil {
			t.Errorf("starting a process in the instance's namespace: %v", err)
			return
		}
		defer func() { sleep.Process.Kill(); sleep.Wait() }()
		w.instancePid = sleep.Process.Pid
		if t.Failed() {
			return
		}
		// What f opened is closed here, on the host namespace's thread: a cleanup on
		// the test's goroutine would run iptables in the machine's own namespace.
		defer func() {
			for _, c := range slices.Backward(w.closers) {
				c()
			}
		}()
		f(w)
	}()
	<-done
}

func unshareNet() error { return unix.Unshare(unix.CLONE_NEWNET) }

func run(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Errorf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
}

// in runs f on a thread of its own in the named namespace: the sockets f makes are
// that namespace's.
func (w *world) in(name string, f func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromName(name)
		if err != nil {
			w.t.Errorf("opening namespace %s: %v", name, err)
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			w.t.Errorf("entering namespace %s: %v", name, err)
			return
		}
		f()
	}()
	<-done
}

// serve answers every line read on ln's connections with name, until the test ends.
func serve(t *testing.T, ln net.Listener, name string) netip.AddrPort {
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer c.Close()
				r := bufio.NewReader(c)
				for {
					if _, err := r.ReadString('\n'); err != nil {
						return
					}
					c.Write([]byte(name + "\n"))
				}
			})
		}
	})
	return ln.Addr().(*net.TCPAddr).AddrPort()
}

func listen(t *testing.T, addr, name string) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", addr)
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, ln, name)
}

// conn is a client's connection, made in a namespace.
type conn struct {
	c net.Conn
	r *bufio.Reader
}

func (w *world) dial(from string, to netip.AddrPort, timeout time.Duration) (*conn, error) {
	var c net.Conn
	var err error
	w.in(from, func() { c, err = net.DialTimeout("tcp4", to.String(), timeout) })
	if err != nil {
		return nil, err
	}
	return &conn{c, bufio.NewReader(c)}, nil
}

// ask sends a line and returns the answer's name.
func (c *conn) ask() string {
	c.c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.c.Write([]byte("?\n")); err != nil {
		return "error: " + err.Error()
	}
	s, err := c.r.ReadString('\n')
	if err != nil {
		return "error: " + err.Error()
	}
	return strings.TrimSpace(s)
}

// reached dials to from the namespace and returns who answered.
func (w *world) reached(from string, to netip.AddrPort) string {
	c, err := w.dial(from, to, 5*time.Second)
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.c.Close()
	return c.ask()
}

func (w *world) instanceListener(name string) netip.AddrPort {
	var up netip.AddrPort
	w.in(w.instance, func() { up = listen(w.t, instanceAddr+":0", name) })
	return up
}

func (w *world) open(opts Options) *Table {
	w.t.Helper()
	tb, err := Open(opts)
	if err != nil {
		w.t.Fatal(err)
	}
	w.closers = append(w.closers, func() { tb.Close() })
	return tb
}

// TestRouteTranslatesClientsElsewhere: while routed, a connection from another
// namespace to sact's address reaches the instance; held, sact's listener, while the
// connection made before keeps its instance; resumed, the instance; closed, sact.
func TestRouteTranslatesClientsElsewhere(t *testing.T) {
	inHost(t, func(w *world) {
		sact := listen(t, "0.0.0.0:0", "sact")
		up := w.instanceListener("instance")
		tb := w.open(Options{})
		viaClient := netip.AddrPortFrom(netip.MustParseAddr(hostToClient), sact.Port())
		viaInstance := netip.AddrPortFrom(netip.MustParseAddr(hostToInstance), sact.Port())

		if got := w.reached(w.client, viaClient); got != "sact" {
			t.Fatalf("before any route: %q answered, want sact", got)
		}
		r, err := tb.Route([]netip.AddrPort{sact}, up, w.instancePid)
		if err != nil {
			t.Fatal(err)
		}
		for _, to := range []netip.AddrPort{viaClient, viaInstance} {
			if got := w.reached(w.client, to); got != "instance" {
				t.Errorf("routed, client to %s: %q answered, want instance", to, got)
			}
		}
		// The instance's own side would get its answer from the instance, not from the
		// address it dialed: relayed.
		if got := w.reached(w.instance, viaInstance); got != "sact" {
			t.Errorf("routed, from the instance's own link: %q answered, want sact", got)
		}
		open, err := w.dial(w.client, viaClient, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer open.c.Close()
		if got := open.ask(); got != "instance" {
			t.Fatalf("routed, a kept connection: %q answered", got)
		}
		if n := r.Connects(); n != 3 {
			t.Errorf("Connects = %d after 3 translated connections", n)
		}

		if err := r.Hold(); err != nil {
			t.Fatal(err)
		}
		if got := w.reached(w.client, viaClient); got != "sact" {
			t.Errorf("held: %q answered, want sact", got)
		}
		if got := open.ask(); got != "instance" {
			t.Errorf("held: the connection made before got %q, want its instance", got)
		}
		if err := r.Resume(); err != nil {
			t.Fatal(err)
		}
		if got := w.reached(w.client, viaClient); got != "instance" {
			t.Errorf("resumed: %q answered, want instance", got)
		}
		if n := r.Connects(); n != 4 {
			t.Errorf("Connects = %d after 4 translated connections, one of them after a hold", n)
		}
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if got := w.reached(w.client, viaClient); got != "sact" {
			t.Errorf("closed: %q answered, want sact", got)
		}
	})
}

// TestRouteOfOneAddress: a route of a listener on one address translates that address
// only; one on loopback only is not for other hosts at all; one on [::] is 0.0.0.0's.
func TestRouteOfOneAddress(t *testing.T) {
	inHost(t, func(w *world) {
		sact := listen(t, hostToClient+":0", "sact")
		other := listen(t, "0.0.0.0:"+fmt.Sprint(sact.Port()+1), "other")
		up := w.instanceListener("instance")
		tb := w.open(Options{})
		if _, err := tb.Route([]netip.AddrPort{netip.MustParseAddrPort("127.0.0.1:8000")}, up, w.instancePid); !errors.Is(err, ErrNotRoutable) {
			t.Errorf("a loopback listener's route: %v, want ErrNotRoutable", err)
		}
		if _, err := tb.Route([]netip.AddrPort{sact}, up, w.instancePid); err != nil {
			t.Fatal(err)
		}
		// A listener on [::] takes IPv4 as well: its route is 0.0.0.0's.
		dual, err := net.Listen("tcp", "[::]:0")
		if err != nil {
			t.Fatal(err)
		}
		dualAddr := serve(t, dual, "dual")
		if _, err := tb.Route([]netip.AddrPort{dualAddr}, up, w.instancePid); err != nil {
			t.Fatal(err)
		}
		if got := w.reached(w.client, netip.AddrPortFrom(sact.Addr(), dualAddr.Port())); got != "instance" {
			t.Errorf("to a listener on [::]: %q answered, want instance", got)
		}
		if got := w.reached(w.client, sact); got != "instance" {
			t.Errorf("to the listen address: %q answered, want instance", got)
		}
		if got := w.reached(w.client, netip.AddrPortFrom(sact.Addr(), other.Port())); got != "other" {
			t.Errorf("to another port: %q answered, want other", got)
		}
	})
}

// TestNoRouteBack: an instance whose namespace has no default route (a Docker network
// made --internal) could not answer a client elsewhere: not routed.
func TestNoRouteBack(t *testing.T) {
	inHost(t, func(w *world) {
		up := w.instanceListener("instance")
		run(t, "ip", "netns", "exec", w.instance, "ip", "route", "del", "default")
		tb := w.open(Options{})
		if _, err := tb.Route([]netip.AddrPort{netip.MustParseAddrPort("0.0.0.0:8000")}, up, w.instancePid); !errors.Is(err, ErrNotRoutable) {
			t.Errorf("Route = %v, want ErrNotRoutable", err)
		}
	})
}

// TestFilteredInputRefuses: a host that filters INPUT would see its rules skipped by a
// translated connection: Open refuses, unless forced.
func TestFilteredInputRefuses(t *testing.T) {
	inHost(t, func(w *world) {
		run(t, "iptables", "-w", "-A", "INPUT", "-p", "tcp", "--dport", "22", "-j", "ACCEPT")
		if _, err := Open(Options{}); !errors.Is(err, ErrFiltered) {
			t.Fatalf("Open with INPUT filtered: %v, want ErrFiltered", err)
		}
		w.open(Options{Force: true})
	})
}

// TestForwardRuleLetsTranslatedConnectionsThrough: with Docker's FORWARD (policy drop,
// DOCKER-USER first), a translated connection passes by the rule Open puts before
// DOCKER-USER's RETURN, put back when a reload flushed it, and only while the table is
// open.
func TestForwardRuleLetsTranslatedConnectionsThrough(t *testing.T) {
	inHost(t, func(w *world) {
		for _, r := range [][]string{
			{"-N", "DOCKER-USER"}, {"-A", "DOCKER-USER", "-j", "RETURN"},
			{"-A", "FORWARD", "-j", "DOCKER-USER"}, {"-P", "FORWARD", "DROP"},
		} {
			run(t, append([]string{"iptables", "-w"}, r...)...)
		}
		sact := listen(t, "0.0.0.0:0", "sact")
		up := w.instanceListener("instance")
		tb, err := Open(Options{Name: "sact-test", Recheck: 50 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		_, rules, _ := chainOf("iptables", "DOCKER-USER")
		if len(rules) != 2 || !strings.Contains(rules[0], "sact-test") || rules[1] != "-A DOCKER-USER -j RETURN" {
			t.Errorf("DOCKER-USER = %q, want sact's rule before the RETURN", rules)
		}
		if _, err := tb.Route([]netip.AddrPort{sact}, up, w.instancePid); err != nil {
			t.Fatal(err)
		}
		to := netip.AddrPortFrom(netip.MustParseAddr(hostToClient), sact.Port())
		if got := w.reached(w.client, to); got != "instance" {
			t.Errorf("through Docker's FORWARD: %q answered, want instance", got)
		}
		// A firewall's reload flushes the chain: the rule is put back.
		run(t, "iptables", "-w", "-F", "DOCKER-USER")
		run(t, "iptables", "-w", "-A", "DOCKER-USER", "-j", "RETURN")
		for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if _, rules, _ := chainOf("iptables", "DOCKER-USER"); len(rules) == 2 && strings.Contains(rules[0], "sact-test") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the forward rule was not put back after a flush")
			}
		}
		if got := w.reached(w.client, to); got != "instance" {
			t.Errorf("after a flush of DOCKER-USER: %q answered, want instance", got)
		}
		if err := tb.Close(); err != nil {
			t.Fatal(err)
		}
		if _, rules, _ := chainOf("iptables", "DOCKER-USER"); len(rules) != 1 {
			t.Errorf("DOCKER-USER after Close = %q", rules)
		}
		if got := w.reached(w.client, to); got != "sact" {
			t.Errorf("after Close: %q answered, want sact", got)
		}
	})
}

// TestStaleTablesRemoved: a table and forward rule left by a sact that died go at the
// next Open.
func TestStaleTablesRemoved(t *testing.T) {
	inHost(t, func(w *world) {
		dead := deadPid(t)
		name := fmt.Sprintf("%s%d", tablePrefix, dead)
		run(t, "nft", "add", "table", "ip", name)
		run(t, "iptables", "-w", "-P", "FORWARD", "DROP")
		run(t, "iptables", "-w", "-A", "FORWARD", "-m", "comment", "--comment", name, "-j", "ACCEPT")
		w.open(Options{})
		conn, err := nftables.New()
		if err != nil {
			t.Fatal(err)
		}
		tables, _ := conn.ListTables()
		for _, tb := range tables {
			if tb.Name == name {
				t.Errorf("table %s is still there", name)
			}
		}
		if _, rules, _ := chainOf("iptables", "FORWARD"); len(rules) != 1 || strings.Contains(rules[0], name) {
			t.Errorf("FORWARD = %q, want only this sact's rule", rules)
		}
	})
}

func deadPid(t *testing.T) int {
	for pid := 4_000_000; pid > 3_000_000; pid-- {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); errors.Is(err, os.ErrNotExist) {
			return pid
		}
	}
	t.Fatal("no free pid")
	return 0
}

// TestCloseForgetsUnansweredConnections: a SYN translated just before its instance went
// away is not left on its way to the dead address: its next try, a second later,
// reaches sact.
func TestCloseForgetsUnansweredConnections(t *testing.T) {
	inHost(t, func(w *world) {
		sact := listen(t, "0.0.0.0:0", "sact")
		up := w.instanceListener("instance")
		// The instance stops answering, as one that died does.
		run(t, "ip", "netns", "exec", w.instance, "nft", "add", "table", "ip", "x")
		run(t, "ip", "netns", "exec", w.instance, "nft", "add", "chain", "ip", "x", "in", "{ type filter hook input priority 0; policy drop; }")
		tb := w.open(Options{})
		r, err := tb.Route([]netip.AddrPort{sact}, up, w.instancePid)
		if err != nil {
			t.Fatal(err)
		}
		to := netip.AddrPortFrom(netip.MustParseAddr(hostToClient), sact.Port())
		got := make(chan string, 1)
		go func() {
			c, err := w.dial(w.client, to, 4*time.Second)
			if err != nil {
				got <- "error: " + err.Error()
				return
			}
			defer c.c.Close()
			got <- c.ask()
		}()
		time.Sleep(300 * time.Millisecond) // the first SYN is on its way to the instance
		if err := r.Close(); err != nil {
			t.Fatal(err)
		}
		if g := <-got; g != "sact" {
			t.Errorf("a connect during the close: %q, want sact (on its SYN's second try)", g)
		}
	})
}
