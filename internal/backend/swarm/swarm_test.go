package swarm_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/swarm"
	"github.com/sact-project/sact/internal/swarmtest"
	"github.com/sact-project/sact/internal/testimage"
)

func need(t *testing.T) {
	t.Helper()
	m := swarmtest.Missing()
	if m == "" {
		if err := exec.Command("docker", "version").Run(); err != nil {
			m = "a Docker engine"
		}
	}
	if m != "" {
		if os.Getenv("SACT_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s is required (SACT_REQUIRE_DOCKER=1)", m)
		}
		t.Skipf("%s missing", m)
	}
}

func get(t *testing.T, addr string) string {
	t.Helper()
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + addr + "/")
	if err != nil {
		t.Fatalf("GET %s: %v", addr, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// waitAccept waits until addr accepts, as the activator's readiness does.
func waitAccept(t *testing.T, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept: %v", addr, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestRuntime runs a service sact makes on the worker through the runtime: start, racing
// starts, stop, a killed task noticed through the worker's events, adoption.
func TestRuntime(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	img, err := testimage.TestServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sw := swarmtest.Start(t, img)
	if err := sw.LabelWorkerEngine(ctx); err != nil {
		t.Fatal(err)
	}
	rt, err := swarm.New(ctx, swarm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- rt.Run(rctx) }()
	defer func() { stop(); <-done }()

	spec := backend.Spec{
		Name: "swarm-rt", Image: img, Port: 8080, Env: map[string]string{"NAME": "swarm-rt"}, Hash: "h1",
		Extra: swarm.Settings{Constraints: []string{"node.role==worker"}},
	}
	began := time.Now()
	inst, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(inst.Upstream.Address, swarmtest.WorkerIP+":") || inst.Node != swarmtest.WorkerIP {
		t.Fatalf("instance at %v on node %q, want the worker %s", inst.Upstream, inst.Node, swarmtest.WorkerIP)
	}
	waitAccept(t, inst.Upstream.Address)
	t.Logf("cold start on the worker, create included: %v", time.Since(began))
	if b := get(t, inst.Upstream.Address); !strings.Contains(b, "swarm-rt") {
		t.Fatalf("body %q", b)
	}

	// Racing starts: the same task, no second scale-up.
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() {
			i, err := rt.Start(ctx, spec)
			if err != nil {
				t.Error(err)
			} else if i.Upstream != inst.Upstream {
				t.Errorf("racing start gave %v, want %v", i.Upstream, inst.Upstream)
			}
		})
	}
	wg.Wait()

	// Killed on the worker: noticed from the worker engine's events.
	cid, err := sw.Worker(ctx, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=sact-swarm-rt")
	if err != nil || cid == "" {
		t.Fatalf("task container on the worker: %q %v", cid, err)
	}
	killed := time.Now()
	if _, err := sw.Worker(ctx, "kill", cid); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-inst.Exited:
		t.Logf("kill noticed after %v: %v", time.Since(killed), e)
	case <-time.After(swarm.NodeCheckEvery / 2):
		t.Fatal("a killed task was not noticed from the worker's events")
	}
	// Scaled to 0 before the exit was reported.
	if out, _ := exec.Command("docker", "service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", "sact-swarm-rt").Output(); strings.TrimSpace(string(out)) != "0" {
		t.Errorf("after the task died the service has %s replicas, want 0", out)
	}

	// Started again; then adopted by a second runtime (sact restarted).
	began = time.Now()
	sctx, scancel := context.WithTimeout(ctx, 20*time.Second)
	inst2, err := rt.Start(sctx, spec)
	scancel()
	if err != nil {
		out, _ := exec.Command("sh", "-c", "docker service ps --no-trunc sact-swarm-rt; docker service inspect -f '{{json .Spec.Mode}} {{json .Spec.TaskTemplate.ForceUpdate}} {{.Version.Index}}' sact-swarm-rt; docker events --since 2m --until 0s --filter type=service --format '{{.Action}} {{json .Actor.Attributes}}'").CombinedOutput()
		t.Fatalf("%v\n%s", err, out)
	}
	waitAccept(t, inst2.Upstream.Address)
	t.Logf("warm-image cold start (scale 0 -> 1): %v", time.Since(began))
	rt2, err := swarm.New(ctx, swarm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	adopted, err := rt2.Running(ctx, spec)
	if err != nil || adopted == nil || adopted.Upstream != inst2.Upstream {
		t.Fatalf("Running = %v, %v; want %v", adopted, err, inst2.Upstream)
	}

	if err := rt.Stop(ctx, spec, time.Second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-inst2.Exited:
	case <-time.After(10 * time.Second):
		t.Fatal("no exit after Stop")
	}
	if i, err := rt.Running(ctx, spec); err != nil || i != nil {
		t.Fatalf("Running after Stop = %v, %v", i, err)
	}
}
