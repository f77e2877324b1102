package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/client"
)

// firstByte sends one request on a new connection and returns once a response byte arrives.
func firstByte(network, addr string) error {
	return firstByteWithin(network, addr, 60*time.Second)
}

// firstByteWithin is firstByte with a deadline for the answer: for a request that may
// queue behind many cold starts.
func firstByteWithin(network, addr string, timeout time.Duration) error {
	c, err := net.DialTimeout(network, addr, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return err
	}
	_, err = c.Read(make([]byte, 1))
	return err
}

type sactProc struct {
	cmd     *exec.Cmd
	log     string    // its log file
	started time.Time // just before its exec
}

func (b *bench) startSact(config string) (*sactProc, error) {
	p, err := b.launchSact(config)
	if err != nil {
		return nil, err
	}
	if _, err := p.waitServing(30 * time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

// launchSact writes config and starts sact on it, without waiting for it to serve.
func (b *bench) launchSact(config string) (*sactProc, error) {
	return b.launchSactWith(config, filepath.Join(b.dir, "run"), nil)
}

// startSactWith is startSact with its own run directory and extra environment (a second
// sact beside the first, say with SACT_RELAY=kernel).
func (b *bench) startSactWith(config, runDir string, env []string) (*sactProc, error) {
	p, err := b.launchSactWith(config, runDir, env)
	if err != nil {
		return nil, err
	}
	if _, err := p.waitServing(30 * time.Second); err != nil {
		return nil, err
	}
	return p, nil
}

func (b *bench) launchSactWith(config, runDir string, env []string) (*sactProc, error) {
	path := filepath.Join(b.dir, fmt.Sprintf("sact-%d.yaml", time.Now().UnixNano()))
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		return nil, fmt.Errorf("writing sact's config: %w", err)
	}
	logf, err := os.Create(path + ".log")
	if err != nil {
		return nil, fmt.Errorf("creating sact's log: %w", err)
	}
	defer logf.Close() // sact has its own copy
	cmd := exec.Command(b.sact, "serve", "-c", path, "-run-dir", runDir)
	cmd.Stdout, cmd.Stderr = logf, logf
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	p := &sactProc{cmd: cmd, log: path + ".log", started: time.Now()}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting sact: %w", err)
	}
	return p, nil
}

// waitServing waits for sact's "serving" log line and returns the time from its exec to
// when the line was seen (polled every 2 ms, so within 2 ms of the truth).
func (p *sactProc) waitServing(timeout time.Duration) (time.Duration, error) {
	for time.Since(p.started) < timeout {
		if data, _ := os.ReadFile(p.log); strings.Contains(string(data), "msg=serving") {
			return time.Since(p.started), nil
		}
		time.Sleep(2 * time.Millisecond)
	}
	p.cmd.Process.Kill()
	p.cmd.Wait()
	data, _ := os.ReadFile(p.log)
	return 0, fmt.Errorf("sact did not come up in %v:\n%s", timeout, tail(data, 4000))
}

// tail is the end of a log, enough to see why something failed.
func tail(data []byte, n int) []byte {
	if len(data) > n {
		return data[len(data)-n:]
	}
	return data
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

func freeAddr() string { return freeAddrOn("127.0.0.1") }

// freeAddrOn is freeAddr on another of the host's addresses.
func freeAddrOn(ip string) string {
	for {
		ln, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
		if err != nil {
			panic(err)
		}
		a := ln.Addr().String()
		ln.Close()
		// The kernel may give a freed port out again: never the same one twice in a run
		// (the capacity scenario once got one port for two apps).
		givenMu.Lock()
		dup := given[a]
		given[a] = true
		givenMu.Unlock()
		if !dup {
			return a
		}
	}
}

var (
	givenMu sync.Mutex
	given   = map[string]bool{}
)

// waitListening waits up to 2 s for addr to accept and says whether it did.
func waitListening(addr string) bool {
	for range 200 {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return true
		}
		time.Sleep(10 * time.Millisecond)
	}
	return false
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
		givenMu.Lock()
		given[out[i]] = true
		givenMu.Unlock()
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

// bulkRounds is how many downloads each bulk row's median is of: a download takes a
// second, and one that meets a burst of the machine's other load moves a median of
// three, so more than wrk's rounds.
func (b *bench) bulkRounds() int {
	if b.quick {
		return 1
	}
	return 7
}

// wrkAll runs wrk against every target, rounds times, interleaved so that drift in the
// machine's load hits all targets alike.
func wrkAll(targets []target, rounds int, dur string, args ...string) ([]wrkResult, error) {
	return wrkAllFrom(nil, targets, rounds, dur, args...)
}

// wrkAllFrom is wrkAll with wrk run under a command prefix (ip netns exec NS, say).
func wrkAllFrom(prefix []string, targets []target, rounds int, dur string, args ...string) ([]wrkResult, error) {
	results := make([]wrkResult, len(targets))
	for r := range rounds {
		for i, t := range targets {
			fmt.Fprintf(os.Stderr, "wrk round %d: %s\n", r+1, t.name)
			rps, p50, p99, err := wrk(prefix, "http://"+t.addr+"/", dur, args...)
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

// containerNet is the network of a running container's address, as containerAddr finds it.
func (b *bench) containerNet(ref string) (netip.Prefix, error) {
	ins, err := b.dc.ContainerInspect(b.ctx, ref, client.ContainerInspectOptions{})
	if err != nil {
		return netip.Prefix{}, err
	}
	for _, n := range ins.Container.NetworkSettings.Networks {
		if n.IPAddress.IsValid() {
			return netip.PrefixFrom(n.IPAddress, n.IPPrefixLen).Masked(), nil
		}
	}
	return netip.Prefix{}, fmt.Errorf("container %s has no IP address", ref)
}
