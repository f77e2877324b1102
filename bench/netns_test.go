package main

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"
)

func needNetns(t *testing.T) {
	t.Helper()
	_, ipErr := exec.LookPath("ip")
	if os.Geteuid() != 0 || ipErr != nil {
		if benchRequired() {
			t.Fatalf("the bench's network namespace needs root and ip(8)")
		}
		t.Skip("needs root and ip(8)")
	}
}

// chainHas says whether the host's chain holds a rule with comment.
func chainHas(t *testing.T, chain, comment string) bool {
	t.Helper()
	out, err := exec.Command("iptables", "-w", "-S", chain).Output()
	if err != nil {
		t.Fatalf("iptables -S %s: %v", chain, err)
	}
	return strings.Contains(string(out), "--comment "+comment+" ")
}

func TestBenchNetnsDialsFromInsideAndRemovesAll(t *testing.T) {
	needNetns(t)
	ns, err := makeNetns()
	if err != nil {
		t.Fatal(err)
	}
	removed := false
	t.Cleanup(func() {
		if !removed {
			ns.remove()
		}
	})
	if !chainHas(t, ns.chain, ns.name) {
		t.Errorf("no FORWARD acceptance with comment %s in %s", ns.name, ns.chain)
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(netnsHostIP, "0"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := ns.dial(ctx, "tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.LocalAddr().(*net.TCPAddr).IP.String(); got != netnsIP {
		t.Errorf("dial from the namespace came from %s, want %s", got, netnsIP)
	}
	// wrk runs under the prefix: a command under it sees the namespace's address.
	out, err := exec.Command(ns.command()[0], append(ns.command()[1:], "ip", "-4", "-o", "addr", "show")...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), netnsIP+"/24") {
		t.Errorf("ip addr under %v: %v: %s", ns.command(), err, out)
	}

	removed = true
	if err := ns.remove(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat("/run/netns/" + ns.name); err == nil {
		t.Errorf("namespace %s left", ns.name)
	}
	if _, err := net.InterfaceByName(ns.hostVeth); err == nil {
		t.Errorf("veth %s left", ns.hostVeth)
	}
	if chainHas(t, ns.chain, ns.name) {
		t.Errorf("rule with comment %s left in %s", ns.name, ns.chain)
	}
}

func TestBenchNetnsRemovesWhatAKilledRunLeft(t *testing.T) {
	needNetns(t)
	// A PID that has been and gone: the process has exited and been waited for.
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	pid := strconv.Itoa(gone.Process.Pid)
	stale := &benchNetns{name: netnsPrefix + pid, hostVeth: "sbh" + pid, chain: "DOCKER-USER"}
	if exec.Command("iptables", "-w", "-n", "-L", stale.chain).Run() != nil {
		stale.chain = "FORWARD"
	}
	t.Cleanup(func() { stale.remove() })
	for _, st := range [][]string{
		{"ip", "netns", "add", stale.name},
		{"ip", "link", "add", stale.hostVeth, "type", "veth", "peer", "name", "sbn" + pid},
		{"ip", "link", "set", "sbn" + pid, "netns", stale.name},
		{"ip", "addr", "add", netnsHostIP + "/24", "dev", stale.hostVeth},
		{"iptables", "-w", "-I", stale.chain, "-s", netnsNet, "-m", "comment", "--comment", stale.name, "-j", "ACCEPT"},
	} {
		if out, err := exec.Command(st[0], st[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s", st, err, out)
		}
	}
	stale.rules = [][]string{{"-s", netnsNet, "-m", "comment", "--comment", stale.name, "-j", "ACCEPT"}}

	ns, err := makeNetns()
	if err != nil {
		t.Fatalf("with a killed run's namespace left: %v", err)
	}
	t.Cleanup(func() { ns.remove() })
	if _, err := os.Stat("/run/netns/" + stale.name); err == nil {
		t.Errorf("stale namespace %s left", stale.name)
	}
	if chainHas(t, stale.chain, stale.name) {
		t.Errorf("stale rule %s left in %s", stale.name, stale.chain)
	}
}
