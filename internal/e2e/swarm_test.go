package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/swarmtest"
)

// needSwarm makes the two-node swarm (package swarmtest) for the test, with the test
// image on the worker and the worker's engine labelled for sact to follow.
func needSwarm(t *testing.T) *swarmtest.Swarm {
	t.Helper()
	needDocker(t)
	for _, tool := range swarmtest.Tools {
		needTool(t, tool)
	}
	if m := swarmtest.Missing(); m != "" {
		if required() {
			t.Fatalf("the swarm test needs %s (SACT_REQUIRE_DOCKER=1)", m)
		}
		t.Skipf("the swarm test needs %s", m)
	}
	sw := swarmtest.Start(t, testImage)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := sw.LabelWorkerEngine(ctx); err != nil {
		t.Fatal(err)
	}
	return sw
}

// serviceReplicas returns the replicas a service is set to, -1 if it does not exist.
func serviceReplicas(t *testing.T, service string) int {
	t.Helper()
	out, err := exec.Command("docker", "service", "inspect", "-f", "{{.Spec.Mode.Replicated.Replicas}}", service).Output()
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("replicas of %s: %q", service, out)
	}
	return n
}

func waitReplicas(t *testing.T, service string, want int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := serviceReplicas(t, service)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("service %s has %d replicas after %v, want %d", service, got, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// scaleUps counts the service's scale-ups from 0 to 1 since a time, from the manager's
// events: the attributes replicas.old and replicas.new say which update was one.
func scaleUps(t *testing.T, service string, since time.Time) int {
	t.Helper()
	out, err := exec.Command("docker", "events", "--since", strconv.FormatInt(since.Unix(), 10), "--until", strconv.FormatInt(time.Now().Add(time.Second).Unix(), 10),
		"--filter", "type=service", "--filter", "service="+service, "--format", "{{json .Actor.Attributes}}").Output()
	if err != nil {
		t.Fatalf("docker events: %v", err)
	}
	n := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		var attrs map[string]string
		if json.Unmarshal([]byte(line), &attrs) == nil && attrs["replicas.old"] == "0" && attrs["replicas.new"] == "1" {
			n++
		}
	}
	return n
}

// appNode returns the node an app runs on, as `sact status -json` shows it.
func appNode(t *testing.T, d *daemon, app string) string {
	t.Helper()
	out, err := sactCLI(t, d, "status", "-json")
	if err != nil {
		t.Fatalf("sact status -json: %v: %s", err, out)
	}
	var list struct {
		Apps []struct {
			Name, State, Node string
		} `json:"apps"`
	}
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("sact status -json: %v: %s", err, out)
	}
	for _, a := range list.Apps {
		if a.Name == app {
			return a.Node
		}
	}
	t.Fatalf("no app %s in sact status: %s", app, out)
	return ""
}

// TestSwarmService is issue 15 on a real two-node swarm: an app that sact makes as a
// service constrained to the worker is started by its first request, served warm, scaled
// to 0 when idle, started again; racing first connections give one scale-up; a task
// killed on the worker is noticed and the next request is served; a restarted sact
// adopts the running service; sact status shows the node.
func TestSwarmService(t *testing.T) {
	sw := needSwarm(t)
	app := uniqueName(t, "swarm-web")
	service := "sact-" + app
	addr := freeAddr(t)
	config := fmt.Sprintf(`
apps:
  %[1]s:
    image: %[2]s
    swarm:
      constraints: [node.role==worker]
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 3s
    stop_timeout: 3s
`, app, testImage, addr)
	path := writeConfig(t, config)
	d := startSactFile(t, path)

	// Cold: the first request creates the service and waits for its task on the worker.
	began := time.Now()
	body, err := httpGet(addr, "/")
	if err != nil || !strings.Contains(body, app) {
		t.Fatalf("first request: %q, %v\n%s", body, err, d.logs.String())
	}
	t.Logf("SWARM cold TTFB, service created: %v", time.Since(began))
	if node := appNode(t, d, app); node != swarmtest.WorkerIP {
		t.Fatalf("sact status shows node %q, want the worker %s", node, swarmtest.WorkerIP)
	}
	out, _ := sactCLI(t, d, "status")
	if !strings.Contains(out, "NODE") || !strings.Contains(out, swarmtest.WorkerIP) {
		t.Errorf("sact status has no NODE column with the worker's address:\n%s", out)
	}
	began = time.Now()
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	t.Logf("SWARM warm request: %v", time.Since(began))

	// Idle: scaled to 0, then started again by the next request.
	waitReplicas(t, service, 0, 30*time.Second)
	d.waitLog(`"app":"`+app+`"&&"msg":"stopped app"&&"reason":"idle"`, 10*time.Second)
	began = time.Now()
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, app) {
		t.Fatalf("request after idle stop: %q, %v", body, err)
	}
	t.Logf("SWARM cold TTFB, service at 0 scaled to 1: %v", time.Since(began))

	// 200 racing first connections: one scale-up, all served.
	waitReplicas(t, service, 0, 30*time.Second)
	time.Sleep(1100 * time.Millisecond) // events have second granularity: none of the earlier ones
	since := time.Now()
	burst(t, 200, []string{addr}, app)
	if n := scaleUps(t, service, since); n != 1 {
		t.Errorf("200 racing first connections gave %d scale-ups, want 1", n)
	}

	// The task's container killed on the worker: noticed, and the next request served.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cid, err := sw.Worker(ctx, "ps", "-q", "--filter", "label=com.docker.swarm.service.name="+service)
	if err != nil || cid == "" {
		t.Fatalf("no task container on the worker: %q %v", cid, err)
	}
	exits := d.countLog(`"app":"` + app + `"&&"msg":"app exited"`)
	if _, err := sw.Worker(ctx, "kill", cid); err != nil {
		t.Fatal(err)
	}
	d.waitLog(`"app":"`+app+`"&&"msg":"app exited"`, 3*time.Second) // the fallback check is 5 s: an event it must be
	if n := d.countLog(`"app":"` + app + `"&&"msg":"app exited"`); n != exits+1 {
		t.Errorf("%d exits logged after the kill, want %d", n, exits+1)
	}
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, app) {
		t.Fatalf("request after the task was killed: %q, %v", body, err)
	}

	// sact killed and started again: the running service is adopted, not started again.
	d.kill()
	time.Sleep(1100 * time.Millisecond) // the scale-up above is in an earlier second
	since = time.Now()
	d2 := startSactFile(t, path)
	d2.waitLog(`"app":"`+app+`"&&"msg":"adopted running app"`, 30*time.Second)
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, app) {
		t.Fatalf("request to the adopted service: %q, %v", body, err)
	}
	if n := scaleUps(t, service, since); n != 0 {
		t.Errorf("the restarted sact scaled the running service up %d times, want 0 (adopted)", n)
	}
	if node := appNode(t, d2, app); node != swarmtest.WorkerIP {
		t.Errorf("adopted app on node %q, want %s", node, swarmtest.WorkerIP)
	}
	// sact logs reads the service's logs as swarm gathers them from the worker.
	if out, err := sactCLI(t, d2, "logs", app); err != nil {
		t.Errorf("sact logs %s: %v: %s", app, err, out)
	}
}

// TestSwarmServiceMadeElsewhere: service: NAME, made with docker service create at 0
// replicas and a host-mode port, is scaled to 1 by its first request and back to 0.
func TestSwarmServiceMadeElsewhere(t *testing.T) {
	needSwarm(t)
	app := uniqueName(t, "swarm-ext")
	service := "swarm-ext-" + app
	// --no-resolve-image: else the CLI asks Docker Hub for the image's digest.
	out, err := exec.Command("docker", "service", "create", "-d", "--no-resolve-image", "--name", service, "--replicas", "0",
		"--constraint", "node.role==worker", "--publish", "mode=host,target=8080",
		"--env", "NAME="+app, "--env", "LISTEN=tcp:0.0.0.0:8080", testImage).CombinedOutput()
	if err != nil {
		t.Fatalf("docker service create: %v: %s", err, out)
	}
	addr := freeAddr(t)
	d := startSact(t, fmt.Sprintf(`
apps:
  %[1]s:
    service: %[2]s
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: 2s
`, app, service, addr))
	var wg sync.WaitGroup
	began := time.Now()
	for range 20 {
		wg.Go(func() {
			if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, app) {
				t.Errorf("request: %q, %v", body, err)
			}
		})
	}
	wg.Wait()
	t.Logf("SWARM cold TTFB, service made elsewhere: %v", time.Since(began))
	if n := serviceReplicas(t, service); n != 1 {
		t.Errorf("service at %d replicas while served, want 1", n)
	}
	waitReplicas(t, service, 0, 30*time.Second)
	d.waitLog(`"app":"`+app+`"&&"msg":"stopped app"&&"reason":"idle"`, 10*time.Second)
}
