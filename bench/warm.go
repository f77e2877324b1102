package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// warm compares the warm path: direct, through sact (relay and handoff), through
// systemd-socket-proxyd (the glue sact replaces) and through nginx's stream proxy; from
// this host's loopback, then from a network namespace of the bench's own.
func (b *bench) warm() error {
	// The namespace comes first: sact and nginx listen on its gateway address too.
	ns, nsErr := makeNetns()
	if nsErr != nil {
		if benchRequired() {
			return fmt.Errorf("making the bench's network namespace: %w", nsErr)
		}
		fmt.Fprintf(os.Stderr, "bench: no warm path from another network namespace: %v\n", nsErr)
	} else {
		defer func() {
			if err := ns.remove(); err != nil {
				fmt.Fprintf(os.Stderr, "bench: removing the network namespace: %v\n", err)
			}
		}()
	}
	// Where sact's relay, its kernel relay and nginx listen for the namespace, as extra
	// entries of their listen lists.
	var nsRelay, nsKernel, nsStream, nsSockmap, relayListen, kernelListen string
	if ns != nil {
		nsRelay, nsKernel, nsStream, nsSockmap = freeAddrOn(netnsHostIP), freeAddrOn(netnsHostIP), freeAddrOn(netnsHostIP), freeAddrOn(netnsHostIP)
		relayListen, kernelListen = fmt.Sprintf(`, "tcp:%s"`, nsRelay), fmt.Sprintf(`, "tcp:%s"`, nsKernel)
	}

	app := fmt.Sprintf("bench-warm-%d", os.Getpid())
	hand := fmt.Sprintf("bench-warm-handoff-%d", os.Getpid())
	kapp := fmt.Sprintf("bench-warm-kernel-%d", os.Getpid())
	sapp := fmt.Sprintf("bench-warm-sockmap-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app, "sact-"+hand, "sact-"+kapp, "sact-"+sapp).Run()
	sactAddr, handAddr := freeAddr(), freeAddr()
	sactUnix := filepath.Join(b.dir, "warm.sock")
	d, err := b.startSact(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: warm, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s", "unix:%[6]s"%[7]s]
    port: 8080
    idle: 1h
    stop_timeout: 2s
  %[4]s:
    image: %[2]s
    env: {NAME: warm-handoff}
    listen: ["tcp:%[5]s"]
    handoff: true
    network: none
    idle: 1h
    stop_timeout: 2s
    on_exit: stop
`, app, b.image, sactAddr, hand, handAddr, sactUnix, relayListen))
	if err != nil {
		return err
	}
	defer d.stop()
	// The kernel relay (issue 18), in a second sact: the relay's mode is per process.
	kernelAddr := freeAddr()
	kd, err := b.startSactWith(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: warm-kernel, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"%[4]s]
    port: 8080
    idle: 1h
    stop_timeout: 2s
`, kapp, b.image, kernelAddr, kernelListen), filepath.Join(b.dir, "run-kernel"), []string{"SACT_RELAY=kernel"})
	if err != nil {
		return err
	}
	defer kd.stop()
	firsts := []string{sactAddr, handAddr, kernelAddr}
	if ns != nil {
		// The sockmap relay alone, for clients elsewhere: the kernel path with the
		// translation of their connections off (a third sact).
		sd, err := b.startSactWith(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: warm-sockmap, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 1h
    stop_timeout: 2s
`, sapp, b.image, nsSockmap), filepath.Join(b.dir, "run-sockmap"), []string{"SACT_RELAY=kernel", "SACT_INGRESS=off"})
		if err != nil {
			return err
		}
		defer sd.stop()
		firsts = append(firsts, nsSockmap)
	}
	for _, a := range firsts {
		if err := firstByte("tcp", a); err != nil {
			return fmt.Errorf("first request through sact: %w", err)
		}
	}
	direct, err := b.containerAddr("sact-" + app)
	if err != nil {
		return err
	}
	// The kernel path's own container, direct: its goals' baseline. Two containers of
	// one image differ here by as much as the path does (a full run had the bypass, a
	// direct connection itself, at 0.73x the other container's bulk).
	kdirect, err := b.containerAddr("sact-" + kapp)
	if err != nil {
		return err
	}
	if ns != nil {
		subnet, err := b.containerNet("sact-" + app)
		if err != nil {
			return err
		}
		if err := ns.routeTo(subnet); err != nil {
			return err
		}
	}

	proxydAddr := freeAddr()
	proxyd := exec.Command("systemd-socket-activate", "-l", proxydAddr, "/lib/systemd/systemd-socket-proxyd", direct)
	if err := proxyd.Start(); err != nil {
		return fmt.Errorf("starting systemd-socket-proxyd: %w", err)
	}
	defer func() { proxyd.Process.Kill(); proxyd.Wait() }()
	waitListening(proxydAddr)

	streamAddr := freeAddr()
	var streamMore []string
	if ns != nil {
		streamMore = []string{nsStream}
	}
	stopStream, err := b.nginxStream(streamAddr, direct, streamMore...)
	if err != nil {
		return err
	}
	defer stopStream()

	targets := []target{
		{"direct to the container", direct},
		{"sact L4 relay (tcp -> container IP)", sactAddr},
		{"systemd-socket-proxyd (tcp -> container IP)", proxydAddr},
		{"nginx stream proxy (tcp -> container IP)", streamAddr},
		{"sact handoff (the app accepts on sact's socket)", handAddr},
		{"sact L4 kernel relay, local client (tcp -> container IP, SACT_RELAY=kernel: the connect-time bypass, past the relay)", kernelAddr},
		{ownDirect, kdirect},
	}
	kernelIdx, ownIdx := len(targets)-2, len(targets)-1
	rounds, dur := b.wrkRounds()
	results, err := wrkAll(targets, rounds, dur)
	if err != nil {
		return err
	}
	fmt.Fprintf(&b.md, "## Warm path: small HTTP requests\n\n")
	fmt.Fprintf(&b.md, "`wrk -t2 -c32 -d%s --latency`, keep-alive, `GET /` answering 16 bytes; %d round(s), targets interleaved; medians over rounds (min-max of requests/s in brackets). ", dur, rounds)
	fmt.Fprintf(&b.md, "nginx runs `worker_processes auto` with a `stream { server { proxy_pass } }` block (module ngx_stream_module).\n\n")
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: |\n")
	base := medianF(results[0].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, spread(results[i].rps), rps/base, medianF(results[i].p50), medianF(results[i].p99))
	}
	relay, proxydRPS, streamRPS := medianF(results[1].rps), medianF(results[2].rps), medianF(results[3].rps)
	b.goal("warm L4 relay ahead of systemd-socket-proxyd (requests/s)", "> 1.00×", relay > proxydRPS, fmt.Sprintf("%.2f×", relay/proxydRPS))
	b.goal("warm L4 relay ahead of nginx stream (requests/s)", "> 1.00×", relay > streamRPS, fmt.Sprintf("%.2f×", relay/streamRPS))
	kernel, own := medianF(results[kernelIdx].rps), medianF(results[ownIdx].rps)
	fmt.Fprintf(&b.md, "\nThe kernel relay's goals compare it with direct to its own container (the last row), measured in the same rounds: %.2f× (%.2f× the first row's container).\n", kernel/own, kernel/base)
	b.goal("warm L4 kernel relay vs direct (requests/s)", ">= 0.80×", kernel >= 0.8*own, fmt.Sprintf("%.2f×", kernel/own))
	b.goal("warm L4 kernel relay vs nginx stream (requests/s)", ">= 1.30×", kernel >= 1.3*streamRPS, fmt.Sprintf("%.2f×", kernel/streamRPS))

	if err := b.unixLoad(direct, sactAddr, sactUnix, rounds, dur); err != nil {
		return err
	}
	bulk := append(slices.Clone(targets), target{"sact L4 relay (unix -> container IP)", "unix:" + sactUnix})
	if err := b.bulk(bulk, b.bulkRounds()); err != nil {
		return err
	}
	return b.warmFromNetns(ns, nsErr, []sactCounts{
		{filepath.Join(b.dir, "run-kernel", "admin.sock"), kapp, "the kernel path's"},
		{filepath.Join(b.dir, "run-sockmap", "admin.sock"), sapp, "the sockmap relay's"},
	}, []target{
		{"direct to the container (forwarded by the host)", direct},
		{"sact L4 relay (tcp -> container IP)", nsRelay},
		{"nginx stream proxy (tcp -> container IP)", nsStream},
		{"sact L4 kernel path (tcp -> container IP, SACT_RELAY=kernel: translated past the relay by nftables)", nsKernel},
		{"sact L4 kernel relay, sockmap (tcp -> container IP, SACT_RELAY=kernel SACT_INGRESS=off)", nsSockmap},
		{ownDirect + " (forwarded by the host)", kdirect},
	})
}

// sactCounts names an app of a sact whose admin API counts its connections.
type sactCounts struct{ sock, app, whose string }

// warmFromNetns is the warm path from another network namespace, where a client of
// sact is not local: the kernel path translates its connections past the relay, the
// sockmap relay (the kernel path with that off) relays them. targets are direct, the
// relay, nginx stream, the kernel path and the sockmap relay, in that order; ns is nil,
// and why says why, if there is no namespace. counted are the last two's sacts, whose
// counts show which way their connections went.
func (b *bench) warmFromNetns(ns *benchNetns, why error, counted []sactCounts, targets []target) error {
	const (
		goalRPS    = "warm L4 kernel relay from another netns vs direct (requests/s)"
		goalStream = "warm L4 kernel relay from another netns vs nginx stream (requests/s)"
		goalBulk   = "warm L4 kernel relay from another netns vs direct (bulk MB/s)"
	)
	fmt.Fprintf(&b.md, "## Warm path from another network namespace\n\n")
	if ns == nil {
		fmt.Fprintf(&b.md, "Not measured: %v.\n\n", why)
		for _, g := range []struct{ what, target string }{{goalRPS, ">= 0.80×"}, {goalStream, ">= 1.30×"}, {goalBulk, ">= 0.90×"}} {
			b.goal(g.what, g.target, false, "not measured")
		}
		return nil
	}
	var before []appStatus
	for _, c := range counted {
		st, err := appCounts(c.sock, c.app)
		if err != nil {
			return err
		}
		before = append(before, st)
	}
	rounds, dur := b.wrkRounds()
	results, err := wrkAllFrom(ns.command(), targets, rounds, dur)
	if err != nil {
		return err
	}
	size := b.bulkSize()
	bulkRounds := b.bulkRounds()
	rates, err := bulkRates(ns.dial, targets, bulkRounds, size)
	if err != nil {
		return err
	}
	var counts []string
	for i, c := range counted {
		after, err := appCounts(c.sock, c.app)
		if err != nil {
			return err
		}
		counts = append(counts, fmt.Sprintf("%s sact accepted %d connection(s) and sent %d past the relay", c.whose,
			after.Connections-before[i].Connections, after.BypassConnections-before[i].BypassConnections))
	}
	fmt.Fprintf(&b.md, "The client runs in a network namespace the bench makes (%s), joined to the host by a veth pair (%s there, %s on the host): it is not local to sact, as one on another host would not be, minus the wire. sact (its relay, and in two more processes its kernel path and its sockmap relay alone) and nginx also listen on %s and dial the container from the host; direct goes through the host's forwarding to the container's bridge, and is this section's baseline. ", ns.name, netnsIP, netnsHostIP, netnsHostIP)
	fmt.Fprintf(&b.md, "Compare within this section only: the loopback rows above have no veth and no forwarding in them. ")
	fmt.Fprintf(&b.md, "In this section %s (their admin APIs' counts; the sockmap relay's must send none past it).\n\n", strings.Join(counts, ", and "))
	fmt.Fprintf(&b.md, "### Small HTTP requests\n\n`ip netns exec %s wrk -t2 -c32 -d%s --latency`, keep-alive, `GET /` answering 16 bytes; %d round(s), targets interleaved; medians over rounds (min-max of requests/s in brackets).\n\n", ns.name, dur, rounds)
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: |\n")
	base := medianF(results[0].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, spread(results[i].rps), rps/base, medianF(results[i].p50), medianF(results[i].p99))
	}
	fmt.Fprintf(&b.md, "\n### Bulk download\n\nOne `GET /bytes?n=%d` on one connection made in the namespace, %d round(s), interleaved; medians (min-max in brackets).\n\n| path | MB/s | vs direct |\n| --- | ---: | ---: |\n", size, bulkRounds)
	baseBulk := medianF(rates[0])
	for i, t := range targets {
		m := medianF(rates[i])
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f |\n", t.name, m, spread(rates[i]), m/baseBulk)
	}
	b.md.WriteString("\n")
	own := ownRow(targets)
	kernel, stream, ownRPS := medianF(results[3].rps), medianF(results[2].rps), medianF(results[own].rps)
	k, ownBulk := medianF(rates[3]), medianF(rates[own])
	fmt.Fprintf(&b.md, "The kernel path's goals compare it with direct to its own container (the last row), in the same rounds: %.2f× in requests/s and %.2f× in bulk (%.2f× and %.2f× the first row's container).\n\n", kernel/ownRPS, k/ownBulk, kernel/base, k/baseBulk)
	b.goal(goalRPS, ">= 0.80×", kernel >= 0.8*ownRPS, fmt.Sprintf("%.2f×", kernel/ownRPS))
	b.goal(goalStream, ">= 1.30×", kernel >= 1.3*stream, fmt.Sprintf("%.2f×", kernel/stream))
	b.goal(goalBulk, ">= 0.90×", k >= 0.9*ownBulk, fmt.Sprintf("%.2f×", k/ownBulk))
	return nil
}

// unixLoad compares sact's unix listener with its tcp one and with the app directly. wrk
// cannot connect to a unix socket, so all three are driven by the same Go client, wrk's
// pattern: 32 keep-alive connections, one request at a time on each.
func (b *bench) unixLoad(direct, sactTCP, sactUnix string, rounds int, dur string) error {
	d, err := time.ParseDuration(dur)
	if err != nil {
		return err
	}
	targets := []target{
		{"direct to the container (tcp)", direct},
		{"sact L4 relay (tcp -> container IP)", sactTCP},
		{"sact L4 relay (unix -> container IP)", "unix:" + sactUnix},
	}
	results := make([]wrkResult, len(targets))
	for r := range rounds {
		for i, t := range targets {
			fmt.Fprintf(os.Stderr, "load round %d: %s\n", r+1, t.name)
			rps, p50, p99, err := load(t.addr, 32, d)
			if err != nil {
				return fmt.Errorf("load through %s: %w", t.name, err)
			}
			results[i].rps = append(results[i].rps, rps)
			results[i].p50 = append(results[i].p50, p50)
			results[i].p99 = append(results[i].p99, p99)
		}
	}
	fmt.Fprintf(&b.md, "\n### The unix listener (what nginx in front of sact connects to)\n\n")
	fmt.Fprintf(&b.md, "wrk cannot connect to a unix socket, so these three are driven by the bench's own Go client with wrk's pattern (32 keep-alive connections, `GET /`, %s, %d round(s)); compare within this table only.\n\n", dur, rounds)
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: |\n")
	base := medianF(results[0].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, spread(results[i].rps), rps/base, medianF(results[i].p50), medianF(results[i].p99))
	}
	return nil
}

// bulkSize is the size of the bulk download.
func (b *bench) bulkSize() int64 {
	if b.quick {
		return 256 << 20
	}
	return 1 << 30
}

// bulkRates downloads size bytes through each target, rounds times, interleaved; the
// rates in MB/s, per target.
func bulkRates(dial dialFunc, targets []target, rounds int, size int64) ([][]float64, error) {
	rates := make([][]float64, len(targets))
	for range rounds {
		for i, t := range targets {
			fmt.Fprintf(os.Stderr, "download: %s\n", t.name)
			rate, err := download(dial, t.addr, size)
			if err != nil {
				return nil, fmt.Errorf("download through %s: %w", t.name, err)
			}
			rates[i] = append(rates[i], rate)
		}
	}
	return rates, nil
}

// bulk measures one large download through each target.
func (b *bench) bulk(targets []target, rounds int) error {
	size := b.bulkSize()
	fmt.Fprintf(&b.md, "\n## Warm path: bulk download\n\nOne `GET /bytes?n=%d` on one connection, %d round(s); medians (min-max in brackets).\n\n| path | MB/s | vs direct |\n| --- | ---: | ---: |\n", size, rounds)
	var baseBulk float64
	rates, err := bulkRates(nil, targets, rounds, size)
	if err != nil {
		return err
	}
	for i, t := range targets {
		m := medianF(rates[i])
		if i == 0 {
			baseBulk = m
		}
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f |\n", t.name, m, spread(rates[i]), m/baseBulk)
	}
	relay := medianF(rates[1])
	b.goal("warm L4 relay ahead of systemd-socket-proxyd (bulk MB/s)", "> 1.00×", relay > medianF(rates[2]), fmt.Sprintf("%.2f×", relay/medianF(rates[2])))
	b.goal("warm L4 relay ahead of nginx stream (bulk MB/s)", "> 1.00×", relay > medianF(rates[3]), fmt.Sprintf("%.2f×", relay/medianF(rates[3])))
	own := medianF(rates[ownRow(targets)])
	for i, t := range targets {
		if strings.Contains(t.name, "kernel relay") {
			k := medianF(rates[i])
			fmt.Fprintf(&b.md, "\nThe kernel relay's goal compares it with direct to its own container (the row so named), in the same rounds: %.2f× (%.2f× the first row's container).\n", k/own, k/baseBulk)
			b.goal("warm L4 kernel relay vs direct (bulk MB/s)", ">= 0.90×", k >= 0.9*own, fmt.Sprintf("%.2f×", k/own))
		}
	}
	b.md.WriteString("\n")
	return nil
}

// ownDirect names the row of direct connections to the kernel path's own container, the
// baseline of its goals.
const ownDirect = "direct to the kernel path's own container"

// ownRow is the index of the ownDirect row in targets (0, the first direct row, if none).
func ownRow(targets []target) int {
	for i, t := range targets {
		if strings.HasPrefix(t.name, ownDirect) {
			return i
		}
	}
	return 0
}

// spread is "(min-max)" of a set of rates, or nothing for a single round.
func spread(v []float64) string {
	if len(v) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%.0f-%.0f)", slices.Min(v), slices.Max(v))
}

// nginxStream runs Debian's nginx as a plain L4 proxy (its stream module) from addr, and
// any more addresses, to upstream: the other common way to put a socket in front of a
// container.
func (b *bench) nginxStream(addr, upstream string, more ...string) (stop func(), err error) {
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("nginx's stream module is missing (apt-get install libnginx-mod-stream, see scripts/install-deps): %w", err)
	}
	dir := filepath.Join(b.dir, "nginx-stream")
	listen := "listen " + addr + ";"
	for _, a := range more {
		listen += "\n    listen " + a + ";"
	}
	stop, err = runNginx(dir, addr, fmt.Sprintf(`load_module %[1]s;
worker_processes auto;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log;
events { worker_connections 1024; }
stream {
  server {
    %[3]s
    proxy_pass %[4]s;
  }
}
`, module, dir, listen, upstream))
	if err != nil {
		return nil, err
	}
	for _, a := range more {
		if !waitListening(a) {
			stop()
			return nil, fmt.Errorf("nginx never listened on %s", a)
		}
	}
	return stop, nil
}

var wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
var wrkPct = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)

// wrk runs wrk against url, under prefix if there is one (ip netns exec NS, say).
func wrk(prefix []string, url, dur string, args ...string) (rps, p50, p99 float64, err error) {
	argv := append(slices.Clone(prefix), "wrk", "-t2", "-c32", "-d"+dur, "--latency", url)
	out, err := exec.Command(argv[0], append(argv[1:], args...)...).CombinedOutput()
	if err != nil {
		return 0, 0, 0, fmt.Errorf("%v: %s", err, out)
	}
	if strings.Contains(string(out), "Non-2xx") || strings.Contains(string(out), "Socket errors") {
		return 0, 0, 0, fmt.Errorf("wrk saw errors:\n%s", out)
	}
	m := wrkRPS.FindSubmatch(out)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("no Requests/sec in wrk output:\n%s", out)
	}
	rps, _ = strconv.ParseFloat(string(m[1]), 64)
	for _, p := range wrkPct.FindAllSubmatch(out, -1) {
		v, _ := strconv.ParseFloat(string(p[2]), 64)
		switch string(p[3]) {
		case "us":
			v /= 1000
		case "s":
			v *= 1000
		}
		if string(p[1]) == "50" {
			p50 = v
		} else {
			p99 = v
		}
	}
	return rps, p50, p99, nil
}

// dialFunc makes a connection, maybe from somewhere other than the bench's own namespace.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// download fetches n bytes from the test server at addr (host:port, or unix:/path) and
// returns the rate. A nil dial is the plain dialer.
func download(dial dialFunc, addr string, n int64) (mbps float64, err error) {
	network, dialAddr := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, dialAddr, addr = "unix", p, "bench"
	}
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	tr := &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return dial(ctx, network, dialAddr)
	}}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr}
	began := time.Now()
	resp, err := c.Get(fmt.Sprintf("http://%s/bytes?n=%d", addr, n))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	got, err := io.Copy(io.Discard, bufio.NewReaderSize(resp.Body, 256<<10))
	if err != nil {
		return 0, err
	}
	if got != n {
		return 0, fmt.Errorf("got %d bytes, want %d", got, n)
	}
	return float64(n) / 1e6 / time.Since(began).Seconds(), nil
}

// appStatus is the part of an app's status in sact's admin API the bench reads.
type appStatus struct {
	Open              int    `json:"open_connections"`
	Connections       uint64 `json:"connections_total"`
	BypassConnections uint64 `json:"bypass_connections"`
}

// appCounts reads app's status from the admin API at the unix socket sock.
func appCounts(sock, app string) (appStatus, error) {
	body, err := adminGet(sock, "/api/apps/"+app)
	if err != nil {
		return appStatus{}, fmt.Errorf("reading %s's status: %w", app, err)
	}
	var st appStatus
	if err := json.Unmarshal(body, &st); err != nil {
		return appStatus{}, fmt.Errorf("reading %s's status: %w", app, err)
	}
	return st, nil
}
