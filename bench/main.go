// Command bench measures sact against its baselines on this machine's Docker engine and
// writes the results to BENCHMARKS.md. Every comparison is made within one run, because
// the machine is shared and noisy: absolute numbers move, ratios much less.
//
//	go run ./bench            # full run
//	go run ./bench -quick     # CI-sized
//
// Scenarios:
//
//   - cold: time to first response byte for a cold app through sact, against the floor: the
//     same container started through the Engine API directly and polled until it answers.
//     The difference is what sact adds to a cold start.
//   - warm: requests/s and latency with wrk against the app directly, through sact's L4
//     relay, and through systemd-socket-proxyd (the glue sact replaces); bulk throughput of
//     a large download through each.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/testimage"
)

func main() {
	quick := flag.Bool("quick", false, "fewer repetitions (CI-sized)")
	out := flag.String("out", "BENCHMARKS.md", "file to write the results to")
	only := flag.String("only", "", "run one scenario: cold, warm, http or capacity (default: all)")
	flag.Parse()
	if err := run(context.Background(), *quick, *only, *out); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

type bench struct {
	ctx   context.Context
	dc    *client.Client
	image string
	sact  string // the built binary
	dir   string
	quick bool
	md    strings.Builder
}

func run(ctx context.Context, quick bool, only, out string) error {
	dir, err := os.MkdirTemp("", "sact-bench-")
	if err != nil {
		return err
	}
	b := &bench{ctx: ctx, dir: dir, quick: quick}
	ok := false
	defer func() {
		if ok {
			os.RemoveAll(dir)
		} else {
			fmt.Fprintf(os.Stderr, "bench: sact's logs are kept in %s\n", dir)
		}
	}()
	b.dc, err = client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "building the test image and sact")
	if b.image, err = testimage.TestServer(ctx); err != nil {
		return err
	}
	b.sact = filepath.Join(dir, "sact")
	build := exec.Command("go", "build", "-o", b.sact, "./cmd/sact")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // handoff runs it in containers
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building sact: %v: %s", err, out)
	}
	b.header()
	if only == "" || only == "cold" {
		if err := b.cold(); err != nil {
			return fmt.Errorf("cold start: %w", err)
		}
	}
	if only == "" || only == "warm" {
		if err := b.warm(); err != nil {
			return fmt.Errorf("warm path: %w", err)
		}
	}
	if only == "" || only == "capacity" {
		if err := b.capacity(); err != nil {
			return fmt.Errorf("capacity: %w", err)
		}
	}
	if only == "" || only == "http" {
		if err := b.front(); err != nil {
			return fmt.Errorf("http front door: %w", err)
		}
	}
	if err := os.WriteFile(out, []byte(b.md.String()), 0o644); err != nil {
		return err
	}
	ok = true
	fmt.Fprintf(os.Stderr, "wrote %s\n", out)
	return nil
}

func (b *bench) header() {
	host, _ := os.Hostname()
	cpu := "unknown CPU"
	if f, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		if m := regexp.MustCompile(`model name\s*:\s*(.*)`).FindSubmatch(f); m != nil {
			cpu = string(m[1])
		}
	}
	engine := "?"
	if v, err := b.dc.ServerVersion(b.ctx, client.ServerVersionOptions{}); err == nil {
		engine = v.Version + " (API " + v.APIVersion + ")"
	}
	mode := "full"
	if b.quick {
		mode = "quick"
	}
	fmt.Fprintf(&b.md, "# Benchmarks\n\nWritten by `go run ./bench` (%s mode) on %s.\n\n", mode, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b.md, "- machine: %s, %d CPUs (%s), %s/%s\n- Docker engine %s\n- %s\n\n", host, runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, engine, runtime.Version())
	fmt.Fprintf(&b.md, "The machine is shared and noisy: compare rows of one table (same run), not runs.\n\n")
}

// cold measures a cold request through sact against the engine's own start-to-ready time.
func (b *bench) cold() error {
	n := 15
	if b.quick {
		n = 5
	}
	// The floor: a created container started through the Engine API and polled.
	name := fmt.Sprintf("sact-bench-floor-%d", os.Getpid())
	cr, err := b.dc.ContainerCreate(b.ctx, client.ContainerCreateOptions{
		Name:   name,
		Config: &container.Config{Image: b.image, Env: []string{"LISTEN=tcp:0.0.0.0:8080", "NAME=floor"}},
	})
	if err != nil {
		return err
	}
	defer b.dc.ContainerRemove(context.Background(), cr.ID, client.ContainerRemoveOptions{Force: true})

	app := fmt.Sprintf("bench-cold-%d", os.Getpid())
	hand := fmt.Sprintf("bench-cold-handoff-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app, "sact-"+hand).Run()
	addr, handAddr := freeAddr(), freeAddr()
	d, err := b.startSact(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: cold, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 1s
    stop_timeout: 2s
  %[4]s:
    image: %[2]s
    env: {NAME: cold-handoff}
    listen: ["tcp:%[5]s"]
    handoff: true
    network: none
    idle: 1s
    stop_timeout: 2s
`, app, b.image, addr, hand, handAddr))
	if err != nil {
		return err
	}
	defer d.stop()

	// The first requests create the containers; the runs measure starts only.
	for _, a := range []string{addr, handAddr} {
		if err := firstByte("tcp", a); err != nil {
			return fmt.Errorf("creating the container through sact: %w", err)
		}
	}
	var floor, through, handed []time.Duration
	for i := range n {
		fmt.Fprintf(os.Stderr, "cold %d/%d\n", i+1, n)
		// Interleaved so that drift in the machine's load hits all alike, and each
		// measured while nothing else starts or stops: wait for both apps' stops, as sact
		// sees them (a request during a stop would wait for it and measure it too).
		for _, a := range []string{app, hand} {
			if err := d.waitLog(`msg="stopped app" app=`+a+" ", i+1, 20*time.Second); err != nil {
				return err
			}
		}
		t, err := b.floorOnce(cr.ID)
		if err != nil {
			return err
		}
		floor = append(floor, t)
		began := time.Now()
		if err := firstByte("tcp", addr); err != nil {
			return fmt.Errorf("cold request through sact: %w", err)
		}
		through = append(through, time.Since(began))

		if err := d.waitLog(`msg="stopped app" app=`+app+" ", i+2, 20*time.Second); err != nil {
			return err
		}
		began = time.Now()
		if err := firstByte("tcp", handAddr); err != nil {
			return fmt.Errorf("cold request through sact in handoff mode: %w", err)
		}
		handed = append(handed, time.Since(began))
	}
	mf, mt := median(floor), median(through)
	fmt.Fprintf(&b.md, "## Cold start: time to first response byte\n\n")
	fmt.Fprintf(&b.md, "A stopped, already created container of the test image (a static Go server); %d runs each, interleaved.\n", n)
	fmt.Fprintf(&b.md, "The floor is the Engine API's `start` of that container, then polling its IP until it answers, with no sact involved.\n\n")
	fmt.Fprintf(&b.md, "| path | median | min | max |\n| --- | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b.md, "| floor: engine start + poll, direct | %s | %s | %s |\n", ms(mf), ms(slices.Min(floor)), ms(slices.Max(floor)))
	mh := median(handed)
	fmt.Fprintf(&b.md, "| through sact (proxy mode, tcp) | %s | %s | %s |\n", ms(mt), ms(slices.Min(through)), ms(slices.Max(through)))
	fmt.Fprintf(&b.md, "| through sact (handoff mode, tcp, network none) | %s | %s | %s |\n\n", ms(mh), ms(slices.Min(handed)), ms(slices.Max(handed)))
	fmt.Fprintf(&b.md, "**sact's own share of a cold start: %s in proxy mode, %s in handoff mode** (median minus the floor's median; goal < 10 ms and about 0). ", ms(mt-mf), ms(mh-mf))
	fmt.Fprintf(&b.md, "Handoff vs proxy: %.2f× the time to first byte. A negative share is noise: the floor polls the app from outside, sact's handoff needs no poll at all.\n\n", float64(mh)/float64(mt))
	return nil
}

// floorOnce starts the container through the API and polls it like sact does, then stops it.
func (b *bench) floorOnce(id string) (time.Duration, error) {
	began := time.Now()
	if _, err := b.dc.ContainerStart(b.ctx, id, client.ContainerStartOptions{}); err != nil {
		return 0, err
	}
	addr, err := b.containerAddr(id)
	if err != nil {
		return 0, err
	}
	delay := time.Millisecond
	for {
		if err := firstByte("tcp", addr); err == nil {
			break
		}
		if time.Since(began) > 30*time.Second {
			return 0, fmt.Errorf("floor container never answered on %s", addr)
		}
		time.Sleep(delay)
		delay = min(delay*3/2+time.Millisecond, 20*time.Millisecond)
	}
	took := time.Since(began)
	timeout := 2
	_, err = b.dc.ContainerStop(b.ctx, id, client.ContainerStopOptions{Timeout: &timeout})
	return took, err
}

// firstByte sends one request on a new connection and returns once a response byte arrives.
func firstByte(network, addr string) error {
	c, err := net.DialTimeout(network, addr, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

// warm compares the warm path: direct, through sact, through systemd-socket-proxyd.
func (b *bench) warm() error {
	app := fmt.Sprintf("bench-warm-%d", os.Getpid())
	hand := fmt.Sprintf("bench-warm-handoff-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app, "sact-"+hand).Run()
	sactAddr, handAddr := freeAddr(), freeAddr()
	d, err := b.startSact(fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: warm, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
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
`, app, b.image, sactAddr, hand, handAddr))
	if err != nil {
		return err
	}
	defer d.stop()
	for _, a := range []string{sactAddr, handAddr} {
		if err := firstByte("tcp", a); err != nil {
			return err
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

	targets := []target{
		{"direct to the container", direct},
		{"sact L4 relay (tcp -> container IP)", sactAddr},
		{"systemd-socket-proxyd (tcp -> container IP)", proxydAddr},
		{"sact handoff (the app accepts on sact's socket)", handAddr},
	}
	rounds, dur := b.wrkRounds()
	results, err := wrkAll(targets, rounds, dur)
	if err != nil {
		return err
	}
	fmt.Fprintf(&b.md, "## Warm path: small HTTP requests\n\n")
	fmt.Fprintf(&b.md, "`wrk -t2 -c32 -d%s --latency`, keep-alive, `GET /` answering 16 bytes; %d round(s), targets interleaved; medians over rounds.\n\n", dur, rounds)
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: |\n")
	base := medianF(results[0].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, rps/base, medianF(results[i].p50), medianF(results[i].p99))
	}

	size := int64(1 << 30)
	if b.quick {
		size = 256 << 20
	}
	fmt.Fprintf(&b.md, "\n## Warm path: bulk download\n\nOne `GET /bytes?n=%d` on one connection, %d round(s); medians.\n\n| path | MB/s | vs direct |\n| --- | ---: | ---: |\n", size, rounds)
	var baseBulk float64
	for i, t := range targets {
		var rates []float64
		for range rounds {
			rate, err := download(t.addr, size)
			if err != nil {
				return fmt.Errorf("download through %s: %w", t.name, err)
			}
			rates = append(rates, rate)
		}
		m := medianF(rates)
		if i == 0 {
			baseBulk = m
		}
		fmt.Fprintf(&b.md, "| %s | %.0f | %.2f |\n", t.name, m, m/baseBulk)
	}
	b.md.WriteString("\n")
	return nil
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

func download(addr string, n int64) (mbps float64, err error) {
	c := &http.Client{Transport: &http.Transport{DisableCompression: true}}
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

type sactProc struct {
	cmd *exec.Cmd
	log string // its log file
}

func (b *bench) startSact(config string) (*sactProc, error) {
	path := filepath.Join(b.dir, fmt.Sprintf("sact-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(path + ".log")
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(b.sact, "serve", "-c", path, "-run-dir", filepath.Join(b.dir, "run"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	for range 200 {
		if data, _ := os.ReadFile(path + ".log"); strings.Contains(string(data), "msg=serving") {
			return &sactProc{cmd: cmd, log: path + ".log"}, nil
		}
		time.Sleep(25 * time.Millisecond)
	}
	cmd.Process.Kill()
	data, _ := os.ReadFile(path + ".log")
	return nil, fmt.Errorf("sact did not come up:\n%s", data)
}

// waitLog waits until the log holds n lines containing substr.
func (p *sactProc) waitLog(substr string, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		data, _ := os.ReadFile(p.log)
		if strings.Count(string(data), substr) >= n {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("sact logged %q fewer than %d times in %v", substr, n, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (p *sactProc) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	p.cmd.Wait()
}

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitListening(addr string) {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func medianF(d []float64) float64 {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1f ms", float64(d.Microseconds())/1000) }

// front compares sact's HTTP front door with nginx's proxy_pass (keepalive upstream) to the
// same warm container, and both with the container directly.
func (b *bench) front() error {
	app := fmt.Sprintf("bench-front-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app).Run()
	frontAddr := freeAddr()
	d, err := b.startSact(fmt.Sprintf(`http:
  listen: ["tcp:%[3]s"]
apps:
  %[1]s:
    image: %[2]s
    env: {NAME: front, LISTEN: "tcp:0.0.0.0:8080"}
    hosts: ["front.bench"]
    port: 8080
    idle: 1h
    stop_timeout: 2s
`, app, b.image, frontAddr))
	if err != nil {
		return err
	}
	defer d.stop()
	c := &http.Client{}
	req, _ := http.NewRequest("GET", "http://"+frontAddr+"/", nil)
	req.Host = "front.bench"
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	direct, err := b.containerAddr("sact-" + app)
	if err != nil {
		return err
	}

	nginxAddr := freeAddr()
	stop, err := b.nginx(nginxAddr, direct)
	if err != nil {
		return err
	}
	defer stop()

	targets := []target{
		{"direct to the container", direct},
		{"sact front door (Host routing)", frontAddr},
		{"nginx proxy_pass, keepalive upstream", nginxAddr},
	}
	rounds, dur := b.wrkRounds()
	results, err := wrkAll(targets, rounds, dur, "-H", "Host: front.bench")
	if err != nil {
		return err
	}
	fmt.Fprintf(&b.md, "## HTTP front door\n\n")
	fmt.Fprintf(&b.md, "`wrk -t2 -c32 -d%s --latency -H 'Host: front.bench'`, keep-alive, `GET /` answering 16 bytes, to one warm container; %d round(s), interleaved; medians. nginx runs `worker_processes auto` with `keepalive 32` to the container's IP.\n\n", dur, rounds)
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | vs nginx | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	base, ngx := medianF(results[0].rps), medianF(results[2].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f | %.2f | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, rps/base, rps/ngx, medianF(results[i].p50), medianF(results[i].p99))
	}
	b.md.WriteString("\n")
	return nil
}

// nginx runs Debian's nginx as a reverse proxy from addr to upstream, with a keepalive
// pool, as a user would put it in front of an always-running container.
func (b *bench) nginx(addr, upstream string) (stop func(), err error) {
	dir := filepath.Join(b.dir, "nginx")
	os.MkdirAll(dir, 0o755)
	conf := fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  upstream app { server %[2]s; keepalive 32; }
  server {
    listen %[3]s;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_pass http://app;
    }
  }
}
`, dir, upstream, addr)
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	cmd := exec.Command("nginx", "-p", dir, "-c", path)
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting nginx: %w", err)
	}
	waitListening(addr)
	return func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }, nil
}

// capacity: a crawler over many sleeping apps with max_running, and a paused app's wake
// against a cold start.
func (b *bench) capacity() error {
	n, maxRunning := 250, 20
	if b.quick {
		n = 40
	}
	prefix := fmt.Sprintf("bench-crawl-%d-", os.Getpid())
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "pool:\n  max_running: %d\napps:\n", maxRunning)
	addrs := freeAddrs(n)
	for i := range n {
		fmt.Fprintf(&cfg, "  %s%d:\n    image: %s\n    env: {NAME: c%d, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    idle: 10m\n    stop_timeout: 2s\n", prefix, i, b.image, i, addrs[i])
	}
	pause := prefix + "paused"
	pauseAddr := freeAddr()
	fmt.Fprintf(&cfg, "  %s:\n    image: %s\n    env: {NAME: paused, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    pause_after: 1s\n    idle: 1h\n    stop_timeout: 2s\n", pause, b.image, pauseAddr)
	defer b.removeApps(prefix)
	d, err := b.startSact(cfg.String())
	if err != nil {
		return err
	}
	defer d.stop()

	// Peak of running containers, sampled.
	var peak int
	stopSampling := make(chan struct{})
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		for {
			if k, err := b.countRunning(prefix); err == nil {
				peak = max(peak, k)
			}
			select {
			case <-stopSampling:
				return
			case <-time.After(200 * time.Millisecond):
			}
		}
	}()
	type pass struct {
		name         string
		took         time.Duration
		failed, done int
	}
	crawl := func(name string, parallel int) pass {
		p := pass{name: name}
		began := time.Now()
		sem := make(chan struct{}, parallel)
		var mu sync.Mutex
		var wg sync.WaitGroup
		for _, a := range addrs {
			sem <- struct{}{}
			wg.Go(func() {
				defer func() { <-sem }()
				err := firstByte("tcp", a)
				mu.Lock()
				defer mu.Unlock()
				p.done++
				if err != nil {
					p.failed++
				}
			})
		}
		wg.Wait()
		p.took = time.Since(began)
		return p
	}
	fmt.Fprintf(os.Stderr, "crawler: sequential pass over %d apps\n", n)
	seq := crawl("sequential", 1)
	fmt.Fprintf(os.Stderr, "crawler: 16 at a time\n")
	par := crawl("16 at a time", 16)
	close(stopSampling)
	<-sampled

	fmt.Fprintf(&b.md, "## Capacity: a crawler over %d sleeping apps, max_running %d\n\n", n, maxRunning)
	fmt.Fprintf(&b.md, "Each app is a container of the test image on its own TCP listener; the crawler sends one `GET /` to each, in order. start_concurrency is the default (number of CPUs). The first pass creates the containers; the second finds them created, with up to %d running.\n\n", maxRunning)
	fmt.Fprintf(&b.md, "| pass | requests | failed | total time | per app |\n| --- | ---: | ---: | ---: | ---: |\n")
	for _, p := range []pass{seq, par} {
		fmt.Fprintf(&b.md, "| %s | %d | %d | %.1f s | %s |\n", p.name, p.done, p.failed, p.took.Seconds(), ms(p.took/time.Duration(n)))
	}
	fmt.Fprintf(&b.md, "\nPeak running containers (sampled every 200 ms): **%d** (max_running %d).\n\n", peak, maxRunning)

	// A paused app's wake against a cold start of the same image.
	rounds := 7
	if b.quick {
		rounds = 3
	}
	var wake, cold []time.Duration
	if err := firstByte("tcp", pauseAddr); err != nil {
		return err
	}
	for i := range rounds {
		if err := d.waitLog(`msg="paused app" app=`+pause+" ", i+1, 30*time.Second); err != nil {
			return err
		}
		began := time.Now()
		if err := firstByte("tcp", pauseAddr); err != nil {
			return err
		}
		wake = append(wake, time.Since(began))
	}
	for i := range rounds {
		a := addrs[i]
		name := fmt.Sprintf("%s%d", prefix, i)
		timeout := 2
		// Stop it behind sact's back and wait for sact to see the exit, so the next
		// request is a plain cold start.
		b.dc.ContainerStop(b.ctx, "sact-"+name, client.ContainerStopOptions{Timeout: &timeout})
		time.Sleep(time.Second)
		began := time.Now()
		if err := firstByte("tcp", a); err != nil {
			return err
		}
		cold = append(cold, time.Since(began))
	}
	fmt.Fprintf(&b.md, "| first byte | median | min | max |\n| --- | ---: | ---: | ---: |\n")
	fmt.Fprintf(&b.md, "| paused app (pause_after), woken by the request | %s | %s | %s |\n", ms(median(wake)), ms(slices.Min(wake)), ms(slices.Max(wake)))
	fmt.Fprintf(&b.md, "| stopped app, cold start | %s | %s | %s |\n\n", ms(median(cold)), ms(slices.Min(cold)), ms(slices.Max(cold)))
	fmt.Fprintf(&b.md, "A paused wake takes %.2f× the time of a cold start.\n\n", float64(median(wake))/float64(median(cold)))
	return nil
}

func (b *bench) countRunning(prefix string) (int, error) {
	res, err := b.dc.ContainerList(b.ctx, client.ContainerListOptions{Filters: make(client.Filters).Add("name", "sact-"+prefix)})
	if err != nil {
		return 0, err
	}
	return len(res.Items), nil
}

func (b *bench) removeApps(prefix string) {
	res, err := b.dc.ContainerList(context.Background(), client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("name", "sact-"+prefix)})
	if err != nil {
		return
	}
	var wg sync.WaitGroup
	sem := make(chan struct{}, 8)
	for _, c := range res.Items {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			b.dc.ContainerRemove(context.Background(), c.ID, client.ContainerRemoveOptions{Force: true})
		})
	}
	wg.Wait()
}

// freeAddrs returns n distinct loopback addresses nobody listens on: all are held open
// until all are found, so the kernel cannot hand out one twice.
func freeAddrs(n int) []string {
	lns := make([]net.Listener, n)
	out := make([]string, n)
	for i := range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		lns[i], out[i] = ln, ln.Addr().String()
	}
	for _, ln := range lns {
		ln.Close()
	}
	return out
}

type target struct{ name, addr string }

type wrkResult struct{ rps, p50, p99 []float64 }

func (b *bench) wrkRounds() (int, string) {
	if b.quick {
		return 1, "3s"
	}
	return 3, "10s"
}

// wrkAll runs wrk against every target, rounds times, interleaved so that drift in the
// machine's load hits all targets alike.
func wrkAll(targets []target, rounds int, dur string, args ...string) ([]wrkResult, error) {
	results := make([]wrkResult, len(targets))
	for r := range rounds {
		for i, t := range targets {
			fmt.Fprintf(os.Stderr, "wrk round %d: %s\n", r+1, t.name)
			rps, p50, p99, err := wrk("http://"+t.addr+"/", dur, args...)
			if err != nil {
				return nil, fmt.Errorf("wrk against %s: %w", t.name, err)
			}
			results[i].rps = append(results[i].rps, rps)
			results[i].p50 = append(results[i].p50, p50)
			results[i].p99 = append(results[i].p99, p99)
		}
	}
	return results, nil
}

// containerAddr is where the test server in a running container listens: its IP on the
// bridge, port 8080.
func (b *bench) containerAddr(ref string) (string, error) {
	ins, err := b.dc.ContainerInspect(b.ctx, ref, client.ContainerInspectOptions{})
	if err != nil {
		return "", err
	}
	for _, n := range ins.Container.NetworkSettings.Networks {
		if n.IPAddress.IsValid() {
			return net.JoinHostPort(n.IPAddress.String(), "8080"), nil
		}
	}
	return "", fmt.Errorf("container %s has no IP address", ref)
}
