package swarm_test

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
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

	// Started again by racing starts from 0: one update of the service, a scale-up, and
	// no forced update by a start that finds it at 1 before its task exists.
	time.Sleep(1100 * time.Millisecond) // events have second granularity
	since := time.Now()
	began = time.Now()
	insts := make([]*backend.Instance, 10)
	for i := range insts {
		wg.Go(func() {
			sctx, scancel := context.WithTimeout(ctx, 60*time.Second)
			defer scancel()
			inst, err := rt.Start(sctx, spec)
			if err != nil {
				out, _ := exec.Command("docker", "service", "ps", "--no-trunc", "sact-swarm-rt").CombinedOutput()
				t.Errorf("%v\n%s", err, out)
			}
			insts[i] = inst
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	inst2 := insts[0]
	for _, i := range insts {
		if i.Upstream != inst2.Upstream {
			t.Errorf("racing starts gave %v and %v", i.Upstream, inst2.Upstream)
		}
	}
	waitAccept(t, inst2.Upstream.Address)
	t.Logf("warm-image cold start (scale 0 -> 1): %v", time.Since(began))
	if n := serviceUpdates(t, "sact-swarm-rt", since); n != 1 {
		t.Errorf("10 racing starts updated the service %d times, want 1", n)
	}
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

	// Removed behind sact's back: noticed from the events.
	inst3, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("docker", "service", "rm", "sact-swarm-rt").CombinedOutput(); err != nil {
		t.Fatalf("docker service rm: %v: %s", err, out)
	}
	select {
	case e := <-inst3.Exited:
		t.Logf("removed service noticed: %v", e)
	case <-time.After(swarm.NodeCheckEvery / 2):
		t.Fatal("a removed service was not noticed from the events")
	}
}

// serviceUpdates counts the updates of a service since a time, from the manager's events.
func serviceUpdates(t *testing.T, service string, since time.Time) int {
	t.Helper()
	out, err := exec.Command("docker", "events", "--since", strconv.FormatInt(since.Unix(), 10), "--until", strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10),
		"--filter", "type=service", "--filter", "service="+service, "--filter", "event=update", "--format", "{{.Action}}").Output()
	if err != nil {
		t.Fatalf("docker events: %v", err)
	}
	return strings.Count(string(out), "update")
}

// TestRuntimeUnlabelledNode: a worker whose engine sact cannot follow (no sact.engine
// label) has its tasks checked every NodeCheckEvery: a killed task is noticed then.
func TestRuntimeUnlabelledNode(t *testing.T) {
	need(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := testimage.TestServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sw := swarmtest.Start(t, img)
	old := swarm.NodeCheckEvery
	swarm.NodeCheckEvery = time.Second
	t.Cleanup(func() { swarm.NodeCheckEvery = old })
	rt, err := swarm.New(ctx, swarm.Options{})
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- rt.Run(rctx) }()
	defer func() { stop(); <-done }()
	spec := backend.Spec{
		Name: "swarm-unlabelled", Image: img, Port: 8080, Hash: "h1",
		Extra: swarm.Settings{Constraints: []string{"node.role==worker"}},
	}
	inst, err := rt.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	cid, err := sw.Worker(ctx, "ps", "-q", "--filter", "label=com.docker.swarm.service.name=sact-swarm-unlabelled")
	if err != nil || cid == "" {
		t.Fatalf("task container on the worker: %q %v", cid, err)
	}
	if _, err := sw.Worker(ctx, "kill", cid); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-inst.Exited:
		t.Logf("noticed by the fallback check: %v", e)
		// Its task failed; swarm then wants it shut down, which is no stop from outside.
		if e.Reason != "exited" || e.Code != 137 || e.Killed {
			t.Errorf("exit %+v, want exited with code 137, not killed", e)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a killed task on an unlabelled node was not noticed")
	}
}
