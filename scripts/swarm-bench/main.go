// Command swarm-bench measures the cold start of an app run as a Docker Swarm service on
// a worker node against the same image run as a plain container on this host, both
// through sact: the time from a client's connect to the first byte of its answer, the
// app asleep before each. It makes the two-node swarm of package swarmtest (root, ip,
// nsenter, dockerd) and tears it down at the end.
//
//	go run ./scripts/swarm-bench [-n 15]      # make bench-swarm
//
// It prints a Markdown table, for BENCHMARKS.md.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"syscall"
	"time"

	"github.com/sact-project/sact/internal/swarmtest"
	"github.com/sact-project/sact/internal/testimage"
)

// runner is the swarmtest.T of a program: cleanups run at the end, also after a failure.
type runner struct{ cleanups []func() }

func (r *runner) Helper()                   {}
func (r *runner) Cleanup(f func())          { r.cleanups = append(r.cleanups, f) }
func (r *runner) Errorf(f string, a ...any) { fmt.Fprintf(os.Stderr, f+"\n", a...) }
func (r *runner) Fatalf(f string, a ...any) { panic(fmt.Sprintf(f, a...)) }
func (r *runner) done() {
	for i := len(r.cleanups) - 1; i >= 0; i-- {
		r.cleanups[i]()
	}
}

func main() {
	n := flag.Int("n", 15, "cold starts of each")
	flag.Parse()
	r := &runner{}
	code := 0
	func() {
		defer func() {
			if p := recover(); p != nil {
				fmt.Fprintln(os.Stderr, "swarm-bench:", p)
				code = 1
			}
			r.done()
		}()
		// An interrupt is a failure: the deferred teardown still runs.
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go func() {
			select {
			case <-sig:
				cancel()
			case <-ctx.Done():
			}
		}()
		run(ctx, r, *n)
	}()
	os.Exit(code)
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func run(ctx context.Context, r *runner, n int) {
	img, err := testimage.TestServer(ctx)
	must(err)
	dir, err := os.MkdirTemp("", "swarm-bench-")
	must(err)
	r.Cleanup(func() { os.RemoveAll(dir) })
	sact := filepath.Join(dir, "sact")
	build := exec.Command("go", "build", "-o", sact, "./cmd/sact")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	build.Stderr = os.Stderr
	must(build.Run())

	sw := swarmtest.Start(r, img)
	must(sw.LabelWorkerEngine(ctx))

	pid := os.Getpid()
	plain, service := fmt.Sprintf("bench-plain-%d", pid), fmt.Sprintf("bench-swarm-%d", pid)
	r.Cleanup(func() { exec.Command("docker", "rm", "-f", "sact-"+plain).Run() })
	plainAddr, swarmAddr := freeAddr(), freeAddr()
	cfg := filepath.Join(dir, "sact.yaml")
	must(os.WriteFile(cfg, []byte(fmt.Sprintf(`apps:
  %[1]s:
    image: %[3]s
    env: {NAME: plain, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[4]s"]
    port: 8080
    idle: 1s
    stop_timeout: 2s
  %[2]s:
    image: %[3]s
    swarm: {constraints: [node.role==worker]}
    env: {NAME: swarm, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[5]s"]
    port: 8080
    idle: 1s
    stop_timeout: 2s
`, plain, service, img, plainAddr, swarmAddr)), 0o644))
	runDir := filepath.Join(dir, "run")
	logf, err := os.Create(filepath.Join(dir, "sact.log"))
	must(err)
	d := exec.Command(sact, "serve", "-c", cfg, "-run-dir", runDir, "-state-dir", filepath.Join(runDir, "state"))
	d.Stdout, d.Stderr = logf, logf
	must(d.Start())
	r.Cleanup(func() { d.Process.Signal(syscall.SIGTERM); d.Wait(); logf.Close() })
	status := func() map[string]string {
		out, err := exec.Command(sact, "status", "-json", "-c", cfg, "-run-dir", runDir).Output()
		if err != nil {
			return nil
		}
		var list struct {
			Apps []struct{ Name, State string } `json:"apps"`
		}
		json.Unmarshal(out, &list)
		m := map[string]string{}
		for _, a := range list.Apps {
			m[a.Name] = a.State
		}
		return m
	}
	waitStopped := func(app string) {
		deadline := time.Now().Add(60 * time.Second)
		for status()[app] != "stopped" {
			if time.Now().After(deadline) || ctx.Err() != nil {
				panic(fmt.Sprintf("%s does not stop", app))
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	for status() == nil {
		if ctx.Err() != nil {
			panic(ctx.Err())
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The first start of each creates its container or service: not measured.
	for _, a := range []string{plainAddr, swarmAddr} {
		_, err := ttfb(a)
		must(err)
	}
	times := map[string][]time.Duration{}
	for i := range n {
		fmt.Fprintf(os.Stderr, "cold %d/%d\n", i+1, n)
		// Interleaved, so that drift in the machine's load hits both alike.
		for _, a := range []struct{ app, addr string }{{plain, plainAddr}, {service, swarmAddr}} {
			waitStopped(a.app)
			time.Sleep(200 * time.Millisecond)
			t, err := ttfb(a.addr)
			must(err)
			times[a.app] = append(times[a.app], t)
		}
	}
	fmt.Printf("| cold start, through sact (n=%d) | median | p90 | min |\n|---|---|---|---|\n", n)
	for _, row := range []struct{ name, app string }{
		{"plain container on this host (image:)", plain},
		{"Swarm service on a worker node (image: + swarm:, host-mode port)", service},
	} {
		ts := times[row.app]
		slices.Sort(ts)
		fmt.Printf("| %s | %s | %s | %s |\n", row.name, ms(ts[len(ts)/2]), ms(ts[(len(ts)*9)/10]), ms(ts[0]))
	}
}

// ttfb connects to addr, asks for /, and returns the time to the answer's first byte.
func ttfb(addr string) (time.Duration, error) {
	began := time.Now()
	c, err := net.DialTimeout("tcp", addr, 30*time.Second)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, err
	}
	if _, err := c.Read(make([]byte, 1)); err != nil {
		return 0, fmt.Errorf("reading the answer from %s: %w", addr, err)
	}
	return time.Since(began), nil
}

func ms(d time.Duration) string { return fmt.Sprintf("%.0f ms", float64(d.Microseconds())/1000) }

func freeAddr() string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	must(err)
	defer ln.Close()
	return ln.Addr().String()
}
