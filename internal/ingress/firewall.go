package ingress

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
	"golang.org/x/sys/unix"
)

// iptables' own chains: what its nf_tables backend makes in table ip filter, which
// Docker fills. The checks below read every other base chain as the admin's.
func iptablesChain(c *nftables.Chain) bool {
	return c.Table.Family == nftables.TableFamilyIPv4 && c.Table.Name == "filter" &&
		(c.Name == "INPUT" || c.Name == "FORWARD" || c.Name == "OUTPUT")
}

// inputFiltered says how this host filters IPv4 INPUT ("" when it does not): a
// translated connection would skip those rules.
func inputFiltered(conn *nftables.Conn) (string, error) {
	why, err := filtering(conn, *nftables.ChainHookInput, func(*nftables.Chain) bool { return false })
	if why != "" || err != nil {
		return why, err
	}
	if legacy() {
		pol, rules, err := chainOf("iptables-legacy", "INPUT")
		if err != nil {
			return "iptables-legacy's filter table is loaded and cannot be read", nil
		}
		if pol != "ACCEPT" || len(rules) > 0 {
			return fmt.Sprintf("iptables-legacy's INPUT has policy %s and %d rule(s)", pol, len(rules)), nil
		}
	}
	return "", nil
}

// forwardDropped says which chain would drop translated connections ("" when none)
// that the forward rule cannot reach: an nftables base chain of the admin's, on the
// forward hook, which the rule in iptables' chain does not bypass.
func forwardDropped(conn *nftables.Conn) (string, error) {
	return filtering(conn, *nftables.ChainHookForward, iptablesChain)
}

// filtering names the first IPv4 base filter chain on hook, but those skip says are
// not the admin's, that drops by default or holds a rule ("" when none does).
func filtering(conn *nftables.Conn, hook nftables.ChainHook, skip func(*nftables.Chain) bool) (string, error) {
	chains, err := conn.ListChains()
	if err != nil {
		return "", fmt.Errorf("listing nftables chains: %w", err)
	}
	for _, c := range chains {
		if !ipv4(c) || skip(c) || c.Hooknum == nil || *c.Hooknum != hook || (c.Type != "" && c.Type != nftables.ChainTypeFilter) {
			continue
		}
		if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
			return fmt.Sprintf("nftables chain %s %s drops by default", c.Table.Name, c.Name), nil
		}
		rules, err := conn.GetRules(c.Table, c)
		if err != nil {
			return "", fmt.Errorf("listing nftables chain %s %s: %w", c.Table.Name, c.Name, err)
		}
		if len(rules) > 0 {
			return fmt.Sprintf("nftables chain %s %s has %d rule(s)", c.Table.Name, c.Name, len(rules)), nil
		}
	}
	return "", nil
}

func ipv4(c *nftables.Chain) bool {
	return c.Table.Family == nftables.TableFamilyIPv4 || c.Table.Family == nftables.TableFamilyINet
}

// legacy reports whether x_tables' filter table is loaded beside nf_tables' (an older
// Docker, or a tool, used iptables-legacy): its chains see the packets too.
func legacy() bool {
	if out, err := exec.Command("iptables", "-V").Output(); err == nil && strings.Contains(string(out), "legacy") {
		return false // iptables itself is legacy: its chains are the ones read already
	}
	b, err := os.ReadFile("/proc/thread-self/net/ip_tables_names") // this thread's namespace
	if err != nil || !slices.Contains(strings.Fields(string(b)), "filter") {
		return false
	}
	_, err = exec.LookPath("iptables-legacy")
	return err == nil
}

// chainOf reads a built-in chain's policy and rules (iptables -S).
func chainOf(tool, chain string) (string, []string, error) {
	out, err := exec.Command(tool, "-w", "-S", chain).Output()
	if err != nil {
		return "", nil, fmt.Errorf("%s -S %s: %w", tool, chain, err)
	}
	var pol string
	var rules []string
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 3 && f[0] == "-P":
			pol = f[2]
		case len(f) > 1 && f[0] == "-A":
			rules = append(rules, strings.TrimSpace(line))
		}
	}
	return pol, rules, nil
}

// forwardRule is the rule one iptables backend holds for sact.
type forwardRule struct {
	tool  string
	chain string
	spec  []string
}

// present reports whether the rule is in its chain.
func (f forwardRule) present() bool {
	return exec.Command(f.tool, append([]string{"-w", "-C", f.chain}, f.spec...)...).Run() == nil
}

// add puts the rule in again, after the admin's rules as addForwardRules does.
func (f forwardRule) add() error {
	args := append([]string{"-w"}, f.where()...)
	args = append(args, f.spec...)
	if out, err := exec.Command(f.tool, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("letting translated connections through %s's %s: %v: %s", f.tool, f.chain, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// where is the rule's place: before DOCKER-USER's closing RETURN, or at the end.
func (f forwardRule) where() []string {
	if _, rules, err := chainOf(f.tool, f.chain); err == nil {
		if n := len(rules); n > 0 && rules[n-1] == "-A "+f.chain+" -j RETURN" {
			return []string{"-I", f.chain, strconv.Itoa(n)}
		}
	}
	return []string{"-A", f.chain}
}

func (f forwardRule) remove() error {
	args := append([]string{"-w", "-D", f.chain}, f.spec...)
	if out, err := exec.Command(f.tool, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %v: %s", f.tool, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// addForwardRules lets translated connections through each iptables backend whose
// FORWARD chain filters: in DOCKER-USER, after the admin's rules (the place Docker's
// documentation gives them), or else at FORWARD's end.
func addForwardRules(name string) ([]forwardRule, error) {
	tools := []string{"iptables"}
	if legacy() {
		tools = append(tools, "iptables-legacy")
	}
	var added []forwardRule
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			continue // no iptables at all: nothing of its filters either
		}
		pol, rules, err := chainOf(tool, "FORWARD")
		if err != nil {
			return added, err
		}
		if pol == "ACCEPT" && len(rules) == 0 {
			continue
		}
		f := forwardRule{tool: tool, chain: "FORWARD", spec: []string{
			"-m", "connmark", "--mark", fmt.Sprintf("%#x/%#x", Mark, Mark),
			"-m", "comment", "--comment", name, "-j", "ACCEPT"}}
		if _, _, err := chainOf(tool, "DOCKER-USER"); err == nil {
			f.chain = "DOCKER-USER"
		}
		if err := f.add(); err != nil {
			return added, err
		}
		added = append(added, f)
	}
	return added, nil
}

// removeStale takes out the tables and forward rules of sact processes that are gone.
func removeStale(conn *nftables.Conn) {
	dead := func(name string) bool {
		pid, err := strconv.Atoi(strings.TrimPrefix(name, tablePrefix))
		if err != nil || !strings.HasPrefix(name, tablePrefix) || pid == os.Getpid() {
			return false
		}
		return unix.Kill(pid, 0) == unix.ESRCH
	}
	if tables, err := conn.ListTablesOfFamily(nftables.TableFamilyIPv4); err == nil {
		for _, t := range tables {
			if dead(t.Name) {
				conn.DelTable(t)
			}
		}
		conn.Flush()
	}
	for _, tool := range []string{"iptables", "iptables-legacy"} {
		for _, chain := range []string{"DOCKER-USER", "FORWARD"} {
			_, rules, err := chainOf(tool, chain)
			if err != nil {
				continue
			}
			for _, line := range rules {
				f := strings.Fields(line)
				i := slices.Index(f, "--comment")
				if i < 0 || i+1 >= len(f) || !dead(f[i+1]) {
					continue
				}
				f[0] = "-D"
				exec.Command(tool, append([]string{"-w"}, f...)...).Run()
			}
		}
	}
}
