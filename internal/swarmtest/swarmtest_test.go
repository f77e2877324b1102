package swarmtest

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

// TestSwarm makes the swarm, runs a service on the worker with a host-mode port, reaches
// it on the worker's address, and checks that teardown leaves the host's engine out of
// swarm mode with no namespace left.
func TestSwarm(t *testing.T) {
	if m := Missing(); m != "" {
		if os.Getenv("SACT_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s is required (SACT_REQUIRE_DOCKER=1)", m)
		}
		t.Skipf("%s missing", m)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	img, err := testimage.TestServer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Run("up", func(t *testing.T) {
		s := Start(t, img)
		// --no-resolve-image: else the CLI asks Docker Hub for the image's digest.
		out, err := exec.Command("docker", "service", "create", "-d", "--no-resolve-image", "--name", "swarm-harness",
			"--constraint", "node.id=="+s.WorkerNode, "--publish", "mode=host,target=8080",
			"--env", "NAME=harness", img).CombinedOutput()
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		deadline := time.Now().Add(60 * time.Second)
		for {
			port, _ := exec.Command("docker", "service", "ps", "--filter", "desired-state=running",
				"--format", "{{.Ports}}", "swarm-harness").Output()
			if p := strings.TrimSpace(string(port)); strings.Contains(p, "->") {
				hp := p[strings.Index(p, ":")+1 : strings.Index(p, "->")]
				resp, err := http.Get("http://" + WorkerIP + ":" + hp + "/")
				if err == nil {
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if !strings.Contains(string(b), "harness") {
						t.Fatalf("body %q", b)
					}
					break
				}
			}
			if time.Now().After(deadline) {
				t.Fatal("service not reachable on the worker")
			}
			time.Sleep(200 * time.Millisecond)
		}
	})
	st, _ := exec.Command("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").Output()
	if strings.TrimSpace(string(st)) != "inactive" {
		t.Errorf("host engine left in swarm state %s", st)
	}
	if _, err := os.Stat("/var/run/netns/" + NetNS); err == nil {
		t.Errorf("netns %s left", NetNS)
	}
	if _, err := os.Stat(Dir); err == nil {
		t.Errorf("%s left", Dir)
	}
}

// TestCrashedRunCleanedUp: a run killed with SIGKILL leaves the host's engine in swarm
// mode, the worker's dockerd, the namespace; the next Start removes it all and works, and
// its teardown leaves nothing.
func TestCrashedRunCleanedUp(t *testing.T) {
	if os.Getenv("SWARMTEST_CRASH") == "1" {
		Start(t)
		fmt.Println("SWARM UP")
		select {} // until killed: no cleanup runs
	}
	if m := Missing(); m != "" {
		if os.Getenv("SACT_REQUIRE_DOCKER") == "1" {
			t.Fatalf("%s is required (SACT_REQUIRE_DOCKER=1)", m)
		}
		t.Skipf("%s missing", m)
	}
	crash := exec.Command(os.Args[0], "-test.run", "^TestCrashedRunCleanedUp$", "-test.timeout", "5m")
	crash.Env = append(os.Environ(), "SWARMTEST_CRASH=1")
	out, err := crash.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := crash.Start(); err != nil {
		t.Fatal(err)
	}
	up := make(chan bool, 1)
	go func() {
		b := make([]byte, 4096)
		var all []byte
		for {
			n, err := out.Read(b)
			all = append(all, b[:n]...)
			if strings.Contains(string(all), "SWARM UP") {
				up <- true
				return
			}
			if err != nil {
				up <- false
				return
			}
		}
	}()
	select {
	case ok := <-up:
		if !ok {
			crash.Process.Kill()
			crash.Wait()
			t.Fatal("the crashing run did not make its swarm")
		}
	case <-time.After(3 * time.Minute):
		crash.Process.Kill()
		crash.Wait()
		t.Fatal("the crashing run did not make its swarm in 3 minutes")
	}
	crash.Process.Kill()
	crash.Wait()
	if st, _ := exec.Command("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").Output(); strings.TrimSpace(string(st)) != "active" {
		t.Fatalf("the crashed run left the host in swarm state %s; the test needs it active to mean anything", st)
	}
	t.Run("next", func(t *testing.T) {
		s := Start(t)
		if s.WorkerNode == "" {
			t.Fatal("no worker node")
		}
	})
	if st, _ := exec.Command("docker", "info", "--format", "{{.Swarm.LocalNodeState}}").Output(); strings.TrimSpace(string(st)) != "inactive" {
		t.Errorf("host engine left in swarm state %s", st)
	}
	if _, err := os.Stat("/var/run/netns/" + NetNS); err == nil {
		t.Errorf("netns %s left", NetNS)
	}
}
