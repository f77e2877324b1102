package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netns"
)

// clientNetns is a network namespace the test makes, joined to the host by a veth
// pair: a client there is not local to sact, as one on another machine would not be,
// and the host forwards what it sends to a container.
type clientNetns struct {
	name, veth string
	host, peer string // the addresses on the host's end and in the namespace
}

func newClientNetns(t *testing.T) *clientNetns {
	t.Helper()
	if os.Geteuid() != 0 {
		if required() {
			t.Fatal("a client's network namespace needs root (CI or SACT_REQUIRE_DOCKER=1)")
		}
		t.Skip("needs root")
	}
	pid := os.Getpid()
	sub := fmt.Sprintf("10.236.%d", pid%250)
	n := &clientNetns{name: fmt.Sprintf("sacte2e-%d", pid), veth: fmt.Sprintf("sxh%d", pid), host: sub + ".1", peer: sub + ".2"}
	removeStaleNetns()
	in := []string{"ip", "netns", "exec", n.name}
	cmds := [][]string{
		{"ip", "netns", "add", n.name},
		{"ip", "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.name},
		{"ip", "addr", "add", n.host + "/24", "dev", n.veth},
		{"ip", "link", "set", n.veth, "up"},
		append(in, "ip", "link", "set", "lo", "up"),
		append(in, "ip", "addr", "add", n.peer+"/24", "dev", "eth0"),
		append(in, "ip", "link", "set", "eth0", "up"),
		append(in, "ip", "route", "add", "default", "via", n.host),
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", n.veth).Run()
		exec.Command("ip", "netns", "del", n.name).Run()
	})
	for _, c := range cmds {
		if out, err := exec.Command(c[0], c[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v: %s", strings.Join(c, " "), err, out)
		}
	}
	return n
}

// removeStaleNetns takes out the namespaces and veths of test runs that died.
func removeStaleNetns() {
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		pid, err := strconv.Atoi(strings.TrimPrefix(e.Name(), "sacte2e-"))
		if err != nil || !strings.HasPrefix(e.Name(), "sacte2e-") || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		exec.Command("ip", "link", "del", fmt.Sprintf("sxh%d", pid)).Run()
		exec.Command("ip", "netns", "del", e.Name()).Run()
	}
}

// dial connects to addr from the namespace: the socket is made on a thread that
// entered it, and is the namespace's for good.
func (n *clientNetns) dial(ctx context.Context, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the goroutine
		h, err := netns.GetFromName(n.name)
		if err != nil {
			ch <- result{nil, err}
			return
		}
		defer h.Close()
		if err := netns.Set(h); err != nil {
			ch <- result{nil, err}
			return
		}
		var d net.Dialer
		c, err := d.DialContext(ctx, "tcp", addr)
		ch <- result{c, err}
	}()
	r := <-ch
	return r.c, r.err
}

// client is an HTTP client in the namespace; dials counts its connections.
func (n *clientNetns) client(addr string, keepAlive bool, dials *int) *http.Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			if dials != nil {
				*dials++
			}
			return n.dial(ctx, addr)
		},
		DisableKeepAlives: !keepAlive,
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

func get(c *http.Client) error {
	resp, err := c.Get("http://sact/")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// TestIngressClientsElsewhere: with SACT_RELAY=kernel, a client in another network
// namespace reaches a running app past the relay (its connections are translated to
// the container's address): served while sact is frozen, steady light traffic on one
// keep-alive connection keeps the app beyond its idle time, once silent the app stops
// and the next client starts it again through sact; and sact leaves no rule behind.
func TestIngressClientsElsewhere(t *testing.T) {
	needDocker(t)
	ns := newClientNetns(t)
	ln, err := net.Listen("tcp", ns.host+":0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	name := uniqueName(t, "ingress")
	path := filepath.Join(t.TempDir(), "sact.yaml")
	if err := os.WriteFile(path, []byte("apps:"+appConfig(name, addr, "")+"    idle: 3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startSactFileEnv(t, path, "SACT_RELAY=kernel")
	d.waitLog(`"msg":"clients elsewhere reach running apps past the relay"`, 5*time.Second)
	table := fmt.Sprintf("sact-%d", d.cmd.Process.Pid)

	once := ns.client(addr, false, nil)
	if err := get(once); err != nil {
		t.Fatalf("cold request from the namespace: %v", err)
	}
	if st := bypassOf(t, d, name); !st.Bypass || !st.BypassElsewhere || st.State != "running" {
		t.Fatalf("after the cold start: %+v, want running and bypassed, for clients elsewhere too", st)
	}
	if m := adminMetrics(t, d); !strings.Contains(m, fmt.Sprintf(`sact_app_bypass{app=%q,clients="elsewhere"} 1`, name)) {
		t.Errorf("/metrics does not say clients elsewhere go past the relay:\n%s", m)
	}
	if out, _ := exec.Command("iptables", "-w", "-S", "DOCKER-USER").CombinedOutput(); !strings.Contains(string(out), table) {
		t.Errorf("no rule of sact's in DOCKER-USER:\n%s", out)
	}

	// Frozen, sact relays nothing: what is served now went past it.
	if err := d.whileFrozen(func() error {
		for i := range 5 {
			if err := get(once); err != nil {
				return fmt.Errorf("request %d from the namespace: %w", i, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("while sact is stopped: %v", err)
	}
	// Connects are read from the rules' counters, at most once a second.
	time.Sleep(1100 * time.Millisecond)
	if st := bypassOf(t, d, name); st.BypassConnections < 5 {
		t.Errorf("bypass_connections = %d: want at least the 5 made while sact was stopped", st.BypassConnections)
	}

	// Steady light traffic on one pooled connection, twice the idle time: sact sees it
	// only as the kernel counts it on the container's side.
	dials := 0
	pooled := ns.client(addr, true, &dials)
	for i := range 12 {
		if err := get(pooled); err != nil {
			t.Fatalf("keep-alive request %d: %v", i, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	if dials != 1 {
		t.Errorf("%d connections for the keep-alive requests, want 1 (the app was stopped under it?)", dials)
	}
	if st := bypassOf(t, d, name); st.State != "running" || st.ColdStarts != 1 {
		t.Errorf("after steady traffic past the relay: %+v, want running after 1 cold start", st)
	}
	pooled.Transport.(*http.Transport).CloseIdleConnections()

	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
	if st := bypassOf(t, d, name); st.Bypass || st.BypassElsewhere {
		t.Errorf("a stopped app is still bypassed: %+v", st)
	}
	if err := get(once); err != nil {
		t.Fatalf("request after the idle stop: %v", err)
	}
	if st := bypassOf(t, d, name); st.ColdStarts != 2 || !st.Bypass {
		t.Errorf("after the second cold start: %+v, want 2 cold starts, bypassed", st)
	}

	d.stop()
	if out, _ := exec.Command("iptables", "-w", "-S", "DOCKER-USER").CombinedOutput(); strings.Contains(string(out), table) {
		t.Errorf("sact's rule is still in DOCKER-USER after it ended:\n%s", out)
	}
	if out, err := exec.Command("nft", "list", "table", "ip", table).CombinedOutput(); err == nil {
		t.Errorf("sact's table is still there after it ended:\n%s", out)
	}
}
