package main

import (
	"bufio"
	"context"
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
// systemd-socket-proxyd (the glue sact replaces) and through nginx's stream proxy.
func (b *bench) warm() error {
	app := fmt.Sprintf("bench-warm-%d", os.Getpid())
	hand := fmt.Sprintf("bench-warm-handoff-%d", os.Getpid())
	kapp := fmt.Sprintf("bench-warm-kernel-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app, "sact-"+hand, "sact-"+kapp).Run()
	sactAddr, handAddr := freeAddr(), freeAddr()
	sactUnix := filepath.Join(b.dir, "warm.sock")
	d, err := b.startSact(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: warm, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s", "unix:%[6]s"]
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
`, app, b.image, sactAddr, hand, handAddr, sactUnix))
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
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 1h
    stop_timeout: 2s
`, kapp, b.image, kernelAddr), filepath.Join(b.dir, "run-kernel"), []string{"SACT_RELAY=kernel"})
	if err != nil {
		return err
	}
	defer kd.stop()
	for _, a := range []string{sactAddr, handAddr, kernelAddr} {
		if err := firstByte("tcp", a); err != nil {
			return fmt.Errorf("first request through sact: %w", err)
		}
	}
	direct, err := b.containerAddr("sact-" + app)
	if err != nil {
		return err
	}

	proxydAddr := freeAddr()
	proxyd := exec.Command("systemd-socket-activate", "-l", proxydAddr, "/lib/systemd/systemd-socket-proxyd", direct)
	if err := proxyd.Start(); err != nil {
		return fmt.Errorf("starting systemd-socket-proxyd: %w", err)
	}
	defer func() { proxyd.Process.Kill(); proxyd.Wait() }()
	waitListening(proxydAddr)

	streamAddr := freeAddr()
	stopStream, err := b.nginxStream(streamAddr, direct)
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
		{"sact L4 kernel relay (tcp -> container IP, SACT_RELAY=kernel)", kernelAddr},
	}
	kernelIdx := len(targets) - 1
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
	kernel := medianF(results[kernelIdx].rps)
	b.goal("warm L4 kernel relay vs direct (requests/s)", ">= 0.80×", kernel >= 0.8*base, fmt.Sprintf("%.2f×", kernel/base))
	b.goal("warm L4 kernel relay vs nginx stream (requests/s)", ">= 1.30×", kernel >= 1.3*streamRPS, fmt.Sprintf("%.2f×", kernel/streamRPS))

	if err := b.unixLoad(direct, sactAddr, sactUnix, rounds, dur); err != nil {
		return err
	}
	bulk := append(slices.Clone(targets), target{"sact L4 relay (unix -> container IP)", "unix:" + sactUnix})
	return b.bulk(bulk, rounds)
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

// bulk measures one large download through each target.
func (b *bench) bulk(targets []target, rounds int) error {
	size := int64(1 << 30)
	if b.quick {
		size = 256 << 20
	}
	fmt.Fprintf(&b.md, "\n## Warm path: bulk download\n\nOne `GET /bytes?n=%d` on one connection, %d round(s); medians (min-max in brackets).\n\n| path | MB/s | vs direct |\n| --- | ---: | ---: |\n", size, rounds)
	var baseBulk float64
	var rates [][]float64
	for range rounds {
		for i, t := range targets {
			fmt.Fprintf(os.Stderr, "download: %s\n", t.name)
			rate, err := download(t.addr, size)
			if err != nil {
				return fmt.Errorf("download through %s: %w", t.name, err)
			}
			if len(rates) <= i {
				rates = append(rates, nil)
			}
			rates[i] = append(rates[i], rate)
		}
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
	for i, t := range targets {
		if strings.Contains(t.name, "kernel relay") {
			k := medianF(rates[i])
			b.goal("warm L4 kernel relay vs direct (bulk MB/s)", ">= 0.90×", k >= 0.9*baseBulk, fmt.Sprintf("%.2f×", k/baseBulk))
		}
	}
	b.md.WriteString("\n")
	return nil
}

// spread is "(min-max)" of a set of rates, or nothing for a single round.
func spread(v []float64) string {
	if len(v) < 2 {
		return ""
	}
	return fmt.Sprintf(" (%.0f-%.0f)", slices.Min(v), slices.Max(v))
}

// nginxStream runs Debian's nginx as a plain L4 proxy (its stream module) from addr to
// upstream: the other common way to put a socket in front of a container.
func (b *bench) nginxStream(addr, upstream string) (stop func(), err error) {
	const module = "/usr/lib/nginx/modules/ngx_stream_module.so"
	if _, err := os.Stat(module); err != nil {
		return nil, fmt.Errorf("nginx's stream module is missing (apt-get install libnginx-mod-stream, see scripts/install-deps): %w", err)
	}
	dir := filepath.Join(b.dir, "nginx-stream")
	return runNginx(dir, addr, fmt.Sprintf(`load_module %[1]s;
worker_processes auto;
daemon off;
pid %[2]s/nginx.pid;
error_log %[2]s/error.log;
events { worker_connections 1024; }
stream {
  server {
    listen %[3]s;
    proxy_pass %[4]s;
  }
}
`, module, dir, addr, upstream))
}

var wrkRPS = regexp.MustCompile(`Requests/sec:\s+([0-9.]+)`)
var wrkPct = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s)\s*$`)

func wrk(url, dur string, args ...string) (rps, p50, p99 float64, err error) {
	out, err := exec.Command("wrk", append([]string{"-t2", "-c32", "-d" + dur, "--latency", url}, args...)...).CombinedOutput()
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

// download fetches n bytes from the test server at addr (host:port, or unix:/path) and
// returns the rate.
func download(addr string, n int64) (mbps float64, err error) {
	network, dialAddr := "tcp", addr
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		network, dialAddr, addr = "unix", p, "bench"
	}
	tr := &http.Transport{DisableCompression: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, network, dialAddr)
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
