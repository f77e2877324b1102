package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// deployReady is how long the test server takes to listen in the deploy tests: a cold
// start costs at least this, which a deploy must never make a client wait.
const deployReady = 3 * time.Second

// deployApp is an app whose answer names its version ("hello from NAME-VERSION"); mode
// "proxy" listens on addr, "front" is served by the front door under NAME.test.
func deployApp(name, addr, mode, version, extraEnv string) string {
	route := fmt.Sprintf("    listen: [\"tcp:%s\"]\n", addr)
	head := "apps:"
	if mode == "front" {
		route = fmt.Sprintf("    hosts: [%q]\n", name+".test")
		head = fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", addr)
	}
	return fmt.Sprintf(`%[6]s
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s-%[3]s, LISTEN: "tcp:0.0.0.0:8080", READY_DELAY: %[4]s%[5]s}
%[7]s    port: 8080
    stop_timeout: 3s
    start_timeout: 20s
    idle: 10m
`, name, testImage, version, deployReady, extraEnv, head, route)
}

// reqLoop sends requests for / one after another, on new connections or on one kept
// alive, and records what it saw.
type reqLoop struct {
	mu       sync.Mutex
	n        int
	errs     []string
	max      time.Duration
	versions []string // the version of each answer, in order
	lastAt   map[string]time.Time
}

func (l *reqLoop) run(ctx context.Context, addr, host string, keepAlive bool) {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			network := "tcp"
			if strings.HasPrefix(addr, "/") {
				network = "unix" // a handoff app's unix listener
			}
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: !keepAlive,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 60 * time.Second}
	for ctx.Err() == nil {
		began := time.Now()
		resp, err := c.Get("http://" + host + "/")
		var body []byte
		if err == nil {
			body, err = io.ReadAll(resp.Body)
			resp.Body.Close()
			if err == nil && resp.StatusCode != 200 {
				err = fmt.Errorf("status %s: %s", resp.Status, body)
			}
		}
		took := time.Since(began)
		l.mu.Lock()
		l.n++
		l.max = max(l.max, took)
		if err != nil {
			l.errs = append(l.errs, fmt.Sprintf("at %s after %v: %v", began.UTC().Format("15:04:05.000"), took, err))
		} else {
			v := "?"
			if i := strings.LastIndex(string(body), "-v"); i >= 0 {
				v = strings.Fields(string(body[i+1:]))[0]
			}
			l.versions = append(l.versions, v)
		}
		l.mu.Unlock()
		time.Sleep(20 * time.Millisecond)
	}
}

func (l *reqLoop) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.versions) == 0 {
		return ""
	}
	return l.versions[len(l.versions)-1]
}

// deployStatus is app's entry in `sact status -json`.
type deployStatus struct {
	Name           string `json:"name"`
	State          string `json:"state"`
	ColdStarts     int    `json:"cold_starts"`
	LastError      string `json:"last_error"`
	Deploys        int    `json:"deploys"`
	DeployFailures int    `json:"deploy_failures"`
}

func statusOf(t *testing.T, d *daemon, app string) deployStatus {
	t.Helper()
	return appStatusAs[deployStatus](t, d, app)
}

// appStatusAs decodes app's entry in `sact status -json` into the fields T has.
func appStatusAs[T any](t *testing.T, d *daemon, app string) T {
	t.Helper()
	out, err := sactCLI(t, d, "status", "-json")
	if err != nil {
		t.Fatalf("sact status: %v: %s", err, out)
	}
	var list struct{ Apps []json.RawMessage }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Fatalf("sact status -json: %v: %s", err, out)
	}
	for _, raw := range list.Apps {
		var named struct{ Name string }
		if json.Unmarshal(raw, &named) == nil && named.Name == app {
			var v T
			if err := json.Unmarshal(raw, &v); err != nil {
				t.Fatalf("sact status -json, app %s: %v", app, err)
			}
			return v
		}
	}
	t.Fatalf("sact status shows no app %s: %s", app, out)
	var zero T
	return zero
}

func reloadTo(t *testing.T, d *daemon, config string) {
	t.Helper()
	if err := os.WriteFile(d.config, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := sactCLI(t, d, "reload"); err != nil {
		t.Fatalf("sact reload: %v\n%s", err, out)
	}
}

// TestDeployWithoutColdStart: a reload that changes a running app's settings under a
// steady client loop (new connections, and one kept alive) loses no request and makes
// no client wait for a cold start; new connections get the new version once it is
// ready, the kept-alive one after the old version's drain (issue 17).
func TestDeployWithoutColdStart(t *testing.T) {
	parallel(t)
	needDocker(t)
	for _, mode := range []string{"proxy", "front"} {
		t.Run(mode, func(t *testing.T) {
			name := uniqueName(t, "deploy-"+mode)
			addr := freeAddr(t)
			d := startSact(t, deployApp(name, addr, mode, "v1", ""))
			host := name + ".test"

			began := time.Now()
			if body, err := httpGetHost(addr, host); err != nil || !strings.Contains(body, name+"-v1") {
				t.Fatalf("first request: %q, %v", body, err)
			}
			cold := time.Since(began)

			ctx, cancel := context.WithCancel(context.Background())
			var fresh, kept reqLoop
			var wg sync.WaitGroup
			wg.Go(func() { fresh.run(ctx, addr, host, false) })
			wg.Go(func() { fresh.run(ctx, addr, host, false) })
			wg.Go(func() { kept.run(ctx, addr, host, true) })
			stop := func() { cancel(); wg.Wait() }
			defer stop()
			time.Sleep(time.Second)

			reloadTo(t, d, deployApp(name, addr, mode, "v2", ""))
			// New connections get the new version once it is ready.
			for deadline := time.Now().Add(60 * time.Second); fresh.last() != "v2"; time.Sleep(100 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("new connections still get %q 60s after the reload, want v2", fresh.last())
				}
			}
			if d.awaitCount(`"msg":"deployed app;&&`+name, 1) != 1 {
				t.Errorf("new connections get v2, but no deploy was logged")
			}
			// The kept-alive connection: on the old version until its drain ends.
			deadline := time.Now().Add(30 * time.Second)
			for kept.last() != "v2" && time.Now().Before(deadline) {
				time.Sleep(100 * time.Millisecond)
			}
			time.Sleep(500 * time.Millisecond)
			stop()

			for _, l := range []*reqLoop{&fresh, &kept} {
				if len(l.errs) > 0 {
					t.Errorf("%d of %d requests failed: %v", len(l.errs), l.n, l.errs)
				}
			}
			if v := kept.last(); v != "v2" {
				t.Errorf("the kept-alive connection still gets %q 30s after the deploy, want v2", v)
			}
			worst := max(fresh.max, kept.max)
			t.Logf("%s: %d requests on new connections, %d kept alive; cold start %v; slowest request during the deploy %v",
				mode, fresh.n, kept.n, cold.Round(time.Millisecond), worst.Round(time.Millisecond))
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
		})
	}
}

// TestDeployFailedKeepsOldVersion: a new version that never gets ready is removed after
// its start_timeout; the old one serves throughout, and status and the log say why,
// with the new one's last log lines.
func TestDeployFailedKeepsOldVersion(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "deploy-fail")
	addr := freeAddr(t)
	d := startSact(t, deployApp(name, addr, "proxy", "v1", ""))
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name+"-v1") {
		t.Fatalf("first request: %q, %v", body, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var loop reqLoop
	var wg sync.WaitGroup
	wg.Go(func() { loop.run(ctx, addr, "x", false) })
	defer func() { cancel(); wg.Wait() }()

	reloadTo(t, d, deployApp(name, addr, "proxy", "v2", ", NEVER_READY: 1"))
	// Until the deploy gives up (start_timeout), no request may fail.
	failed := `"msg":"deploy failed; the old version goes on serving"&&` + name
	for deadline := time.Now().Add(60 * time.Second); d.countLog(failed) == 0; time.Sleep(100 * time.Millisecond) {
		loop.mu.Lock()
		errs := slices.Clone(loop.errs)
		loop.mu.Unlock()
		if len(errs) > 0 || time.Now().After(deadline) {
			t.Fatalf("%d requests failed after the reload, and no failed deploy logged: %v", len(errs), errs)
		}
	}
	rec := d.waitLog(`"msg":"deploy failed; the old version goes on serving"&&`+name, 60*time.Second)
	if logs, _ := rec["logs"].(string); !strings.Contains(logs, "never getting ready") {
		t.Errorf("the failure's log line lacks the new one's log lines: %v", rec)
	}
	time.Sleep(500 * time.Millisecond)
	cancel()
	wg.Wait()
	if len(loop.errs) > 0 {
		t.Errorf("%d of %d requests failed: %v", len(loop.errs), loop.n, loop.errs)
	}
	for i, v := range loop.versions {
		if v != "v1" {
			t.Fatalf("answer %d of %d is from %q, want v1 throughout", i, len(loop.versions), v)
		}
	}
	st := statusOf(t, d, name)
	if st.State != "running" || st.DeployFailures != 1 || !strings.Contains(st.LastError, "deploy failed") || !strings.Contains(st.LastError, "never getting ready") {
		t.Errorf("status after the failed deploy: %+v", st)
	}
	if out, err := sactCLI(t, d, "status"); err != nil || !strings.Contains(out, name+": deploy failed") {
		t.Errorf("sact status does not show the failed deploy: %v\n%s", err, out)
	}
	waitGone(t, "sact-"+name+"-Next", 30*time.Second)
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name+"-v1") {
		t.Errorf("after the failed deploy: %q, %v; want v1", body, err)
	}
	// Another image built on the engine does not retry the failed version.
	unrelated := "sact-e2e-unrelated:" + name
	docker(t, "tag", testImage, unrelated)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", unrelated).Run() })
	time.Sleep(2 * time.Second)
	if n := d.countLog(`"msg":"deploying app"&&` + name); n != 1 {
		t.Errorf("%d deploys of the failed version after an unrelated image was tagged, want 1", n)
	}
}

// TestStartedByHandIsAdopted: the app's container, started by hand while sact runs and
// the app is stopped, becomes the app's running instance: status says running, no
// cold start is made for the next request, and idle stops it.
func TestStartedByHandIsAdopted(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "deploy-byhand")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    idle: 4s\n")
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name) {
		t.Fatalf("first request: %q, %v", body, err)
	}
	if out, err := sactCLI(t, d, "stop", name); err != nil {
		t.Fatalf("sact stop: %v\n%s", err, out)
	}
	docker(t, "start", "sact-"+name)
	for deadline := time.Now().Add(10 * time.Second); statusOf(t, d, name).State != "running"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status after docker start: %+v, want running", statusOf(t, d, name))
		}
	}
	d.waitLog(`"msg":"adopted app started outside sact"&&`+name, 5*time.Second)
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name) {
		t.Fatalf("request to the adopted app: %q, %v", body, err)
	}
	if st := statusOf(t, d, name); st.ColdStarts != 1 {
		t.Errorf("cold starts %d after adopting, want 1 (the first request's)", st.ColdStarts)
	}
	d.waitLog(`"msg":"stopped app"&&`+name+`&&"reason":"idle"`, 30*time.Second)
	waitContainerState(t, name, "exited", 10*time.Second)

	// docker restart of the running app: its exit, then its start by hand.
	if out, err := sactCLI(t, d, "start", name); err != nil {
		t.Fatalf("sact start: %v\n%s", err, out)
	}
	docker(t, "restart", "-t", "1", "sact-"+name)
	d.awaitCount(`"msg":"app exited"&&`+name, 1)
	for deadline := time.Now().Add(10 * time.Second); statusOf(t, d, name).State != "running"; time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("status after docker restart: %+v with the container %s, want running", statusOf(t, d, name), containerState(t, name))
		}
	}
	d.awaitCount(`"msg":"stopped app"&&`+name+`&&"reason":"idle"`, 2)
	if n := d.countLog(`"msg":"stopped app"&&` + name + `&&"reason":"idle"`); n != 2 {
		t.Errorf("the app restarted by docker was not stopped when idle (%d idle stops)", n)
	}
	waitContainerState(t, name, "exited", 10*time.Second)
}

// httpGetHost is httpGet with a Host header, for the front door.
func httpGetHost(addr, host string) (string, error) {
	req, _ := http.NewRequest("GET", "http://"+host+"/", nil)
	tr := &http.Transport{DisableKeepAlives: true, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "tcp", addr)
	}}
	defer tr.CloseIdleConnections()
	resp, err := (&http.Client{Transport: tr, Timeout: 60 * time.Second}).Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != 200 {
		err = fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// waitGone waits until no container is called name.
func waitGone(t *testing.T, name string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for exec.Command("docker", "inspect", name).Run() == nil {
		if time.Now().After(deadline) {
			t.Errorf("container %s still exists after %v", name, timeout)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestDeployOnRebuiltImage: an image rebuilt under a running app's tag (the engine's tag
// event) deploys the app: the new image answers, with no cold start.
func TestDeployOnRebuiltImage(t *testing.T) {
	other := needHostileImage(t)
	name := uniqueName(t, "deploy-image")
	tag := "sact-e2e-deploy:" + name
	docker(t, "tag", testImage, tag)
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", tag).Run() })
	addr := freeAddr(t)
	d := startSact(t, "apps:"+strings.Replace(appConfig(name, addr, ""), "image: "+testImage, "image: "+tag, 1)+"    idle: 10m\n")
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("first start: %q, %v", body, err)
	}
	docker(t, "tag", other, tag) // as `docker build -t` does
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		body, err := httpGet(addr, "/")
		if err != nil {
			t.Fatalf("during the deploy: %v", err)
		}
		if strings.Contains(body, "hostile app") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the running app still answers %q 60s after its image was rebuilt", body)
		}
	}
	d.waitLog(`"msg":"deployed app;&&`+name+`&&its image was rebuilt`, 5*time.Second)
	if st := statusOf(t, d, name); st.ColdStarts != 1 || st.Deploys != 1 {
		t.Errorf("status after the rebuild: %+v, want 1 cold start and 1 deploy", st)
	}
}

// TestDeployLeftoverRemoved: a sact killed while an old version drains leaves its
// container running; the next sact removes it as it adopts the app.
func TestDeployLeftoverRemoved(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "deploy-left")
	addr := freeAddr(t)
	d := startSact(t, deployApp(name, addr, "proxy", "v1", ""))
	c := dialTCP(t, addr) // kept open: the old version drains it
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(60 * time.Second))
	if _, err := c.Read(make([]byte, 512)); err != nil {
		t.Fatalf("first request: %v", err)
	}
	reloadTo(t, d, deployApp(name, addr, "proxy", "v2", ""))
	d.waitLog(`"msg":"deployed app;&&`+name+`&&"draining":1`, 60*time.Second)
	d.kill()
	if s := docker(t, "inspect", "-f", "{{.State.Status}}", "sact-"+name+"-Old"); s != "running" {
		t.Fatalf("the draining old version is %q after sact was killed, want running (else this test shows nothing)", s)
	}
	d2 := startSactFile(t, d.config)
	waitGone(t, "sact-"+name+"-Old", 20*time.Second)
	d2.waitLog(`"msg":"removing a container left by an interrupted deploy"&&`+name, 5*time.Second)
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name+"-v2") {
		t.Errorf("after the restart: %q, %v; want v2", body, err)
	}
}
