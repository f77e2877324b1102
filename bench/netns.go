package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// A client in another network namespace reaches sact the way one on another host does:
// over an interface, through the host's routing, not through its loopback. sact's kernel
// relay sends a local client's connect straight to the container, so the loopback rows of
// the warm scenario stop measuring the relay; a namespace of the bench's own keeps the
// relay in the figures, minus only the wire.
const (
	netnsHostIP = "10.233.0.1" // the host's end of the veth pair, where sact and nginx listen
	netnsIP     = "10.233.0.2"
	netnsNet    = "10.233.0.0/24"
	netnsPrefix = "sactbench-" // + the bench's PID: the namespace, and the iptables rules' comment
)

// benchNetns is the bench's network namespace, joined to the host by a veth pair.
type benchNetns struct {
	name     string
	hostVeth string
	chain    string     // where the FORWARD acceptance went: DOCKER-USER, or FORWARD without Docker's chains
	rules    [][]string // iptables rule specs inserted into chain, deleted by remove
}

// benchRequired says whether a missing piece must fail the bench rather than leave a
// section out: CI and SACT_REQUIRE_DOCKER=1, so that nothing passes for measured.
func benchRequired() bool {
	return os.Getenv("SACT_REQUIRE_DOCKER") == "1" || os.Getenv("CI") == "true"
}

// makeNetns makes the namespace, its veth pair and the host's forwarding for it. On error
// it has removed whatever it made.
func makeNetns() (ns *benchNetns, err error) {
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is missing: %w", tool, err)
		}
	}
	fwd, err := os.ReadFile("/proc/sys/net/ipv4/ip_forward")
	if err != nil {
		return nil, fmt.Errorf("reading whether the host forwards: %w", err)
	}
	if strings.TrimSpace(string(fwd)) != "1" {
		// Docker turns it on; the bench does not change the host's routing behind its back.
		return nil, errors.New("the host does not forward IPv4 (/proc/sys/net/ipv4/ip_forward is 0), so the namespace cannot reach a container directly")
	}
	chain := "DOCKER-USER"
	if exec.Command("iptables", "-w", "-n", "-L", chain).Run() != nil {
		chain = "FORWARD"
	}
	removeStaleNetns(chain)
	if held, _ := hostHasAddr(netnsHostIP); held {
		return nil, fmt.Errorf("%s is already on one of this host's interfaces (another bench running?)", netnsHostIP)
	}
	pid := os.Getpid()
	ns = &benchNetns{name: netnsPrefix + strconv.Itoa(pid), hostVeth: fmt.Sprintf("sbh%d", pid), chain: chain}
	defer func() {
		if err != nil {
			ns.remove()
			ns = nil
		}
	}()
	nsVeth := fmt.Sprintf("sbn%d", pid)
	steps := [][]string{
		{"ip", "netns", "add", ns.name},
		{"ip", "link", "add", ns.hostVeth, "type", "veth", "peer", "name", nsVeth},
		{"ip", "link", "set", nsVeth, "netns", ns.name},
		{"ip", "addr", "add", netnsHostIP + "/24", "dev", ns.hostVeth},
		{"ip", "link", "set", ns.hostVeth, "up"},
		{"ip", "-n", ns.name, "addr", "add", netnsIP + "/24", "dev", nsVeth},
		{"ip", "-n", ns.name, "link", "set", nsVeth, "up"},
		{"ip", "-n", ns.name, "link", "set", "lo", "up"},
	}
	for _, st := range steps {
		if out, err := exec.Command(st[0], st[1:]...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("%s: %v: %s", strings.Join(st, " "), err, out)
		}
	}
	// Docker's FORWARD chain drops what goes to a container's bridge from an interface of
	// its own making, other than to a published port.
	for _, dir := range []string{"-s", "-d"} {
		rule := []string{dir, netnsNet, "-m", "comment", "--comment", ns.name, "-j", "ACCEPT"}
		if out, err := exec.Command("iptables", append([]string{"-w", "-I", chain}, rule...)...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("letting %s through the host's %s chain: %v: %s", netnsNet, chain, err, out)
		}
		ns.rules = append(ns.rules, rule)
	}
	return ns, nil
}

// routeTo routes prefix (a container network) from the namespace through the host.
func (ns *benchNetns) routeTo(prefix netip.Prefix) error {
	if out, err := exec.Command("ip", "-n", ns.name, "route", "add", prefix.String(), "via", netnsHostIP).CombinedOutput(); err != nil {
		return fmt.Errorf("routing %s from the namespace: %v: %s", prefix, err, out)
	}
	return nil
}

// command is the prefix that runs a command in the namespace.
func (ns *benchNetns) command() []string { return []string{"ip", "netns", "exec", ns.name} }

// dial connects from inside the namespace: a socket belongs to the namespace of the thread
// that made it, whichever thread uses it later.
func (ns *benchNetns) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	type result struct {
		c   net.Conn
		err error
	}
	done := make(chan result, 1)
	go func() {
		// Never unlocked: when the goroutine ends the runtime retires its thread rather than
		// hand one in the other namespace to the next goroutine.
		runtime.LockOSThread()
		f, err := os.Open("/run/netns/" + ns.name)
		if err != nil {
			done <- result{nil, fmt.Errorf("opening the namespace: %w", err)}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			done <- result{nil, fmt.Errorf("entering the namespace: %w", err)}
			return
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		done <- result{c, err}
	}()
	r := <-done
	return r.c, r.err
}

// remove deletes the rules, the namespace and the veth pair; it carries on past errors.
func (ns *benchNetns) remove() error {
	var errs []error
	for _, rule := range ns.rules {
		if out, err := exec.Command("iptables", append([]string{"-w", "-D", ns.chain}, rule...)...).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting the %s rule %v: %v: %s", ns.chain, rule, err, out))
		}
	}
	ns.rules = nil
	if _, err := os.Stat("/run/netns/" + ns.name); err == nil {
		// Its end of the veth pair goes with it, and the pair with that end.
		if out, err := exec.Command("ip", "netns", "del", ns.name).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting the namespace %s: %v: %s", ns.name, err, out))
		}
	}
	if _, err := net.InterfaceByName(ns.hostVeth); err == nil {
		if out, err := exec.Command("ip", "link", "del", ns.hostVeth).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("deleting the veth %s: %v: %s", ns.hostVeth, err, out))
		}
	}
	return errors.Join(errs...)
}

// removeStaleNetns removes what a bench killed before its cleanup left behind (its PID is
// in the names): else its address would keep every later run out of the namespace.
func removeStaleNetns(chain string) {
	dead := func(name string) bool {
		pid, err := strconv.Atoi(strings.TrimPrefix(name, netnsPrefix))
		if err != nil || pid == os.Getpid() {
			return false
		}
		_, err = os.Stat("/proc/" + strconv.Itoa(pid))
		return errors.Is(err, os.ErrNotExist)
	}
	if out, err := exec.Command("iptables", "-w", "-S", chain).Output(); err == nil {
		for line := range strings.Lines(string(out)) {
			f := strings.Fields(line)
			i := slices.Index(f, "--comment")
			if len(f) < 2 || f[0] != "-A" || i < 0 || i+1 >= len(f) || !strings.HasPrefix(f[i+1], netnsPrefix) || !dead(f[i+1]) {
				continue
			}
			f[0] = "-D"
			exec.Command("iptables", append([]string{"-w"}, f...)...).Run()
		}
	}
	entries, _ := os.ReadDir("/run/netns")
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix) && dead(e.Name()) {
			fmt.Fprintf(os.Stderr, "removing the network namespace %s, left by an earlier bench\n", e.Name())
			stale := &benchNetns{name: e.Name(), hostVeth: "sbh" + strings.TrimPrefix(e.Name(), netnsPrefix)}
			stale.remove()
		}
	}
}

// hostHasAddr says whether ip is on one of the host's interfaces.
func hostHasAddr(ip string) (bool, error) {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false, err
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().String() == ip {
			return true, nil
		}
	}
	return false, nil
}
