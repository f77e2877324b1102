package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// isolationStatus returns an app's state and last error from the admin API.
func isolationStatus(t *testing.T, d *daemon, name string) (state, lastError string) {
	t.Helper()
	var list struct {
		Apps []struct {
			Name, State string
			LastError   string `json:"last_error"`
		}
	}
	getJSON(t, d, "/api/apps", &list)
	for _, a := range list.Apps {
		if a.Name == name {
			return a.State, a.LastError
		}
	}
	t.Fatalf("app %s is missing from the status: %+v", name, list.Apps)
	return "", ""
}

// holdPort listens on a free loopback port until the test ends (or the returned
// listener is closed): another program holding an app's port.
func holdPort(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", freeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

// waitServes waits until a request to addr is answered by app.
func waitServes(t *testing.T, addr, app string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		body, err := httpGetTimeout(addr, "/", 10*time.Second)
		if err == nil && strings.Contains(body, app) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not served on %s after %v: %q, %v", app, addr, timeout, body, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// One app whose port another program holds is broken, alone: the others serve, its
// status, log and metric say why, and once the port is free it binds and serves without
// a reload (issue 13: sact serve exited 1 with no app served).
func TestIsolationPortInUse(t *testing.T) {
	needDocker(t)
	held := holdPort(t)
	heldAddr := held.Addr().String()
	broken, other, otherAddr := uniqueName(t, "isolation-held"), uniqueName(t, "isolation-ok"), freeAddr(t)
	d := startSact(t, "apps:"+appConfig(broken, heldAddr, "")+appConfig(other, otherAddr, ""))

	if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
		t.Fatalf("the other app: %q, %v", body, err)
	}
	rec := d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+broken, 5*time.Second)
	if r, _ := rec["reason"].(string); !strings.Contains(r, "address already in use") || !strings.Contains(r, heldAddr) {
		t.Errorf("logged reason %q, want the address and that it is in use", r)
	}
	if st, why := isolationStatus(t, d, broken); st != "broken" || !strings.Contains(why, "address already in use") {
		t.Errorf("status of the app: %q, %q; want broken and why", st, why)
	}
	if st, _ := isolationStatus(t, d, other); st == "broken" {
		t.Errorf("the other app is broken too")
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 1 {
		t.Errorf("sact_app_broken = %v, want 1", v)
	}
	out, err := exec.Command(sactBin, "status", "-run-dir", d.runDir, "-c", d.config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), broken+" is broken: ") {
		t.Errorf("sact status does not say why the app is broken: %v\n%s", err, out)
	}
	// Retried with backoff: 1s, 2s, ...
	d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+broken+`&&"retry_in":"2s"`, 10*time.Second)

	// The port is freed: within the backoff the app binds and serves, no reload.
	held.Close()
	d.waitLog(`"msg":"app's listeners are bound; serving it again"&&"app":"`+broken, 40*time.Second)
	waitServes(t, heldAddr, broken, 30*time.Second)
	if st, why := isolationStatus(t, d, broken); st == "broken" {
		t.Errorf("the app is still broken once bound: %s", why)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 0 {
		t.Errorf("sact_app_broken = %v after the repair, want 0", v)
	}
	if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
		t.Errorf("the other app after the repair: %q, %v", body, err)
	}
}

// A reload while an app is broken (it has fewer listeners than addresses) works, and a
// reload that gives the broken app another address binds it there.
func TestIsolationReloadBrokenApp(t *testing.T) {
	needDocker(t)
	held := holdPort(t)
	broken, other, otherAddr := uniqueName(t, "isolation-rheld"), uniqueName(t, "isolation-rok"), freeAddr(t)
	v1 := "apps:" + appConfig(broken, held.Addr().String(), "") + appConfig(other, otherAddr, "")
	d := startSact(t, v1)
	d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+broken, 5*time.Second)

	// The broken app changes (an env), the other too: the reload keeps it broken.
	v2 := "apps:" + appConfig(broken, held.Addr().String(), `, EXTRA: "v2"`) + appConfig(other, otherAddr, `, EXTRA: "v2"`)
	if err := os.WriteFile(d.config, []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := sactCLI(t, d, "reload"); err != nil {
		t.Fatalf("sact reload with a broken app: %v\n%s", err, out)
	}
	if st, _ := isolationStatus(t, d, broken); st != "broken" {
		t.Errorf("after a reload that keeps its address the app is %q, want broken", st)
	}
	if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
		t.Errorf("the other app after the reload: %q, %v", body, err)
	}

	// A new address: bound by the reload, served at once.
	newAddr := freeAddr(t)
	v3 := "apps:" + appConfig(broken, newAddr, `, EXTRA: "v2"`) + appConfig(other, otherAddr, `, EXTRA: "v2"`)
	if err := os.WriteFile(d.config, []byte(v3), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := sactCLI(t, d, "reload"); err != nil {
		t.Fatalf("sact reload giving the broken app a free address: %v\n%s", err, out)
	}
	waitServes(t, newAddr, broken, 30*time.Second)
	if st, why := isolationStatus(t, d, broken); st == "broken" {
		t.Errorf("the app is still broken on its new address: %s", why)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 0 {
		t.Errorf("sact_app_broken = %v after the reload, want 0", v)
	}
	if _, err := dialOnce(held.Addr().String()); err != nil {
		t.Errorf("the test's own listener on the old address: %v", err)
	}
}

// When not one app can bind, sact serve fails, naming each app and why.
func TestIsolationAllPortsTaken(t *testing.T) {
	needDocker(t)
	a, b := holdPort(t), holdPort(t)
	na, nb := uniqueName(t, "isolation-alla"), uniqueName(t, "isolation-allb")
	path := writeConfig(t, "apps:"+appConfig(na, a.Addr().String(), "")+appConfig(nb, b.Addr().String(), ""))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sactBin, "serve", "-c", path, "-run-dir", runDirFor(t, path), "-labels", labelSelector).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("sact serve with every port taken did not exit:\n%s", out)
	}
	if code := exitCode(err); code == 0 {
		t.Fatalf("sact serve with every port taken exited 0:\n%s", out)
	}
	for _, want := range []string{"no app can serve", na, nb, a.Addr().String(), b.Addr().String(), "address already in use"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("the error does not say %q:\n%s", want, out)
		}
	}
	t.Logf("RELIABILITY every port taken: %s", strings.TrimSpace(string(out)))
}

// A handoff app whose TCP port is held starts once it has every socket: before, it is
// broken and the other apps serve; after the port is freed, it serves on both.
func TestIsolationHandoffPortInUse(t *testing.T) {
	needDocker(t)
	held := holdPort(t)
	tcp, sock := held.Addr().String(), filepath.Join(t.TempDir(), "app.sock")
	broken, other, otherAddr := uniqueName(t, "isolation-hheld"), uniqueName(t, "isolation-hok"), freeAddr(t)
	d := startSact(t, handoffConfig(broken, tcp, sock, "")+strings.TrimPrefix(appConfig(other, otherAddr, ""), "\n"))

	if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
		t.Fatalf("the other app: %q, %v", body, err)
	}
	d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+broken+`&&address already in use`, 5*time.Second)
	if st, why := isolationStatus(t, d, broken); st != "broken" || !strings.Contains(why, tcp) {
		t.Errorf("status of the handoff app: %q, %q; want broken, naming %s", st, why, tcp)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 1 {
		t.Errorf("sact_app_broken = %v, want 1", v)
	}
	held.Close()
	d.waitLog(`"msg":"app's listeners are bound; serving it again"&&"app":"`+broken, 40*time.Second)
	for _, addr := range []string{tcp, sock} {
		waitServes(t, addr, "hello from "+broken, 60*time.Second)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 0 {
		t.Errorf("sact_app_broken = %v after the repair, want 0", v)
	}
}

// With the Docker engine unreachable, the process apps serve while the container apps are
// broken (the reason is the engine); once the engine answers, they serve, no reload.
func TestIsolationEngineUnreachable(t *testing.T) {
	needDocker(t)
	bin := filepath.Join(t.TempDir(), "testserver")
	if out, err := exec.Command("go", "build", "-o", bin, "../testimage/testserver").CombinedOutput(); err != nil {
		t.Fatalf("building the test server: %v: %s", err, out)
	}
	eng := &engineRelay{path: filepath.Join(t.TempDir(), "docker.sock"), conns: make(map[net.Conn]bool)}
	t.Cleanup(eng.down) // down now: nothing listens on its socket
	proc, procAddr, port := uniqueName(t, "isolation-proc"), freeAddr(t), freeAddr(t)
	_, p, _ := strings.Cut(port, ":")
	box, boxAddr := uniqueName(t, "isolation-box"), freeAddr(t)
	path := writeConfig(t, fmt.Sprintf(`apps:
  %[1]s:
    command: [%[2]q]
    env: {NAME: %[1]s, LISTEN: "tcp:127.0.0.1:%[3]s"}
    listen: ["tcp:%[4]s"]
    port: %[3]s
    stop_timeout: 2s
`, proc, bin, p, procAddr)+strings.TrimPrefix(appConfig(box, boxAddr, ""), "\n"))
	d := startSactFileEnv(t, path, "DOCKER_HOST=unix://"+eng.path)

	if body, err := httpGet(procAddr, "/"); err != nil || !strings.Contains(body, proc) {
		t.Fatalf("the process app: %q, %v", body, err)
	}
	d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+box+`&&cannot reach the Docker engine`, 5*time.Second)
	if st, why := isolationStatus(t, d, box); st != "broken" || !strings.Contains(why, "cannot reach the Docker engine") {
		t.Errorf("status of the container app: %q, %q; want broken, saying the engine is unreachable", st, why)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+box+`"`); v != 1 {
		t.Errorf("sact_app_broken = %v, want 1", v)
	}
	if out, err := exec.Command(sactBin, "start", "-run-dir", d.runDir, "-c", d.config, box).CombinedOutput(); err == nil || !strings.Contains(string(out), "is broken") {
		t.Errorf("sact start of the container app: %v: %s; want it refused, saying why", err, out)
	}
	d.waitLog(`"msg":"runtime still cannot be set up; its apps stay broken"&&"runtime":"docker"`, 10*time.Second)

	eng.up(t) // the engine is back
	d.waitLog(`"msg":"runtime set up; serving its apps"&&"runtime":"docker"`, 40*time.Second)
	waitServes(t, boxAddr, box, 60*time.Second)
	if st, why := isolationStatus(t, d, box); st == "broken" {
		t.Errorf("the container app is still broken: %s", why)
	}
	if v := socketMetric(t, d, "sact_app_broken", `app="`+box+`"`); v != 0 {
		t.Errorf("sact_app_broken = %v once the engine is back, want 0", v)
	}
	if body, err := httpGet(procAddr, "/"); err != nil || !strings.Contains(body, proc) {
		t.Errorf("the process app afterwards: %q, %v", body, err)
	}
}

// A reload that changes an app while its start waits for the pool (max_running: 1, the
// slot held by a busy app) is applied by that start: the instance it starts runs the new
// config and is not restarted with "config changed" once its connection ends (issue 13).
func TestIsolationReloadDuringQueuedStart(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, mode := range []string{"proxy", "handoff"} {
		t.Run(mode, func(t *testing.T) {
			holder, holderAddr := uniqueName(t, "isolation-qhold"), freeAddr(t)
			queued, queuedAddr := uniqueName(t, "isolation-queued"), freeAddr(t)
			sock := filepath.Join(t.TempDir(), "q.sock")
			queuedApp := func(extra string) string {
				if mode == "handoff" {
					c := handoffConfig(queued, queuedAddr, sock, "")
					c = strings.TrimPrefix(c, "apps:\n")
					return strings.Replace(c, "env: {NAME: "+queued+"}", "env: {NAME: "+queued+extra+"}", 1)
				}
				return strings.TrimPrefix(appConfig(queued, queuedAddr, extra), "\n")
			}
			config := func(extra string) string {
				return "pool:\n  max_running: 1\napps:" + appConfig(holder, holderAddr, "") + "    idle: 1h\n" + queuedApp(extra)
			}
			d := startSact(t, config(""))

			// The holder runs, with a connection open: it cannot be evicted.
			c := dialTCP(t, holderAddr)
			defer c.Close()
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: holder\r\n\r\n")
			buf := make([]byte, 4096)
			c.SetReadDeadline(time.Now().Add(60 * time.Second))
			if n, err := c.Read(buf); err != nil || !strings.Contains(string(buf[:n]), holder) {
				t.Fatalf("the holder: %q, %v", buf[:n], err)
			}

			got := make(chan string, 1)
			go func() {
				body, err := httpGetTimeout(queuedAddr, "/", 120*time.Second)
				if err != nil {
					body = "error: " + err.Error()
				}
				got <- body
			}()
			d.waitLog(`"msg":"starting app"&&`+queued, 30*time.Second)
			time.Sleep(time.Second)
			if n := d.countLog(`"msg":"app ready"&&` + queued); n != 0 {
				t.Fatalf("the queued app started while the pool was full")
			}

			// The reload, while it waits.
			if err := os.WriteFile(d.config, []byte(config(`, EXTRA: "v2"`)), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := sactCLI(t, d, "reload"); err != nil || !strings.Contains(out, queued) {
				t.Fatalf("sact reload: %v\n%s", err, out)
			}
			if n := d.countLog(`"reason":"replaced by reload"&&` + queued); n != 0 {
				t.Fatalf("the reload replaced the app instead of changing it")
			}
			c.Close() // the holder is idle: it is evicted, the queued app starts

			if body := <-got; !strings.Contains(body, queued) {
				t.Fatalf("the queued app: %q", body)
			}
			if env := docker(t, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", "sact-"+queued); !strings.Contains(env, "EXTRA=v2") {
				t.Errorf("the queued app runs with env %q, want the reload's EXTRA=v2", env)
			}
			// Its connection has ended: a restart for the reload would come now.
			time.Sleep(5 * time.Second)
			if n := d.countLog(`"reason":"config changed"&&` + queued); n != 0 {
				t.Errorf("the instance started with the reload's config was stopped %d time(s) for \"config changed\"", n)
			}
			if n := d.countLog(`"msg":"app ready"&&` + queued); n != 1 {
				t.Errorf("the queued app started %d times, want 1", n)
			}
		})
	}
}

// The front door's port held by another program: the apps' own listeners serve, the log
// says why, and the front door serves once the port is free. A config that only the front
// door would serve fails to start instead.
func TestIsolationFrontDoorPortInUse(t *testing.T) {
	needDocker(t)
	held := holdPort(t)
	frontAddr := held.Addr().String()
	app, appAddr := uniqueName(t, "isolation-front"), freeAddr(t)
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", frontAddr)+appConfig(app, appAddr, "")+"    hosts: [\"isolation.front\"]\n")
	if body, err := httpGet(appAddr, "/"); err != nil || !strings.Contains(body, app) {
		t.Fatalf("the app's own listener: %q, %v", body, err)
	}
	rec := d.waitLog(`"msg":"http front door cannot bind an address; the apps' own listeners serve on"`, 5*time.Second)
	if r, _ := rec["reason"].(string); !strings.Contains(r, "address already in use") {
		t.Errorf("logged reason %q, want that the address is in use", r)
	}
	held.Close()
	d.waitLog(`"msg":"http front door bound; serving on it"`, 40*time.Second)
	req, _ := http.NewRequest("GET", "http://"+frontAddr+"/", nil)
	req.Host = "isolation.front"
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("the front door once its port is free: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), app) {
		t.Errorf("the front door answered %q, want the app", body)
	}

	// Only the front door could serve: sact serve fails, saying why.
	held2 := holdPort(t)
	other := uniqueName(t, "isolation-frontonly")
	path := writeConfig(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:\n  %s:\n    image: %s\n    hosts: [\"only.front\"]\n    port: 8080\n", held2.Addr(), other, testImage))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, sactBin, "serve", "-c", path, "-run-dir", runDirFor(t, path), "-labels", labelSelector).CombinedOutput()
	if code := exitCode(err); code == 0 || ctx.Err() != nil {
		t.Fatalf("sact serve with its only address taken: exit %d:\n%s", code, out)
	}
	if !strings.Contains(string(out), "nothing can serve") || !strings.Contains(string(out), held2.Addr().String()) {
		t.Errorf("the error does not say why:\n%s", out)
	}
}
