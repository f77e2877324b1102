package e2e

import (
	"bufio"
	"cmp"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// The load half of the reliability suite (RELIABILITY.md): many idle connections held at
// once, many cold starts at once, and, when SACT_LONG is set, a soak. Each reports its
// figures with t.Logf under the name RELIABILITY, for the report.

// long skips a test unless SACT_LONG=1 (make reliability): too slow for every CI run.
func long(t *testing.T) {
	if os.Getenv("SACT_LONG") == "" {
		t.Skip("long test: run with SACT_LONG=1 (make reliability)")
	}
}

// metrics reads sact's /metrics from admin.listen and returns the sum of the samples of
// name whose labels contain every one of labels (like `app="x"`).
func metrics(t *testing.T, adminAddr, name string, labels ...string) float64 {
	t.Helper()
	return metricsFrom(t, http.DefaultClient, "http://"+adminAddr+"/metrics", name, labels...)
}

// metricsFrom is metrics for any client and URL (the admin socket's, say).
func metricsFrom(t *testing.T, c *http.Client, url, name string, labels ...string) float64 {
	t.Helper()
	resp, err := c.Get(url)
	if err != nil {
		t.Fatalf("reading metrics: %v", err)
	}
	defer resp.Body.Close()
	var sum float64
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name+" ") && !strings.HasPrefix(line, name+"{") {
			continue
		}
		for _, l := range labels {
			if !strings.Contains(line, l) {
				continue lines
			}
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}

// sactStats is what must stay flat: sact's open fds, goroutines and resident memory.
type sactStats struct{ fds, goroutines, rssMB float64 }

func stats(t *testing.T, adminAddr string) sactStats {
	return sactStats{
		fds:        metrics(t, adminAddr, "process_open_fds"),
		goroutines: metrics(t, adminAddr, "go_goroutines"),
		rssMB:      metrics(t, adminAddr, "process_resident_memory_bytes") / (1 << 20),
	}
}

// settle waits until sact's fds and goroutines are back within slack of before, and
// returns what it last saw.
func settle(t *testing.T, adminAddr string, before sactStats, slack float64, timeout time.Duration) sactStats {
	deadline := time.Now().Add(timeout)
	for {
		s := stats(t, adminAddr)
		if s.fds <= before.fds+slack && s.goroutines <= before.goroutines+slack || time.Now().After(deadline) {
			return s
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// keepAlive is an HTTP/1.1 connection that made one request and stays open.
type keepAlive struct {
	c       net.Conn
	br      *bufio.Reader
	timeout time.Duration // for each request; 0 means 30s
}

func (k *keepAlive) get(host, path string) error {
	k.c.SetDeadline(time.Now().Add(cmp.Or(k.timeout, 30*time.Second)))
	if _, err := fmt.Fprintf(k.c, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host); err != nil {
		return err
	}
	resp, err := http.ReadResponse(k.br, nil)
	if err != nil {
		return err
	}
	_, err = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return err
}

// loadApps configures n apps, each with its own TCP listener and a Host on the front
// door, and sact with an admin.listen for metrics.
func loadApps(t *testing.T, base string, n int, extra string) (names, addrs []string, frontAddr, adminAddr string, d *daemon) {
	free := freeAddrs(t, n+2)
	frontAddr, adminAddr = free[n], free[n+1]
	cfg := fmt.Sprintf("admin:\n  listen: %q\nhttp:\n  listen: [\"tcp:%s\"]\napps:", adminAddr, frontAddr)
	for i := range n {
		name := uniqueName(t, fmt.Sprintf("%s%d", base, i))
		addr := free[i]
		names, addrs = append(names, name), append(addrs, addr)
		cfg += appConfig(name, addr, "") + fmt.Sprintf("    hosts: [%q]\n", name+".test") + extra
	}
	return names, addrs, frontAddr, adminAddr, startSact(t, cfg)
}

// freeAddrs returns n distinct free loopback TCP addresses.
func freeAddrs(t *testing.T, n int) []string {
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = freeAddr(t)
	}
	return addrs
}

// TestManyIdleConnections holds 10,000 idle keep-alive connections on the front door and
// 5,000 idle relayed connections across 50 apps, checks a sample still works, closes them
// all, and checks sact's fds and goroutines come back to where they were. (A relayed
// connection costs sact 2 fds; this machine's hard limit is 20,000 per process, so the
// relay half is 5,000: 10,000 fds.)
func TestManyIdleConnections(t *testing.T) {
	needDocker(t)
	const apps = 50
	names, addrs, frontAddr, adminAddr, _ := loadApps(t, "load", apps, "    idle: 10m\n")

	// All 50 cold at once.
	began := time.Now()
	burst(t, apps, addrs, "hello from")
	t.Logf("RELIABILITY cold start of %d apps at once: %v", apps, time.Since(began).Round(time.Millisecond))
	if t.Failed() {
		return
	}
	before := stats(t, adminAddr)

	hold := func(n int, dial func(i int) (*keepAlive, error)) ([]*keepAlive, int) {
		conns := make([]*keepAlive, n)
		var failed sync.Map
		var wg sync.WaitGroup
		work := make(chan int)
		for range 64 {
			wg.Go(func() {
				for i := range work {
					k, err := dial(i)
					if err != nil {
						failed.Store(i, err)
						continue
					}
					conns[i] = k
				}
			})
		}
		for i := range n {
			work <- i
		}
		close(work)
		wg.Wait()
		nfail := 0
		failed.Range(func(k, v any) bool {
			if nfail == 0 {
				t.Errorf("connection %v: %v", k, v)
			}
			nfail++
			return true
		})
		return conns, nfail
	}
	closeAll := func(conns []*keepAlive) {
		for _, k := range conns {
			if k != nil {
				k.c.Close()
			}
		}
	}
	sample := func(conns []*keepAlive, host func(i int) string) int {
		bad := 0
		for i := 0; i < len(conns); i += 25 {
			if k := conns[i]; k != nil {
				if err := k.get(host(i), "/"); err != nil {
					if bad == 0 {
						t.Errorf("idle connection %d, used again: %v", i, err)
					}
					bad++
				}
			}
		}
		return bad
	}

	// The front door: 10,000 keep-alive connections, 200 per app, each after one request.
	const frontConns = 10000
	host := func(i int) string { return names[i%apps] + ".test" }
	conns, nfail := hold(frontConns, func(i int) (*keepAlive, error) {
		c, err := net.DialTimeout("tcp", frontAddr, 10*time.Second)
		if err != nil {
			return nil, err
		}
		k := &keepAlive{c: c, br: bufio.NewReader(c)}
		if err := k.get(host(i), "/"); err != nil {
			c.Close()
			return nil, err
		}
		return k, nil
	})
	held := stats(t, adminAddr)
	bad := sample(conns, host)
	t.Logf("RELIABILITY front door: %d keep-alive connections held, %d failed to open, %d of %d sampled failed on reuse; sact fds %v -> %v, goroutines %v -> %v, RSS %.0f -> %.0f MB (%.1f KiB per connection)",
		frontConns-nfail, nfail, bad, (frontConns+24)/25, before.fds, held.fds, before.goroutines, held.goroutines, before.rssMB, held.rssMB, (held.rssMB-before.rssMB)*1024/frontConns)
	closeAll(conns)
	// What stays is the front door's pool of idle upstream connections (up to 64 per app,
	// closed after 90 s idle: an fd and two goroutines each); 10,000 leaked client
	// connections would be far beyond this slack.
	slack := float64(10 * apps)
	after := settle(t, adminAddr, before, slack, 30*time.Second)
	t.Logf("RELIABILITY front door closed: sact fds %v, goroutines %v (before: %v, %v; the difference is the upstream keep-alive pool)", after.fds, after.goroutines, before.fds, before.goroutines)
	if after.fds > before.fds+slack || after.goroutines > before.goroutines+2*slack {
		t.Errorf("after closing the front door's connections: fds %v (before %v), goroutines %v (before %v)", after.fds, before.fds, after.goroutines, before.goroutines)
	}
	before = after // the relay half starts from here

	// The L4 relay: 5,000 connections, 100 per app, each after one request.
	const relayConns = 5000
	conns, nfail = hold(relayConns, func(i int) (*keepAlive, error) {
		c, err := net.DialTimeout("tcp", addrs[i%apps], 10*time.Second)
		if err != nil {
			return nil, err
		}
		k := &keepAlive{c: c, br: bufio.NewReader(c)}
		if err := k.get("app", "/"); err != nil {
			c.Close()
			return nil, err
		}
		return k, nil
	})
	held = stats(t, adminAddr)
	bad = sample(conns, func(int) string { return "app" })
	t.Logf("RELIABILITY relay: %d connections held, %d failed to open, %d of %d sampled failed on reuse; sact fds %v -> %v, goroutines %v -> %v, RSS %.0f -> %.0f MB (%.1f KiB per connection)",
		relayConns-nfail, nfail, bad, (relayConns+24)/25, before.fds, held.fds, before.goroutines, held.goroutines, before.rssMB, held.rssMB, (held.rssMB-before.rssMB)*1024/relayConns)
	if open := metrics(t, adminAddr, "sact_connections_active"); open < relayConns-float64(nfail) {
		t.Errorf("sact_connections_active = %v with %d relayed connections open", open, relayConns-nfail)
	}
	closeAll(conns)
	after = settle(t, adminAddr, before, 20, 30*time.Second)
	t.Logf("RELIABILITY relay closed: sact fds %v, goroutines %v (before: %v, %v)", after.fds, after.goroutines, before.fds, before.goroutines)
	if after.fds > before.fds+20 || after.goroutines > before.goroutines+20 {
		t.Errorf("after closing the relayed connections: fds %v (before %v), goroutines %v (before %v)", after.fds, before.fds, after.goroutines, before.goroutines)
	}
	if n := metrics(t, adminAddr, "sact_connections_failed_total"); n != 0 {
		t.Errorf("sact_connections_failed_total = %v, want 0", n)
	}
}

// TestColdStartStorm cold-starts 250 apps at once (long), with one request each through
// the front door and one through each app's own listener.
func TestColdStartStorm(t *testing.T) {
	long(t)
	needDocker(t)
	const apps = 250
	names, addrs, frontAddr, adminAddr, _ := loadApps(t, "storm", apps, "    idle: 10m\n")
	began := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, 2*apps)
	for i := range apps {
		wg.Go(func() {
			if body, err := httpGetTimeout(addrs[i], "/", 5*time.Minute); err != nil || !strings.Contains(body, names[i]) {
				errs <- fmt.Errorf("%s via its listener: %q, %v", names[i], body, err)
			}
		})
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", frontAddr, 10*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			k := &keepAlive{c: c, br: bufio.NewReader(c), timeout: 5 * time.Minute}
			if err := k.get(names[i]+".test", "/"); err != nil {
				errs <- fmt.Errorf("%s via the front door: %v", names[i], err)
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		if failed < 5 {
			t.Error(err)
		}
		failed++
	}
	cold := metrics(t, adminAddr, "sact_cold_starts_total")
	t.Logf("RELIABILITY %d apps cold-started at once (2 requests each): %d failed, %v cold starts, all answered in %v",
		apps, failed, cold, time.Since(began).Round(time.Millisecond))
	if cold != apps {
		t.Errorf("%v cold starts, want %d (one per app)", cold, apps)
	}
}

// TestSoak runs mixed traffic for SACT_SOAK (default 10m; long) over 20 apps that stop
// after 3 s idle, so stops and wakes interleave with requests: no request may fail, and
// sact's fds and goroutines must end where they began.
func TestSoak(t *testing.T) {
	long(t)
	needDocker(t)
	dur := 10 * time.Minute
	if v, err := time.ParseDuration(os.Getenv("SACT_SOAK")); err == nil {
		dur = v
	}
	const apps = 20
	names, addrs, frontAddr, adminAddr, _ := loadApps(t, "soak", apps, "    idle: 3s\n")
	time.Sleep(time.Second)
	before := stats(t, adminAddr)
	end := time.Now().Add(dur)
	var mu sync.Mutex
	var requests, failures int
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				app := (w*7 + i*13) % apps
				// Bursts, then a pause longer than idle now and then: apps stop and wake.
				if i%50 == 49 {
					time.Sleep(4 * time.Second)
				}
				var err error
				switch i % 4 {
				case 0, 1:
					var body string
					body, err = httpGet(addrs[app], "/")
					if err == nil && !strings.Contains(body, names[app]) {
						err = fmt.Errorf("body %q", body)
					}
				case 2:
					_, err = httpGet(addrs[app], "/bytes?n=1000000")
				case 3:
					c, derr := net.DialTimeout("tcp", frontAddr, 10*time.Second)
					if err = derr; err == nil {
						k := &keepAlive{c: c, br: bufio.NewReader(c), timeout: time.Minute}
						err = k.get(names[app]+".test", "/")
						c.Close()
					}
				}
				mu.Lock()
				requests++
				if err != nil {
					failures++
					if failures <= 5 {
						t.Errorf("app %s, request %d: %v", names[app], i, err)
					}
				}
				mu.Unlock()
				time.Sleep(time.Duration(i%7) * 20 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	cold := metrics(t, adminAddr, "sact_cold_starts_total")
	stops := metrics(t, adminAddr, "sact_stops_total", `reason="idle"`)
	time.Sleep(4 * time.Second) // every app stops: their connections and goroutines end
	after := settle(t, adminAddr, before, 20, 30*time.Second)
	t.Logf("RELIABILITY soak %v: %d requests, %d failed, %v cold starts, %v idle stops; sact fds %v -> %v, goroutines %v -> %v, RSS %.0f -> %.0f MB",
		dur, requests, failures, cold, stops, before.fds, after.fds, before.goroutines, after.goroutines, before.rssMB, after.rssMB)
	if stops < apps {
		t.Errorf("only %v idle stops: the soak did not interleave stops and wakes", stops)
	}
	if after.fds > before.fds+20 || after.goroutines > before.goroutines+20 {
		t.Errorf("sact grew over the soak: fds %v -> %v, goroutines %v -> %v", before.fds, after.fds, before.goroutines, after.goroutines)
	}
}
