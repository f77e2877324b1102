package e2e

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// handoffDeployApp is a handoff app whose answer names its version ("hello from
// NAME-VERSION"), slow to boot (deployReady) and graceful on SIGTERM: it stops
// accepting and finishes its requests, as app servers do.
func handoffDeployApp(name, tcp, sock, version, extraEnv string) string {
	return fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    user: "1001"
    network: none
    handoff: true
    env: {NAME: %[1]s-%[3]s, READY_DELAY: %[4]s, GRACEFUL: "1"%[5]s}
    listen: ["tcp:%[6]s", "unix:%[7]s"]
    idle: 10m
    stop_timeout: 3s
    start_timeout: 20s
`, name, testImage, version, deployReady, extraEnv, tcp, sock)
}

// TestHandoffDeployWithoutColdStart: a reload that changes a running handoff app's
// settings under a steady client loop (new connections and kept-alive ones, on its TCP
// and its unix listener) starts the new version beside the old one on the same
// listening sockets: no request fails, none waits for a cold start, and the answers
// switch to the new version; status shows one running app (issue 17).
func TestHandoffDeployWithoutColdStart(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "hdeploy")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
	d := startSact(t, handoffDeployApp(name, tcp, sock, "v1", ""))

	began := time.Now()
	if body, err := httpGet(tcp, "/"); err != nil || !strings.Contains(body, name+"-v1") {
		t.Fatalf("first request: %q, %v", body, err)
	}
	cold := time.Since(began)

	ctx, cancel := context.WithCancel(context.Background())
	loops := map[string]*reqLoop{}
	var wg sync.WaitGroup
	for _, addr := range []string{tcp, sock} {
		for _, keep := range []bool{false, true} {
			l := &reqLoop{}
			loops[fmt.Sprintf("%s keep-alive=%v", addr, keep)] = l
			wg.Go(func() { l.run(ctx, addr, "x", keep) })
		}
	}
	stop := func() { cancel(); wg.Wait() }
	defer stop()
	time.Sleep(time.Second)

	reloadTo(t, d, handoffDeployApp(name, tcp, sock, "v2", ""))
	deadline := time.Now().Add(60 * time.Second)
	for {
		all := true
		for _, l := range loops {
			all = all && l.last() == "v2"
		}
		if all {
			break
		}
		if time.Now().After(deadline) {
			for k, l := range loops {
				t.Logf("%s: last answer %q", k, l.last())
			}
			t.Fatalf("not every client gets v2 60s after the reload (the app restarts only once idle, and clients never let it be)")
		}
		time.Sleep(100 * time.Millisecond)
	}
	rec := d.waitLog(`"msg":"deployed app;&&`+name, 5*time.Second)
	t.Logf("deployed: %v", rec)
	time.Sleep(500 * time.Millisecond)
	stop()

	var worst time.Duration
	for k, l := range loops {
		if len(l.errs) > 0 {
			t.Errorf("%s: %d of %d requests failed: %v", k, len(l.errs), l.n, l.errs)
		}
		// Both answer while they share the sockets, from the new one's first
		// connection until the old one has stopped accepting; then only v2.
		if len(l.versions) == 0 || l.versions[0] != "v1" || l.last() != "v2" {
			t.Errorf("%s: answers %v, want v1 first and v2 last", k, compact(l.versions))
		}
		t.Logf("%s: answers %s", k, compact(l.versions))
		worst = max(worst, l.max)
		t.Logf("%s: %d requests, slowest %v", k, l.n, l.max.Round(time.Millisecond))
	}
	t.Logf("cold start %v; slowest request during the deploy %v", cold.Round(time.Millisecond), worst.Round(time.Millisecond))
	if worst >= deployReady {
		t.Errorf("a request took %v during the deploy: as long as a cold start (the app listens after %v)", worst, deployReady)
	}
	st := statusOf(t, d, name)
	if st.ColdStarts != 1 || st.Deploys != 1 || st.State != "running" || st.LastError != "" {
		t.Errorf("status after the deploy: %+v, want 1 cold start, 1 deploy, running", st)
	}
	waitGone(t, "sact-"+name+"-Old", 20*time.Second)
	if s := containerState(t, name); s != "running" {
		t.Errorf("container sact-%s is %q after the deploy, want running", name, s)
	}
	if n := d.countLog(`"msg":"handoff peer refused"&&` + name); n != 0 {
		t.Errorf("%d handoff peers refused during the deploy", n)
	}
	// The new one serves on both sockets by itself, and idle accounting goes on.
	for _, addr := range []string{tcp, sock} {
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name+"-v2") {
			t.Errorf("after the deploy, %s: %q, %v", addr, body, err)
		}
	}
}

// compact sums up a list of versions as runs: "v1 x120, v2 x80".
func compact(vs []string) string {
	var b strings.Builder
	for i := 0; i < len(vs); {
		j := i
		for j < len(vs) && vs[j] == vs[i] {
			j++
		}
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s x%d", vs[i], j-i)
		i = j
	}
	return b.String()
}

// TestHandoffDeployFailedKeepsOldVersion: a new version of a handoff app that exits as
// it starts is removed; the old one serves on its sockets throughout, and status and
// the log say why.
func TestHandoffDeployFailedKeepsOldVersion(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "hdeploy-fail")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
	d := startSact(t, handoffDeployApp(name, tcp, sock, "v1", ""))
	if body, err := httpGet(tcp, "/"); err != nil || !strings.Contains(body, name+"-v1") {
		t.Fatalf("first request: %q, %v", body, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var loop reqLoop
	var wg sync.WaitGroup
	wg.Go(func() { loop.run(ctx, tcp, "x", false) })
	defer func() { cancel(); wg.Wait() }()

	reloadTo(t, d, handoffDeployApp(name, tcp, sock, "v2", `, EXIT_CODE: "3"`))
	rec := d.waitLog(`"msg":"deploy failed; the old version goes on serving"&&`+name, 60*time.Second)
	if e, _ := rec["err"].(string); !strings.Contains(e, "exiting with code 3") {
		t.Errorf("the failure's log line lacks the new one's exit: %v", rec)
	}
	time.Sleep(time.Second)
	cancel()
	wg.Wait()
	if len(loop.errs) > 0 {
		t.Errorf("%d of %d requests failed: %v", len(loop.errs), loop.n, loop.errs)
	}
	if slices.ContainsFunc(loop.versions, func(v string) bool { return v != "v1" }) || len(loop.versions) == 0 {
		t.Errorf("answers %v, want v1 throughout", compact(loop.versions))
	}
	st := statusOf(t, d, name)
	if st.State != "running" || st.DeployFailures != 1 || !strings.Contains(st.LastError, "deploy failed") {
		t.Errorf("status after the failed deploy: %+v", st)
	}
	waitGone(t, "sact-"+name+"-Next", 30*time.Second)
	for _, addr := range []string{tcp, sock} {
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name+"-v1") {
			t.Errorf("after the failed deploy, %s: %q, %v; want v1", addr, body, err)
		}
	}
}
