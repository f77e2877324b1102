// Command bench measures sact against its baselines on this machine's Docker engine and
// writes the results to BENCHMARKS.md, with a chart of the cold start next to it
// (BENCHMARKS-cold-start.png). Every comparison is made within one run, because the machine
// is shared and noisy: absolute numbers move, ratios much less.
//
//	go run ./bench                    # full run
//	go run ./bench -quick             # CI-sized, under 3 minutes
//	go run ./bench -only scale -out /tmp/b.md
//	go run ./bench -only scale-conns -out /tmp/b.md  # one part of a scenario
//
// Scenarios (-only takes their names):
//
//   - cold: time to first response byte for a cold app through sact (proxy and handoff
//     mode), against the floor (the same container started through the Engine API directly
//     and polled until it answers) and against the glue sact replaces (`docker run --rm`
//     per activation, `sleep 1`, systemd-socket-proxyd).
//   - warm: requests/s and latency with wrk, and bulk throughput, against the app directly,
//     through sact's L4 relay (tcp and unix listeners), sact's handoff, systemd-socket-proxyd
//     and nginx's stream proxy.
//   - capacity: a crawler over many sleeping apps with max_running; a paused app's wake.
//   - http: sact's HTTP front door against nginx proxy_pass with keepalive upstreams, Caddy's
//     reverse_proxy and HAProxy.
//   - scale: 1000 configured apps at rest (start time, memory, CPU, wakeups), many cold
//     starts at once, memory per open relayed connection through the splice relay and
//     the kernel relay (scale-conns alone).
//   - swarm: a Swarm service's cold start against a plain container's (scripts/swarm-bench).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/testimage"
)

// scenarios in the order they run and appear in the report.
var scenarios = []string{"cold", "warm", "capacity", "http", "scale", "swarm"}

// parts are pieces of a scenario that -only can run alone; a full run has them in their
// scenario.
var parts = []string{"scale-conns"}

func main() {
	quick := flag.Bool("quick", false, "fewer repetitions (CI-sized)")
	out := flag.String("out", "BENCHMARKS.md", "file to write the results to; the chart goes next to it as NAME-cold-start.png")
	only := flag.String("only", "", "run one scenario: "+strings.Join(scenarios, ", ")+" (default: all), or a part of one: "+strings.Join(parts, ", "))
	flag.Parse()
	if *only != "" && !slices.Contains(scenarios, *only) && !slices.Contains(parts, *only) {
		fmt.Fprintf(os.Stderr, "bench: unknown scenario %q; one of %s\n", *only, strings.Join(append(slices.Clone(scenarios), parts...), ", "))
		os.Exit(2)
	}
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
	out   string // the report's path; the chart is written next to it
	md    strings.Builder
	goals []goal // filled in by the scenarios, written at the top of the report
}

func run(ctx context.Context, quick bool, only, out string) error {
	dir, err := os.MkdirTemp("", "sact-bench-")
	if err != nil {
		return err
	}
	b := &bench{ctx: ctx, dir: dir, quick: quick, out: out}
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
		return fmt.Errorf("connecting to the Docker engine: %w", err)
	}
	fmt.Fprintln(os.Stderr, "building the test image and sact")
	if b.image, err = testimage.TestServer(ctx); err != nil {
		return fmt.Errorf("building the test image: %w", err)
	}
	b.sact = filepath.Join(dir, "sact")
	build := exec.Command("go", "build", "-o", b.sact, "./cmd/sact")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // handoff runs it in containers
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("building sact: %v: %s", err, out)
	}
	steps := map[string]func() error{
		"cold":     b.cold,
		"warm":     b.warm,
		"capacity": b.capacity,
		"http":     b.front,
		"scale":    b.scale,
		"swarm":    b.swarm,

		"scale-conns": b.scaleConns,
	}
	todo := scenarios
	if only != "" {
		todo = []string{only}
	}
	began := time.Now()
	for _, s := range todo {
		t := time.Now()
		if err := steps[s](); err != nil {
			return fmt.Errorf("scenario %s: %w", s, err)
		}
		fmt.Fprintf(os.Stderr, "scenario %s took %.0f s\n", s, time.Since(t).Seconds())
	}
	report := b.header(only, time.Since(began)) + b.goalsSection() + b.md.String()
	if err := os.WriteFile(out, []byte(report), 0o644); err != nil {
		return fmt.Errorf("writing the report: %w", err)
	}
	ok = true
	fmt.Fprintf(os.Stderr, "wrote %s\n", out)
	return nil
}

func (b *bench) header(only string, took time.Duration) string {
	var h strings.Builder
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
	cmd := "go run ./bench"
	if b.quick {
		cmd += " -quick"
	}
	if only != "" {
		cmd += " -only " + only
	}
	fmt.Fprintf(&h, "# Benchmarks\n\nWritten by `%s` (%s mode) on %s; the run took %.1f min.\n\n", cmd, mode, time.Now().UTC().Format("2006-01-02 15:04 MST"), took.Minutes())
	fmt.Fprintf(&h, "- machine: %s, %d CPUs (%s), %s/%s\n- Docker engine %s\n- %s\n\n", host, runtime.NumCPU(), cpu, runtime.GOOS, runtime.GOARCH, engine, runtime.Version())
	fmt.Fprintf(&h, "The machine is shared and noisy: compare rows of one table (same run), not runs.\n\n")
	return h.String()
}
