package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// connsResult is what one relay path's idle connections cost.
type connsResult struct {
	mode   string // SACT_RELAY
	n      int    // connections held
	loaded bool   // the kernel relay loaded (its log said so)

	before, after usage // sact, before the connections and once all are open
	cpu           time.Duration
	window        time.Duration // the hold over which cpu was counted

	goBefore, goAfter     float64 // go_goroutines
	slabBefore, slabAfter int64   // the kernel's Slab, bytes
	tcpBefore, tcpAfter   int64   // TCP buffer pages (sockstat mem)
	caches                []slabGrowth

	open     int                // the app's open_connections during the hold
	bypassed uint64             // bypass_connections grown over the row
	relayed  map[string]float64 // sact_relayed_connections_total grown, by path
}

func (r connsResult) rssPer() float64 { return float64(r.after.rss-r.before.rss) / float64(r.n) }
func (r connsResult) slabPer() float64 {
	return float64(r.slabAfter-r.slabBefore) / float64(r.n)
}
func (r connsResult) totalPer() float64 { return r.rssPer() + r.slabPer() }
func (r connsResult) goPer() float64    { return (r.goAfter - r.goBefore) / float64(r.n) }

// relayedOnly says whether every held connection went through this row's relay path,
// none past it, as sact's admin API counts them.
func (r connsResult) relayedOnly() bool {
	return r.bypassed == 0 && r.open >= r.n && r.relayed[r.mode] >= float64(r.n)
}

// scaleConns opens many idle connections through sact's relay to a running app, once
// through the splice relay and once through the kernel (sockmap) relay, each in its own
// sact one after the other, and measures what each costs in sact's memory and the
// kernel's.
func (b *bench) scaleConns() error {
	n := 10_000
	if b.quick {
		n = 2_000
	}
	// sact holds two descriptors per relayed connection: raise the limit it inherits, or
	// where that is not allowed (no CAP_SYS_RESOURCE), open as many as the limit allows.
	var capped string
	if limit, err := raiseNoFile(uint64(2*n + 1024)); err != nil {
		fit := int(limit-1024) / 2
		capped = fmt.Sprintf(" Capped at %d of the %d wanted: sact needs two descriptors per connection and the open files limit is %d here (%v).", fit, n, limit, err)
		fmt.Fprintf(os.Stderr, "scale:%s\n", capped)
		n = fit
	}
	window := 10 * time.Second
	if b.quick {
		window = 3 * time.Second
	}
	var rows []connsResult
	for i, mode := range []string{"splice", "kernel"} {
		if i > 0 {
			// The first row's sockets linger in TIME_WAIT for a minute and are freed
			// during the next row otherwise, taking their slab from its figure.
			waitTimeWait(90 * time.Second)
		}
		r, err := b.connsRow(mode, n, window)
		if err != nil {
			return fmt.Errorf("the %s relay: %w", mode, err)
		}
		rows = append(rows, r)
	}
	sp, k := rows[0], rows[1]

	fmt.Fprintf(&b.md, "## Scale: %d open idle connections through the relay, splice and kernel\n\n", n)
	fmt.Fprintf(&b.md, "Two sacts one after the other, each with one running app: the splice relay (SACT_RELAY=splice, the default) and the kernel relay (SACT_RELAY=kernel: the sockmap). Each connection made one keep-alive `GET /` through sact's L4 relay (tcp) to the app, so both of its sides are open, then stayed silent; the first sact's connections were closed, it stopped and the host's TIME_WAIT sockets were gone before the second began. ")
	fmt.Fprintf(&b.md, "The client binds its sockets to 127.0.0.1 before it dials sact's 127.0.0.1 listener: with SACT_RELAY=kernel the connect-time bypass (cgroup/connect4) would send an unbound local client straight to the container, past the relay, and it leaves a loopback-bound socket alone when the upstream is not loopback; both rows dial the same way.%s\n\n", capped)
	fmt.Fprintf(&b.md, "sact's RSS is VmRSS before (app running, no connection) and 2 s after all were open; goroutines are sact's go_goroutines (its /metrics) at the same moments. The kernel's memory is the growth of Slab (SReclaimable+SUnreclaim in /proc/meminfo) over the same interval, host-wide: it holds all four sockets of a connection (the bench's client, sact's two, the app's), their files, inodes and epoll entries, and on the kernel path the sockmap's per-socket state (psock) and the BPF maps' entries; both rows have the same four sockets, so their difference is the relay's. Other activity on this shared host moves it too. The TCP buffer pages of /proc/net/sockstat (mem), which are not all in Slab, are given below: idle connections should hold none. sact + kernel is the sum, the goal's figure. CPU is sact's utime+stime over a %v hold after the RSS reading.\n\n", window)
	fmt.Fprintf(&b.md, "| relay | connections | sact RSS before | after | per connection | goroutines per connection | kernel Slab per connection | sact + kernel per connection | sact CPU while held |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	for _, r := range rows {
		name := "splice (SACT_RELAY=splice, default)"
		if r.mode == "kernel" {
			name = "kernel (SACT_RELAY=kernel, sockmap)"
			if !r.loaded {
				name += ", **not loaded**"
			}
		}
		fmt.Fprintf(&b.md, "| %s | %d | %.1f MB | %.1f MB | %.1f kB | %.2f | %.2f kB | %.1f kB | %.2f%% of one CPU |\n", name, r.n,
			float64(r.before.rss)/1e6, float64(r.after.rss)/1e6, r.rssPer()/1e3, r.goPer(), r.slabPer()/1e3, r.totalPer()/1e3,
			100*r.cpu.Seconds()/r.window.Seconds())
	}
	fmt.Fprintf(&b.md, "| kernel vs splice | | | | %s | | %s | %s | |\n\n", ratio(k.rssPer(), sp.rssPer()), ratio(k.slabPer(), sp.slabPer()), ratio(k.totalPer(), sp.totalPer()))
	for _, r := range rows {
		fmt.Fprintf(&b.md, "The %s sact's admin API: %d open connections during the hold, bypass_connections grew by %d, and once all were closed sact_relayed_connections_total grew by %s. ", r.mode, r.open, r.bypassed, pathCounts(r.relayed))
	}
	b.md.WriteString("\n\n")
	for _, r := range rows {
		fmt.Fprintf(&b.md, "The slab caches that grew most with the %s relay's connections (bytes of slabs per connection): %s; TCP buffer pages %+d. ", r.mode, cachesText(r.caches, r.n), r.tcpAfter-r.tcpBefore)
	}
	b.md.WriteString("\n\n")

	const what = "10,000 idle relayed connections: kernel relay memory vs splice relay (sact RSS + kernel Slab per connection)"
	switch {
	case !k.loaded:
		b.goal(what, "<= 1.00×", false, "not measured: the kernel relay did not load")
	case !sp.relayedOnly() || !k.relayedOnly():
		b.goal(what, "<= 1.00×", false, fmt.Sprintf("%s, but not all connections took their row's path", ratio(k.totalPer(), sp.totalPer())))
	default:
		b.goal(what, "<= 1.00×", k.totalPer() <= sp.totalPer(), ratio(k.totalPer(), sp.totalPer()))
	}
	return nil
}

// connsRow runs one sact with SACT_RELAY=mode and measures n idle connections through it.
func (b *bench) connsRow(mode string, n int, window time.Duration) (connsResult, error) {
	r := connsResult{mode: mode, window: window}
	app := fmt.Sprintf("bench-conns-%s-%d", mode, os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app).Run()
	runDir := filepath.Join(b.dir, "run-conns-"+mode)
	sock := filepath.Join(runDir, "admin.sock")
	addr := freeAddr()
	d, err := b.startSactWith(fmt.Sprintf("apps:\n  %s:\n    image: %s\n    env: {NAME: conns, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    idle: 1h\n    stop_timeout: 2s\n", app, b.image, addr), runDir, []string{"SACT_RELAY=" + mode})
	if err != nil {
		return r, err
	}
	defer d.stop()
	if log, _ := os.ReadFile(d.log); strings.Contains(string(log), "kernel=loaded") {
		r.loaded = true
	}
	c, err := oneRequest(addr)
	if err != nil {
		return r, fmt.Errorf("starting the app: %w", err)
	}
	c.Close()
	if err := waitOpen(sock, app, 0, 30*time.Second); err != nil {
		return r, err
	}
	time.Sleep(time.Second)

	pid := d.cmd.Process.Pid
	st0, err := appCounts(sock, app)
	if err != nil {
		return r, err
	}
	rel0, goBefore, err := relayMetrics(sock, app)
	if err != nil {
		return r, err
	}
	caches0, err := slabCaches()
	if err != nil {
		return r, err
	}
	_, tcp0 := sockstatTCP()
	slab0, err := meminfoSlab()
	if err != nil {
		return r, err
	}
	if r.before, err = readUsage(pid); err != nil {
		return r, err
	}

	fmt.Fprintf(os.Stderr, "scale: opening %d connections through the %s relay\n", n, mode)
	conns, err := openIdle(addr, n)
	closeAll := sync.OnceFunc(func() {
		for _, c := range conns {
			c.Close()
		}
	})
	defer closeAll()
	if err != nil {
		return r, err
	}
	r.n = len(conns)
	time.Sleep(2 * time.Second)
	if r.after, err = readUsage(pid); err != nil {
		return r, err
	}
	if r.slabAfter, err = meminfoSlab(); err != nil {
		return r, err
	}
	r.slabBefore = slab0
	_, r.tcpAfter = sockstatTCP()
	r.tcpBefore = tcp0
	caches1, err := slabCaches()
	if err != nil {
		return r, err
	}
	r.caches = slabGrew(caches0, caches1)
	_, r.goAfter, err = relayMetrics(sock, app)
	if err != nil {
		return r, err
	}
	r.goBefore = goBefore
	time.Sleep(window)
	held, err := readUsage(pid)
	if err != nil {
		return r, err
	}
	r.cpu = held.cpu - r.after.cpu
	st1, err := appCounts(sock, app)
	if err != nil {
		return r, err
	}
	r.open = st1.Open

	closeAll()
	if err := waitOpen(sock, app, 0, 60*time.Second); err != nil {
		return r, err
	}
	st2, err := appCounts(sock, app)
	if err != nil {
		return r, err
	}
	r.bypassed = st2.BypassConnections - st0.BypassConnections
	rel1, _, err := relayMetrics(sock, app)
	if err != nil {
		return r, err
	}
	r.relayed = map[string]float64{}
	for p, v := range rel1 {
		if g := v - rel0[p]; g != 0 {
			r.relayed[p] = g
		}
	}
	return r, nil
}

// loopbackDialer binds its sockets to 127.0.0.1 before connecting, which the kernel
// relay's connect-time bypass leaves to sact when the upstream is not on loopback: the
// connections are relayed, not sent past sact.
//
// IP_BIND_ADDRESS_NO_PORT leaves the port to connect, which may share it with sockets
// to other addresses: a bind to port 0 takes a port of the host's 28,000 for itself,
// and 9,488 of them beside sact's 9,488 dials to the app and the last row's TIME_WAIT
// ran the range out in a full run (sact's dials failed: cannot assign requested address).
var loopbackDialer = net.Dialer{Timeout: 30 * time.Second, LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1)},
	Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		if err := c.Control(func(fd uintptr) {
			serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_IP, unix.IP_BIND_ADDRESS_NO_PORT, 1)
		}); err != nil {
			return err
		}
		return serr
	}}

// openIdle opens n connections to addr, each after one answered request, and returns them.
func openIdle(addr string, n int) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	errs := make(chan error, n)
	sem := make(chan struct{}, 64)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			c, err := oneRequest(addr)
			if err != nil {
				errs <- err
				return
			}
			conns[i] = c
		})
	}
	wg.Wait()
	close(errs)
	var open []net.Conn
	for _, c := range conns {
		if c != nil {
			open = append(open, c)
		}
	}
	if err, failed := <-errs, len(errs)+1; err != nil {
		return open, fmt.Errorf("%d of %d connections failed, the first: %w", failed, n, err)
	}
	return open, nil
}

// oneRequest makes a keep-alive request on a new connection from 127.0.0.1, reads the
// whole answer and returns the connection, still open.
func oneRequest(addr string) (net.Conn, error) {
	c, err := loopbackDialer.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"); err != nil {
		c.Close()
		return nil, err
	}
	// The bufio.Reader may not read past the response: nothing follows it.
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	if err != nil {
		c.Close()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		c.Close()
		return nil, fmt.Errorf("status %s", resp.Status)
	}
	c.SetDeadline(time.Time{})
	return c, nil
}

// waitOpen waits until app has n open connections in sact's admin API at sock.
func waitOpen(sock, app string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		st, err := appCounts(sock, app)
		if err != nil {
			return err
		}
		if st.Open == n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still has %d open connections after %v, want %d", app, st.Open, timeout, n)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// adminGet reads path from sact's admin API at the unix socket sock.
func adminGet(sock, path string) ([]byte, error) {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	resp, err := c.Get("http://sact" + path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("reading %s: %s: %s", path, resp.Status, tail(body, 1000))
	}
	return body, nil
}

// relayMetrics reads app's sact_relayed_connections_total by path, and sact's
// goroutines, from its /metrics.
func relayMetrics(sock, app string) (map[string]float64, float64, error) {
	body, err := adminGet(sock, "/metrics")
	if err != nil {
		return nil, 0, err
	}
	paths := map[string]float64{}
	var goroutines float64
	for line := range strings.Lines(string(body)) {
		name, labels, value, ok := metricLine(line)
		if !ok {
			continue
		}
		switch {
		case name == "go_goroutines":
			goroutines = value
		case name == "sact_relayed_connections_total" && labels["app"] == app:
			paths[labels["path"]] += value
		}
	}
	return paths, goroutines, nil
}

// metricLine parses one sample of Prometheus's text format (labels without commas or
// escaped quotes in their values, which are sact's).
func metricLine(line string) (name string, labels map[string]string, value float64, ok bool) {
	line = strings.TrimSpace(line)
	if line == "" || line[0] == '#' {
		return "", nil, 0, false
	}
	sp := strings.LastIndexByte(line, ' ')
	if sp < 0 {
		return "", nil, 0, false
	}
	v, err := strconv.ParseFloat(line[sp+1:], 64)
	if err != nil {
		return "", nil, 0, false
	}
	head := line[:sp]
	labels = map[string]string{}
	if i := strings.IndexByte(head, '{'); i >= 0 {
		for kv := range strings.SplitSeq(strings.TrimSuffix(head[i+1:], "}"), ",") {
			if k, v, ok := strings.Cut(kv, "="); ok {
				labels[k] = strings.Trim(v, `"`)
			}
		}
		head = head[:i]
	}
	return head, labels, v, true
}

// pathCounts writes counts by relay path, "9488 kernel" or "none".
func pathCounts(m map[string]float64) string {
	if len(m) == 0 {
		return "none"
	}
	var parts []string
	for _, p := range slices.Sorted(maps.Keys(m)) {
		parts = append(parts, fmt.Sprintf("%.0f %s", m[p], p))
	}
	return strings.Join(parts, ", ")
}

func ratio(a, b float64) string {
	if b <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// meminfoSlab is the kernel's slab memory, SReclaimable+SUnreclaim, in bytes.
func meminfoSlab() (int64, error) {
	r, err := statusField("/proc/meminfo", "SReclaimable:")
	if err != nil {
		return 0, err
	}
	u, err := statusField("/proc/meminfo", "SUnreclaim:")
	if err != nil {
		return 0, err
	}
	return (r + u) * 1024, nil
}

// sockstatTCP is the host's TCP sockets in TIME_WAIT and its TCP buffer pages, from
// /proc/net/sockstat (-1 each if it cannot be read).
func sockstatTCP() (tw, mem int64) {
	tw, mem = -1, -1
	data, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return
	}
	for line := range strings.Lines(string(data)) {
		rest, ok := strings.CutPrefix(line, "TCP:")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			v, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "tw":
				tw = v
			case "mem":
				mem = v
			}
		}
	}
	return
}

// waitTimeWait waits, at most timeout, until the host has few TCP sockets in TIME_WAIT.
func waitTimeWait(timeout time.Duration) {
	fmt.Fprintf(os.Stderr, "scale: waiting for TIME_WAIT sockets to go\n")
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(time.Second) {
		if tw, _ := sockstatTCP(); tw < 100 {
			break
		}
	}
	// What the sockets freed on their way out (RCU, the slab's partial lists) settles.
	time.Sleep(2 * time.Second)
}

// slabGrowth is how much one slab cache grew, in bytes of its slabs.
type slabGrowth struct {
	name  string
	bytes int64
}

// slabCaches reads each slab cache's size in bytes of slabs (num_slabs × pages per slab)
// from /proc/slabinfo, which only root may read; nil without it.
func slabCaches() (map[string]int64, error) {
	f, err := os.Open("/proc/slabinfo")
	if os.IsPermission(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	page := int64(os.Getpagesize())
	out := map[string]int64{}
	s := bufio.NewScanner(f)
	for s.Scan() {
		// name active_objs num_objs objsize objperslab pagesperslab : tunables ... :
		// slabdata active_slabs num_slabs sharedavail
		f := strings.Fields(s.Text())
		if len(f) < 16 || f[0] == "#" || f[6] != ":" || f[12] != "slabdata" {
			continue
		}
		pps, _ := strconv.ParseInt(f[5], 10, 64)
		slabs, _ := strconv.ParseInt(f[14], 10, 64)
		out[f[0]] = slabs * pps * page
	}
	return out, s.Err()
}

// slabGrew lists the caches that grew from before to after, most first.
func slabGrew(before, after map[string]int64) []slabGrowth {
	var g []slabGrowth
	for name, a := range after {
		if d := a - before[name]; d > 0 {
			g = append(g, slabGrowth{name, d})
		}
	}
	slices.SortFunc(g, func(x, y slabGrowth) int { return int(y.bytes - x.bytes) })
	return g
}

// cachesText names the largest growths, per connection.
func cachesText(g []slabGrowth, n int) string {
	if len(g) == 0 {
		return "not known (/proc/slabinfo needs root)"
	}
	var parts []string
	for _, c := range g[:min(len(g), 8)] {
		parts = append(parts, fmt.Sprintf("%s %.0f", c.name, float64(c.bytes)/float64(n)))
	}
	return strings.Join(parts, ", ")
}
