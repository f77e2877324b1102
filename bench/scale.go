package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/moby/moby/client"
)

// scale measures sact with many apps: at rest, starting many at once, and holding many
// open connections.
func (b *bench) scale() error {
	if err := b.scaleIdle(); err != nil {
		return fmt.Errorf("1000 idle apps: %w", err)
	}
	if err := b.scaleBurst(); err != nil {
		return fmt.Errorf("cold starts at once: %w", err)
	}
	if err := b.scaleConns(); err != nil {
		return fmt.Errorf("open connections: %w", err)
	}
	return nil
}

// scaleIdle configures 1000 apps on unix listeners that are never used, and measures how
// long sact takes to serve them all and what it costs while they all sleep.
func (b *bench) scaleIdle() error {
	n, window := 1000, 60*time.Second
	if b.quick {
		window = 10 * time.Second
	}
	prefix := fmt.Sprintf("bench-idle-%d-", os.Getpid())
	dir := filepath.Join(b.dir, "idle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var cfg strings.Builder
	socks := make([]string, n)
	cfg.WriteString("apps:\n")
	for i := range n {
		socks[i] = filepath.Join(dir, fmt.Sprintf("%d.sock", i))
		fmt.Fprintf(&cfg, "  %s%d:\n    image: %s\n    listen: [\"unix:%s\"]\n    port: 8080\n", prefix, i, b.image, socks[i])
	}
	defer b.removeApps(prefix) // only the few the accept check below starts
	fmt.Fprintf(os.Stderr, "scale: starting sact with %d apps\n", n)
	p, err := b.launchSact(cfg.String())
	if err != nil {
		return err
	}
	ready, err := p.waitServing(60 * time.Second)
	if err != nil {
		return err
	}
	defer p.stop()
	bound := 0
	for _, s := range socks {
		if fi, err := os.Stat(s); err == nil && fi.Mode()&os.ModeSocket != 0 {
			bound++
		}
	}
	pid := p.cmd.Process.Pid
	// Let what follows the serving line (the engine's event stream, the first look at the
	// containers) settle, so the window sees only what a sleeping host costs.
	time.Sleep(2 * time.Second)
	before, err := readUsage(pid)
	if err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "scale: %v with everything asleep\n", window)
	events := b.countEngineEvents()
	time.Sleep(window)
	others := events()
	after, err := readUsage(pid)
	if err != nil {
		return err
	}
	// Connecting starts the app: do it only after the window.
	var accepted int
	checked := []string{socks[0], socks[n/2], socks[n-1]}
	for _, s := range checked {
		if acceptsOn(s) {
			accepted++
		}
	}
	cpu := after.cpu - before.cpu
	cpuPct := 100 * cpu.Seconds() / window.Seconds()
	switches := after.switches - before.switches
	fmt.Fprintf(&b.md, "## Scale: %d configured apps, all asleep\n\n", n)
	fmt.Fprintf(&b.md, "Each app has an image, a port and its own unix listener; none is ever started. ")
	fmt.Fprintf(&b.md, "Ready is the time from sact's exec to its `serving` log line (polled every 2 ms); at that moment %d of %d socket files existed, and after the window %d of %d sockets probed (first, middle, last) accepted a connection. ", bound, n, accepted, len(checked))
	fmt.Fprintf(&b.md, "CPU is utime+stime from /proc/PID/stat (counted in 10 ms ticks) over a %v window starting 2 s after ready; context switches are voluntary+nonvoluntary summed over /proc/PID/task/*/status in the same window (how often it wakes up); RSS is VmRSS after the window. sact follows the engine's container exits (die, destroy events) for all containers: during the window the engine reported %d such events from other activity on this host, each a wakeup that is not sact's own.\n\n", window, others)
	fmt.Fprintf(&b.md, "| ready | RSS | CPU in %v | CPU | context switches | per second |\n| ---: | ---: | ---: | ---: | ---: | ---: |\n", window)
	fmt.Fprintf(&b.md, "| %s | %.1f MB | %s | %.3f%% of one CPU | %d | %.1f |\n\n", ms(ready), float64(after.rss)/1e6, ms(cpu), cpuPct, switches, float64(switches)/window.Seconds())
	b.goal("1000 idle apps: RSS", "< 50 MB", after.rss < 50e6, fmt.Sprintf("%.1f MB", float64(after.rss)/1e6))
	b.goal("1000 idle apps: exec to all listeners ready", "< 1 s", ready < time.Second && bound == n, ms(ready))
	// "About 0%": under a tenth of a percent of one CPU, i.e. under 60 ms a minute.
	b.goal("1000 idle apps: CPU while all sleep", "≈ 0% (< 0.1% of one CPU)", cpuPct < 0.1, fmt.Sprintf("%.3f%%", cpuPct))
	return nil
}

// countEngineEvents counts the container die and destroy events the engine reports, the
// ones sact follows, from now until the returned function is called.
func (b *bench) countEngineEvents() func() int {
	ctx, cancel := context.WithCancel(b.ctx)
	f := make(client.Filters).Add("type", "container").Add("event", "die", "destroy")
	res := b.dc.Events(ctx, client.EventsListOptions{Filters: f})
	n := make(chan int, 1)
	go func() {
		count := 0
		for {
			select {
			case <-res.Messages:
				count++
			case <-res.Err:
				n <- count
				return
			case <-ctx.Done():
				n <- count
				return
			}
		}
	}()
	return func() int {
		cancel()
		return <-n
	}
}

// acceptsOn says whether a client can connect to the unix socket at path and sact takes
// it off the backlog (the kernel completes a unix connect while it waits there, so a
// connect alone would prove only that the socket is bound).
func acceptsOn(path string) bool {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	for range 500 {
		if n, ok := unixQueued(path); ok && n == 0 {
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
}

// unixQueued is how many connections wait in the backlog of the listening unix socket at
// path, as ss reports it (the kernel's sock_diag; /proc/net/unix does not say).
func unixQueued(path string) (int, bool) {
	out, err := exec.Command("ss", "-xlnH", "src", path).Output()
	if err != nil {
		return 0, false
	}
	f := strings.Fields(string(out))
	// Netid State Recv-Q Send-Q Local ...: for a listener Recv-Q is the backlog's length.
	if len(f) < 3 {
		return 0, false
	}
	n, err := strconv.Atoi(f[2])
	return n, err == nil
}

// usage is what /proc says about a process at one moment.
type usage struct {
	cpu      time.Duration // utime+stime
	switches int64         // voluntary+nonvoluntary context switches, all threads
	rss      int64         // bytes
}

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, 100 on every Linux
// architecture Go supports.
const userHZ = 100

func readUsage(pid int) (usage, error) {
	var u usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, fmt.Errorf("reading the process's stat: %w", err)
	}
	// The fields after the command name, which is in parentheses and may hold spaces:
	// utime and stime are the 14th and 15th of the line, so the 12th and 13th here.
	rest := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	if len(rest) < 13 {
		return u, fmt.Errorf("short /proc/%d/stat", pid)
	}
	ut, _ := strconv.ParseInt(rest[11], 10, 64)
	st, _ := strconv.ParseInt(rest[12], 10, 64)
	u.cpu = time.Duration(ut+st) * time.Second / userHZ
	if u.rss, err = statusField(fmt.Sprintf("/proc/%d/status", pid), "VmRSS:"); err != nil {
		return u, err
	}
	u.rss *= 1024 // kB
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/status", pid))
	if err != nil {
		return u, err
	}
	for _, t := range tasks {
		v, err1 := statusField(t, "voluntary_ctxt_switches:")
		nv, err2 := statusField(t, "nonvoluntary_ctxt_switches:")
		if err1 == nil && err2 == nil { // a thread may exit between the glob and the read
			u.switches += v + nv
		}
	}
	return u, nil
}

// statusField reads one numeric field of a /proc status file.
func statusField(path, key string) (int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), key); ok {
			return strconv.ParseInt(strings.Fields(v)[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no %s in %s", key, path)
}

// scaleBurst sends one request to each of many sleeping apps at once: every one is a cold
// start (its first, so the container is created too), with no limit on running apps.
func (b *bench) scaleBurst() error {
	n := 250
	if b.quick {
		n = 30
	}
	// The baseline: a few apps of the same kind, started one at a time first.
	const alone = 3
	prefix := fmt.Sprintf("bench-burst-%d-", os.Getpid())
	all := freeAddrs(n + alone)
	addrs, aloneAddrs := all[:n], all[n:]
	var cfg strings.Builder
	cfg.WriteString("apps:\n")
	for i, a := range all {
		fmt.Fprintf(&cfg, "  %s%d:\n    image: %s\n    env: {NAME: b%d, LISTEN: \"tcp:0.0.0.0:8080\"}\n    listen: [\"tcp:%s\"]\n    port: 8080\n    idle: 10m\n    stop_timeout: 2s\n", prefix, i, b.image, i, a)
	}
	defer b.removeApps(prefix)
	d, err := b.startSact(cfg.String())
	if err != nil {
		return err
	}
	defer d.stop()
	var single []time.Duration
	for _, a := range aloneAddrs {
		t := time.Now()
		if err := firstByte("tcp", a); err != nil {
			return fmt.Errorf("a first start alone: %w", err)
		}
		single = append(single, time.Since(t))
	}
	fmt.Fprintf(os.Stderr, "scale: %d cold starts at once\n", n)
	var mu sync.Mutex
	var firsts []time.Duration
	failed := 0
	began := time.Now()
	var wg sync.WaitGroup
	for _, a := range addrs {
		wg.Go(func() {
			t := time.Now()
			err := firstByteWithin("tcp", a, 10*time.Minute)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				failed++
				return
			}
			firsts = append(firsts, time.Since(t))
		})
	}
	wg.Wait()
	took := time.Since(began)
	running, _ := b.countRunning(prefix)
	running -= alone
	fmt.Fprintf(&b.md, "## Scale: %d cold starts at once\n\n", n)
	fmt.Fprintf(&b.md, "%d apps never started before (each first start creates its container), no max_running, start_concurrency the default (the number of CPUs, %d here); one request to each, all sent at once. ", n, runtime.NumCPU())
	fmt.Fprintf(&b.md, "The baseline: %d more such apps, each started alone (one request, first start) just before; their median first byte was %s. Running after: containers of the burst running once all were answered.\n\n", alone, ms(median(single)))
	fmt.Fprintf(&b.md, "| requests | failed | all answered after | per app | per app vs one alone | first byte: median | min | max | running after |\n| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n")
	if len(firsts) == 0 {
		fmt.Fprintf(&b.md, "| %d | %d | %.1f s | - | - | - | - | - | %d |\n\n", n, failed, took.Seconds(), running)
		return nil
	}
	per := took / time.Duration(n)
	fmt.Fprintf(&b.md, "| %d | %d | %.1f s | %s | %.2f | %s | %s | %s | %d |\n\n", n, failed, took.Seconds(), ms(per), float64(per)/float64(median(single)), ms(median(firsts)), ms(slices.Min(firsts)), ms(slices.Max(firsts)), running)
	return nil
}

// raiseNoFile raises this process's open files limit, which its children inherit, to at
// least want. On failure it returns the limit there is.
func raiseNoFile(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("reading the open files limit: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max >= want {
		lim.Cur = want
	} else {
		lim.Cur, lim.Max = want, want
	}
	have := lim.Cur
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
		return min(lim.Cur, lim.Max), fmt.Errorf("raising it to %d: %w", want, err)
	}
	return have, nil
}
