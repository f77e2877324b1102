package e2e

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The faults half of the reliability suite (RELIABILITY.md): what dies under sact, and
// sact dying itself.

// TestContainerKilledMidRequest: the client of a request in flight gets an error at once
// (never a hang), and the next request starts the app again.
func TestContainerKilledMidRequest(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "midkill")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, ""))
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	errc := make(chan error, 1)
	go func() {
		_, err := httpGetTimeout(addr, "/hold?d=20s", 60*time.Second)
		errc <- err
	}()
	time.Sleep(500 * time.Millisecond)
	began := time.Now()
	docker(t, "kill", "sact-"+name)
	select {
	case err := <-errc:
		if err == nil {
			t.Error("the request in flight succeeded although its container was killed")
		}
		t.Logf("RELIABILITY container killed mid-request: client error after %v: %v", time.Since(began).Round(time.Millisecond), err)
	case <-time.After(10 * time.Second):
		t.Fatal("the request in flight hangs 10s after its container was killed")
	}
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Errorf("request after the kill: %q, %v", body, err)
	}
	d.awaitCount(`"msg":"app ready"&&`+name, 2)
}

// TestContainerKilledFrontDoor: through the front door, a GET sent right after the
// container is killed is served by a fresh start, even when it reaches the dead instance
// before sact hears of the exit (it is sent again, as an idempotent request may be).
func TestContainerKilledFrontDoor(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "frontkill")
	front := freeAddr(t)
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", front)+appConfig(name, freeAddr(t), "")+fmt.Sprintf("    hosts: [%q]\n", name+".test"))
	get := func() (int, string, error) {
		req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
		req.Host = name + ".test"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), nil
	}
	for i := range 3 {
		if code, body, err := get(); err != nil || code != 200 {
			t.Fatalf("round %d, before the kill: %d %q %v", i, code, body, err)
		}
		docker(t, "kill", "sact-"+name)
		if code, body, err := get(); err != nil || code != 200 || !strings.Contains(body, name) {
			t.Errorf("round %d, right after the kill: %d %q %v", i, code, body, err)
		}
	}
	t.Logf("RELIABILITY front door, 3 kills each followed at once by a GET: %d of them reached the dead instance and were sent again",
		d.countLog(`"msg":"upstream gone while proxying"`))
}

// TestOOMKilled: an app killed by the kernel for memory is reported as oom-killed, in the
// log and in status, and the next request starts it again.
func TestOOMKilled(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "oom")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    memory: 24m\n")
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	if body, err := httpGet(addr, "/alloc?mb=512"); err == nil {
		t.Fatalf("allocating 512 MiB under a 24 MiB limit answered %q", body)
	}
	rec := d.waitLog(`"msg":"app exited"&&`+name, 15*time.Second)
	if rec["reason"] != "oom-killed" {
		t.Errorf("exit reason %v, want oom-killed", rec["reason"])
	}
	out, err := sactCLI(t, d, "status")
	if err != nil || !strings.Contains(out, "oom-killed") {
		t.Errorf("sact status after an OOM kill: %v\n%s", err, out)
	}
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Errorf("request after the OOM kill: %q, %v", body, err)
	}
}

// engineRelay stands between sact and the Docker engine's socket, so a test can take the
// engine away and bring it back as a restart of dockerd would, without restarting the
// engine everyone on this machine shares.
type engineRelay struct {
	path  string
	mu    sync.Mutex
	ln    net.Listener
	conns map[net.Conn]bool
}

func newEngineRelay(t *testing.T) *engineRelay {
	e := &engineRelay{path: filepath.Join(t.TempDir(), "docker.sock"), conns: make(map[net.Conn]bool)}
	e.up(t)
	t.Cleanup(e.down)
	return e
}

func (e *engineRelay) up(t *testing.T) {
	ln, err := net.Listen("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	e.mu.Lock()
	e.ln = ln
	e.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			up, err := net.Dial("unix", "/var/run/docker.sock")
			if err != nil {
				c.Close()
				continue
			}
			e.mu.Lock()
			e.conns[c], e.conns[up] = true, true
			e.mu.Unlock()
			go func() { io.Copy(up, c); up.(*net.UnixConn).CloseWrite() }()
			go func() { io.Copy(c, up); c.Close(); up.Close() }()
		}
	}()
}

// down closes the socket and every connection through it: the engine is gone.
func (e *engineRelay) down() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.ln != nil {
		e.ln.Close()
		e.ln = nil
	}
	for c := range e.conns {
		c.Close()
	}
	clear(e.conns)
}

// TestEngineOutage takes the Docker engine away while sact runs: a running app keeps
// serving, a start fails fast with the reason, and once the engine is back sact starts
// apps again and sees their exits (its event stream came back).
func TestEngineOutage(t *testing.T) {
	needDocker(t)
	eng := newEngineRelay(t)
	running, cold := uniqueName(t, "outrun"), uniqueName(t, "outcold")
	runAddr, coldAddr := freeAddr(t), freeAddr(t)
	path := writeConfig(t, "apps:"+appConfig(running, runAddr, "")+appConfig(cold, coldAddr, "")+"    start_timeout: 10s\n")
	d := startSactFileEnv(t, path, "DOCKER_HOST=unix://"+eng.path)
	if _, err := httpGet(runAddr, "/"); err != nil {
		t.Fatal(err)
	}
	// The cold app's container exists, stopped: its start is one API call.
	if _, err := httpGet(coldAddr, "/"); err != nil {
		t.Fatal(err)
	}
	if err := stopViaAdmin(d, cold); err != nil {
		t.Fatal(err)
	}

	eng.down()
	if body, err := httpGet(runAddr, "/"); err != nil || !strings.Contains(body, running) {
		t.Errorf("running app during the engine outage: %q, %v", body, err)
	}
	began := time.Now()
	_, err := httpGetTimeout(coldAddr, "/", 30*time.Second)
	took := time.Since(began)
	if err == nil {
		t.Error("a cold start succeeded without an engine")
	}
	if took > 12*time.Second {
		t.Errorf("a cold start without an engine took %v to fail, want it bounded by start_timeout (10s)", took)
	}
	rec := d.waitLog(`"msg":"app failed to start"&&`+cold, 5*time.Second)
	t.Logf("RELIABILITY engine down: running app served; cold start failed after %v with: %v", took.Round(time.Millisecond), rec["err"])

	eng.up(t)
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, err := httpGetTimeout(coldAddr, "/", 15*time.Second)
		if err == nil && strings.Contains(body, cold) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no cold start 30s after the engine came back: %q, %v", body, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
	docker(t, "kill", "sact-"+running)
	d.waitLog(`"msg":"app exited"&&`+running, 30*time.Second)
	if _, err := httpGet(runAddr, "/"); err != nil {
		t.Errorf("request after the engine came back and the app was killed: %v", err)
	}
}

// stopViaAdmin stops an app through the admin socket and waits for it.
func stopViaAdmin(d *daemon, app string) error {
	c := adminClient(d)
	resp, err := c.Post("http://sact/api/apps/"+app+"/stop", "", nil)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		return fmt.Errorf("stop %s: %s", app, resp.Status)
	}
	return nil
}

// adminClient speaks to a sact's admin socket.
func adminClient(d *daemon) *http.Client {
	sock := filepath.Join(d.runDir, "admin.sock")
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "unix", sock)
	}}}
}

// TestSIGKILLUnderLoad kills sact with SIGKILL while clients loop, on a socket held for it
// as systemd holds a .socket unit's, and starts it again: only the requests in flight at
// the kill fail, the app is adopted, and the rest are served.
func TestSIGKILLUnderLoad(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "sigkill")
	h := holdSocket(t, name)
	first, _ := h.launch(t)
	if _, err := httpGet(h.addr, "/"); err != nil {
		t.Fatal(err)
	}
	const clients = 4
	l := clientLoop(t, h.addr, clients, 0)
	time.Sleep(time.Second)
	first.Process.Kill()
	first.Wait()
	okAtKill := l.ok.Load()
	_, logs := h.launch(t)
	time.Sleep(2 * time.Second)
	ok, failed := l.stop()
	t.Logf("RELIABILITY sact SIGKILLed under load (%d clients) and restarted on its held socket: %d requests served, %d failed (in flight at the kill), %d served after the kill",
		clients, ok, failed, ok-okAtKill)
	if failed > clients {
		t.Errorf("%d requests failed; at most the %d in flight at the kill may", failed, clients)
	}
	if ok <= okAtKill {
		t.Error("nothing served after the restart")
	}
	if !strings.Contains(logs.String(), `"msg":"adopted running app"`) || strings.Contains(logs.String(), `"msg":"app ready"`) {
		t.Errorf("the second sact did not adopt the running app:\n%s", logs.String())
	}
}

// TestUnusableSocketDir: a listen path sact cannot use is reported with the app, the path
// and why, before anything starts: a parent that is a file is caught by the config check,
// a directory where nothing may be created (sysfs, like a read-only or full disk) when
// binding.
func TestUnusableSocketDir(t *testing.T) {
	needDocker(t)
	file := filepath.Join(t.TempDir(), "not-a-dir")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ sock, why string }{
		{file + "/app.sock", "not a directory"},
		{"/sys/sact-e2e.sock", "operation not permitted; sact may not create files in /sys"},
	} {
		name := uniqueName(t, "baddir")
		path := writeConfig(t, fmt.Sprintf("apps:\n  %s:\n    image: %s\n    listen: [\"unix:%s\"]\n    port: 8080\n", name, testImage, tt.sock))
		out, err := exec.Command(sactBin, "serve", "-c", path, "-run-dir", runDirFor(t, path), "-labels", labelSelector).CombinedOutput()
		if err == nil {
			t.Errorf("sact served on %s", tt.sock)
			continue
		}
		for _, want := range []string{name, filepath.Dir(tt.sock), tt.why} {
			if !strings.Contains(string(out), want) {
				t.Errorf("error does not name %q:\n%s", want, out)
			}
		}
		t.Logf("RELIABILITY unusable socket path %s: %s", tt.sock, strings.TrimSpace(string(out)))
	}
}

// TestIdleStopRace sends requests at intervals around the idle time, so that many arrive
// just as the idle stop begins or runs: every one must be served.
func TestIdleStopRace(t *testing.T) {
	parallel(t)
	needDocker(t)
	name := uniqueName(t, "idlerace")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+strings.Replace(appConfig(name, addr, ""), "stop_timeout: 3s", "stop_timeout: 1s", 1)+"    idle: 1s\n")
	end := time.Now().Add(20 * time.Second)
	requests, failures := 0, 0
	for i := 0; time.Now().Before(end); i++ {
		// 0.9s to 1.3s: on both sides of the idle deadline, and inside the stop.
		time.Sleep(900*time.Millisecond + time.Duration(i*37%400)*time.Millisecond)
		requests++
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name) {
			failures++
			t.Errorf("request %d: %q, %v", i, body, err)
		}
	}
	stops := d.countLog(`"msg":"stopping app"&&` + name)
	t.Logf("RELIABILITY idle-stop race: %d requests around a 1s idle, %d failed, %d stops", requests, failures, stops)
	if stops < 3 {
		t.Errorf("only %d stops: the requests did not race the idle stop", stops)
	}
}

// TestAdminAndTrafficHammer starts and stops an app from the admin API in a loop while
// clients send requests: no request hangs, sact survives, and afterwards sact and the
// engine agree on one container and its state.
func TestAdminAndTrafficHammer(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "hammer")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, ""))
	c := adminClient(d)
	end := time.Now().Add(10 * time.Second)
	var wg sync.WaitGroup
	var admins, adminErrs, reqs, reqErrs, hung atomic.Int64
	for w := range 2 {
		wg.Go(func() {
			for i := 0; time.Now().Before(end); i++ {
				action := []string{"start", "stop"}[(i+w)%2]
				resp, err := c.Post("http://sact/api/apps/"+name+"/"+action, "", nil)
				admins.Add(1)
				if err != nil {
					adminErrs.Add(1)
					if errors.Is(err, context.DeadlineExceeded) {
						hung.Add(1)
					}
					continue
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != 200 {
					adminErrs.Add(1)
				}
			}
		})
	}
	for range 3 {
		wg.Go(func() {
			for time.Now().Before(end) {
				_, err := httpGetTimeout(addr, "/", 30*time.Second)
				reqs.Add(1)
				if err != nil {
					reqErrs.Add(1)
					var ne net.Error
					if errors.As(err, &ne) && ne.Timeout() {
						hung.Add(1)
					}
				}
			}
		})
	}
	wg.Wait()
	t.Logf("RELIABILITY admin start/stop hammer with traffic, 10s: %d admin calls (%d errors), %d requests (%d cut by a stop), %d hung",
		admins.Load(), adminErrs.Load(), reqs.Load(), reqErrs.Load(), hung.Load())
	if hung.Load() > 0 {
		t.Errorf("%d calls hung for 30s", hung.Load())
	}
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, name) {
		t.Fatalf("after the hammer: %q, %v", body, err)
	}
	if n := docker(t, "ps", "-a", "-q", "--filter", "name=^sact-"+name+"$"); len(strings.Fields(n)) != 1 {
		t.Errorf("containers of the app after the hammer: %q, want exactly one", n)
	}
	out, _ := sactCLI(t, d, "status")
	if !strings.Contains(out, "running") || containerState(t, name) != "running" {
		t.Errorf("sact and the engine disagree: sact status %q, engine %q", out, containerState(t, name))
	}
}
