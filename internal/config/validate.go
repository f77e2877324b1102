package config

import (
	"cmp"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sact-project/sact/internal/listen"
)

// validate checks what no single value shows: how an app's settings fit together, and
// how apps fit together. It runs on values with defaults applied, and reports every
// problem it finds.
func (p *parser) validate() {
	for _, s := range p.apps {
		p.checkKind(s)
		p.checkTarget(s)
		p.checkReady(s)
	}
	p.checkDependencies()
	p.checkMemoryBudget()
	p.checkChains()
	p.checkAddresses()
	p.checkHosts()
	p.checkDefaultApp()
}

// checkMemoryBudget: an app whose memory limit alone exceeds pool.memory_budget could
// never start.
func (p *parser) checkMemoryBudget() {
	budget := p.cfg.Pool.MemoryBudget
	if budget <= 0 {
		return
	}
	for _, s := range p.apps {
		if s.Run.Memory > budget {
			p.errAt(s, "memory", -1, "%d MiB is more than pool.memory_budget (%d MiB): the app could never start; lower it or raise the budget", s.Run.Memory>>20, budget>>20)
		}
	}
}

// checkChains: an app runs only with its dependencies, transitively, so the pool must hold
// them all at once; a chain longer than pool.max_running, or whose memory limits add up
// to more than pool.memory_budget, could never start (issue 13).
func (p *parser) checkChains() {
	limit, budget := p.cfg.Pool.MaxRunning, p.cfg.Pool.MemoryBudget
	if limit <= 0 && budget <= 0 {
		return
	}
	byName := make(map[string]*appSrc, len(p.apps))
	for _, s := range p.apps {
		byName[s.Name] = s
	}
	for _, s := range p.apps {
		if len(s.DependsOn) == 0 {
			continue
		}
		// The apps that must run with s, each once (a cycle, reported already, ends).
		seen := map[string]bool{s.Name: true}
		var mem int64
		for next := []*appSrc{s}; len(next) > 0; next = next[1:] {
			mem += next[0].Run.Memory
			for _, d := range next[0].DependsOn {
				if dep := byName[d]; dep != nil && !seen[d] {
					seen[d] = true
					next = append(next, dep)
				}
			}
		}
		if len(seen) == 1 {
			continue
		}
		if limit > 0 && len(seen) > limit {
			p.errAt(s, "depends_on", -1, "%s needs %d running apps, more than pool.max_running (%d); raise max_running or drop a dependency", chainOf(s, byName, nil), len(seen), limit)
		}
		if budget > 0 && mem > budget {
			p.errAt(s, "depends_on", -1, "%s needs %d MiB of memory limits running at once, more than pool.memory_budget (%d MiB); raise the budget, lower a memory limit or drop a dependency", chainOf(s, byName, nil), mem>>20, budget>>20)
		}
	}
}

// chainOf names s and its dependencies: "web -> db -> cache", "web -> (db, cache)".
func chainOf(s *appSrc, byName map[string]*appSrc, path []string) string {
	if slices.Contains(path, s.Name) {
		return s.Name // a cycle, reported already
	}
	path = append(path, s.Name)
	var deps []string
	for _, d := range s.DependsOn {
		if dep := byName[d]; dep != nil {
			deps = append(deps, chainOf(dep, byName, path))
		}
	}
	switch len(deps) {
	case 0:
		return s.Name
	case 1:
		return s.Name + " -> " + deps[0]
	}
	return s.Name + " -> (" + strings.Join(deps, ", ") + ")"
}

// errAt reports a problem with the app's setting key, its i-th item if i >= 0, or the app
// itself if key is "". A setting inherited from defaults is reported where defaults sets
// it, naming the app.
func (p *parser) errAt(s *appSrc, key string, i int, format string, args ...any) {
	path, n := join("apps", s.Name), s.key
	if st, ok := s.set[key]; ok {
		path, n = join(path, key), st.k
		if st.inherited {
			path = join("defaults", key)
		}
		if items := st.v; i >= 0 && items.Kind == yaml.SequenceNode && i < len(items.Content) {
			path, n = index(path, i), items.Content[i]
		}
		if st.inherited {
			path += " (for apps." + s.Name + ")"
		}
	}
	p.d.errorf(n, path, format, args...)
}

// byLine sorts keys of s by where they are in the file.
func (s *appSrc) byLine(keys []string) []string {
	keys = slices.DeleteFunc(slices.Clone(keys), func(k string) bool { return !s.has(k) })
	slices.SortStableFunc(keys, func(a, b string) int { return cmp.Compare(s.set[a].k.Line, s.set[b].k.Line) })
	return keys
}

// checkKind checks that the app runs exactly one thing and sets nothing that does not
// apply to it.
func (p *parser) checkKind(s *appSrc) {
	matches := p.ks.match(s.has)
	switch len(matches) {
	case 0:
		p.errAt(s, "", -1, "%s", p.ks.nothingToRun())
		return
	case 1:
	default:
		var keys []string
		for _, k := range matches {
			keys = append(keys, p.ks.distinct(k, matches))
		}
		keys = s.byLine(keys)
		p.errAt(s, keys[1], -1, "%s and %s are both set; keep one: an app runs %s", keys[0], keys[1], p.ks.runsOne())
		return
	}
	in := p.ks.infos[s.kindIdx]
	for _, key := range slices.Sorted(maps.Keys(s.set)) {
		if p.ks.applies(key, s.kindIdx) {
			continue
		}
		msg := "does not apply to apps of kind " + in.Name + "; remove it"
		if in.Refuse != nil {
			msg = in.Refuse(key)
		}
		p.errAt(s, key, -1, "%s", msg)
	}
}

// cannot is why the app's kind cannot honour setting key, "" if it can.
func (p *parser) cannot(s *appSrc, key string) string {
	if s.kindIdx == noKind {
		return ""
	}
	return p.ks.infos[s.kindIdx].Cannot[key]
}

// checkTarget checks that sact knows where to send an app's connections.
func (p *parser) checkTarget(s *appSrc) {
	if s.Handoff {
		if why := p.cannot(s, "handoff"); why != "" {
			p.errAt(s, "handoff", -1, "%s", why)
		}
		if !s.has("listen") {
			p.errAt(s, "handoff", -1, "handoff passes the app its listening sockets, and it has none; add listen:, or remove handoff")
		}
		if s.has("hosts") {
			p.errAt(s, "hosts", -1, "the http front door cannot hand its socket to one app; remove hosts, or remove handoff")
		}
		for _, key := range s.byLine([]string{"upstream", "port"}) {
			p.errAt(s, key, -1, "with handoff: true sact does not connect to the app; remove %s", key)
		}
	} else if s.has("listen") || s.has("hosts") {
		switch targets := s.byLine([]string{"upstream", "port"}); len(targets) {
		case 0:
			p.errAt(s, s.byLine([]string{"listen", "hosts"})[0], -1, "sact has nowhere to send connections; add port: (where the app listens, on its container's address) or upstream: (unix:/path or tcp:host:port)")
		case 2:
			p.errAt(s, targets[1], -1, "upstream and port are both set; keep one")
		}
	}
	if s.has("port") && !s.Handoff && s.Run.Network == "none" {
		p.errAt(s, "port", -1, "with network: none the container has no address to reach port %d on; use a unix upstream on a shared volume, or another network", s.Port)
	}
	if s.has("hosts") && p.http.k == nil {
		p.errAt(s, "hosts", -1, "hosts are served by the http front door, which is not set up; add http: {listen: [\":80\"]}")
	}
	if why := p.cannot(s, "pause_after"); s.PauseAfter > 0 && why != "" {
		p.errAt(s, "pause_after", -1, "%s", why)
	}
	if s.PauseAfter > 0 && s.PauseAfter >= s.Idle {
		p.errAt(s, "pause_after", -1, "%v is not shorter than idle (%v), so the app would stop before it is paused; shorten pause_after or lengthen idle", s.PauseAfter, s.Idle)
	}
}

// checkDependencies checks that depends_on names apps, without cycles, and that every app
// without listen or hosts is somebody's dependency.
func (p *parser) checkDependencies() {
	byName := make(map[string]*appSrc, len(p.apps))
	var names []string
	for _, s := range p.apps {
		byName[s.Name] = s
		names = append(names, s.Name)
	}
	needed := make(map[string]bool)
	for _, s := range p.apps {
		for i, dep := range s.DependsOn {
			switch {
			case dep == "":
			case dep == s.Name:
				p.errAt(s, "depends_on", i, "an app cannot depend on itself; remove %s", quote(dep))
			case byName[dep] == nil:
				if alt := suggest(dep, names); alt != "" {
					p.errAt(s, "depends_on", i, "there is no app %s; did you mean %q?", quote(dep), alt)
				} else {
					p.errAt(s, "depends_on", i, "there is no app %s; add it under apps:, or remove it here", quote(dep))
				}
			default:
				needed[dep] = true
			}
		}
	}
	for _, s := range p.apps {
		if !s.has("listen") && !s.has("hosts") && !needed[s.Name] {
			p.errAt(s, "", -1, "nothing starts this app: it has no listen or hosts, and no app depends_on it; add listen:, or list it in another app's depends_on")
		}
	}

	// Depth-first search; a dependency met again while it is on the stack closes a cycle.
	const (
		unseen = iota
		onStack
		done
	)
	state := make(map[string]int)
	var stack []string
	var visit func(s *appSrc)
	visit = func(s *appSrc) {
		state[s.Name] = onStack
		stack = append(stack, s.Name)
		for i, dep := range s.DependsOn {
			next := byName[dep]
			if next == nil || next == s {
				continue
			}
			switch state[dep] {
			case unseen:
				visit(next)
			case onStack:
				cycle := append(slices.Clone(stack[slices.Index(stack, dep):]), dep)
				p.errAt(s, "depends_on", i, "dependency cycle %s; remove one of these dependencies", strings.Join(cycle, " -> "))
			}
		}
		stack = stack[:len(stack)-1]
		state[s.Name] = done
	}
	for _, s := range p.apps {
		if state[s.Name] == unseen {
			visit(s)
		}
	}
}

// claim is an address that sact listens on, and who says so.
type claim struct {
	addr listen.Addr
	what string // "apps.web.listen[0]"
	line int    // 0 for a default
	file string // its file, when the config has include:; "" otherwise
	// report reports a problem with the claim.
	report func(format string, args ...any)
}

// checkAddresses checks that no two listeners share an address (the second one in the
// file is reported), and that no app's upstream is one of sact's own listeners.
func (p *parser) checkAddresses() {
	var claims []claim
	add := func(a listen.Addr, what string, n *yaml.Node, report func(string, ...any)) {
		if a.Network == "" {
			return // a bad address, reported already
		}
		c := claim{addr: a, what: what, report: report}
		if n != nil {
			c.line = n.Line
			if len(p.cfg.Files) > 0 {
				c.file = p.d.fileOf(n) // with include:, "line 8" could be in any file
			}
		}
		claims = append(claims, c)
	}
	at := func(n *yaml.Node, path string) func(string, ...any) {
		return func(format string, args ...any) { p.d.errorf(n, path, format, args...) }
	}
	add(listen.Addr{Network: "unix", Address: p.cfg.Admin.Socket}, "admin.socket", p.adminSocket.v, at(p.adminSocket.v, "admin.socket"))
	if p.cfg.Admin.Listen != "" {
		add(listen.Addr{Network: "tcp", Address: p.cfg.Admin.Listen}, "admin.listen", p.adminListen.v, at(p.adminListen.v, "admin.listen"))
	}
	for i, a := range p.cfg.HTTP.Listen {
		n := p.httpListen.v.Content[i]
		add(a, index("http.listen", i), n, at(n, index("http.listen", i)))
	}
	for _, s := range p.apps {
		for i, a := range s.Listen {
			st := s.set["listen"]
			what := index(join("apps."+s.Name, "listen"), i)
			if st.inherited {
				what = index("defaults.listen", i)
			}
			add(a, what, st.v.Content[i], func(format string, args ...any) { p.errAt(s, "listen", i, format, args...) })
		}
	}
	slices.SortStableFunc(claims, func(a, b claim) int { return cmp.Compare(a.line, b.line) })
	for i, c := range claims {
		for _, first := range claims[:i] {
			if sameAddr(c.addr, first.addr) {
				c.report("%s is already used by %s; give each its own address", c.addr, first.describe())
				break
			}
		}
	}

	// A listening socket in a directory a container can write: the container could
	// replace it, or hold a live socket at its path so that the next sact cannot bind.
	for _, c := range claims {
		if c.addr.Network != "unix" {
			continue
		}
		for _, s := range p.apps {
			for _, b := range writableBinds(s.Run.Volumes) {
				if within(c.addr.Address, b.src) {
					c.report("%s is inside %s's volume %s (volumes[%d]), which its container can write: it could replace the socket or keep sact from binding it; put sact's sockets in a directory only root can write, like /run/sact", c.addr, s.Name, b.src, b.index)
				}
			}
		}
	}

	for _, s := range p.apps {
		if s.Upstream.IsZero() {
			continue
		}
		up := listen.Addr{Network: s.Upstream.Network, Address: s.Upstream.Address}
		key := "upstream"
		if !s.has(key) {
			key = "port" // derived from port
		}
		for _, c := range claims {
			if sameAddr(up, c.addr) {
				p.errAt(s, key, -1, "%s is where %s listens, so sact would connect to itself; give the address the app listens on", up, c.describe())
				break
			}
		}
	}
}

// bind is a volume's host directory and its index in volumes.
type bind struct {
	index int
	src   string
}

// writableBinds returns the host directories of volumes ("/host:/container[:opts]") that
// the container may write; named volumes and :ro binds are left out.
func writableBinds(volumes []string) []bind {
	var out []bind
	for i, v := range volumes {
		parts := strings.Split(v, ":")
		if len(parts) < 2 || !filepath.IsAbs(parts[0]) {
			continue
		}
		if len(parts) > 2 && slices.Contains(strings.Split(parts[2], ","), "ro") {
			continue
		}
		out = append(out, bind{i, filepath.Clean(parts[0])})
	}
	return out
}

// within reports whether path is dir or beneath it.
func within(path, dir string) bool {
	path = filepath.Clean(path)
	return path == dir || strings.HasPrefix(path, dir+string(filepath.Separator)) || dir == "/"
}

func (c claim) describe() string {
	if c.line == 0 {
		return c.what + " (its default)"
	}
	if c.file != "" {
		return fmt.Sprintf("%s (%s:%d)", c.what, c.file, c.line)
	}
	return fmt.Sprintf("%s (line %d)", c.what, c.line)
}

// sameAddr reports whether a and b cannot both be listened on: the same socket path, or
// the same TCP port on overlapping hosts (a wildcard overlaps every host). Port 0 means
// "any free port" and never clashes.
func sameAddr(a, b listen.Addr) bool {
	if a.Network != b.Network {
		return false
	}
	if a.Network == "unix" {
		return filepath.Clean(a.Address) == filepath.Clean(b.Address)
	}
	ha, pa, err1 := net.SplitHostPort(a.Address)
	hb, pb, err2 := net.SplitHostPort(b.Address)
	if err1 != nil || err2 != nil || pa != pb || pa == "0" {
		return false
	}
	ha, hb = normHost(ha), normHost(hb)
	switch {
	case ha == hb, ha == "" || ha == "::", hb == "" || hb == "::":
		return true // "" and "::" listen on IPv4 and IPv6
	case ha == "0.0.0.0":
		return !strings.Contains(hb, ":")
	case hb == "0.0.0.0":
		return !strings.Contains(ha, ":")
	}
	return false
}

// normHost writes equal IP addresses alike, and names in lowercase.
func normHost(h string) string {
	if ip, err := netip.ParseAddr(h); err == nil {
		return ip.Unmap().String()
	}
	return strings.ToLower(h)
}

// checkHosts checks that each host name routes to one app only.
// checkDefaultApp checks that http.default_app names an app.
func (p *parser) checkDefaultApp() {
	name := p.cfg.HTTP.DefaultApp
	if name == "" {
		return
	}
	for _, s := range p.apps {
		if s.Name == name {
			return
		}
	}
	p.d.errorf(p.httpDefault.v, "http.default_app", "no app is named %s; name one of the apps, or remove default_app", quote(name))
}

func (p *parser) checkHosts() {
	type first struct {
		app  string
		line int
	}
	seen := make(map[string]first)
	// In file order, so that the second one is reported.
	apps := slices.Clone(p.apps)
	slices.SortStableFunc(apps, func(a, b *appSrc) int { return cmp.Compare(a.Line, b.Line) })
	for _, s := range apps {
		st := s.set["hosts"]
		for i, h := range s.Hosts {
			if h == "" {
				continue
			}
			h = strings.ToLower(h)
			if f, dup := seen[h]; dup && f.app != s.Name {
				p.errAt(s, "hosts", i, "%s is already served by apps.%s (line %d); route each host to one app", h, f.app, f.line)
				continue
			}
			seen[h] = first{s.Name, st.v.Content[i].Line}
		}
	}
}
