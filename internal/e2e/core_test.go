package e2e

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// appConfig is one docker app of the test image, reached on the container's own IP.
func appConfig(name, listen string, extra string) string {
	return fmt.Sprintf(`
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"%[4]s}
    listen: ["tcp:%[3]s"]
    port: 8080
    stop_timeout: 3s
`, name, testImage, listen, extra)
}

func TestColdStartServedThenIdleStop(t *testing.T) {
	parallel(t)
	needDocker(t)
	name := uniqueName(t, "cold")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    idle: 2s\n")

	if s := containerState(t, name); s == "running" {
		t.Fatalf("container runs before any connection")
	}
	body, err := httpGet(addr, "/")
	if err != nil {
		t.Fatalf("cold request: %v", err)
	}
	if want := "hello from " + name; !strings.Contains(body, want) {
		t.Errorf("body = %q, want %q", body, want)
	}
	rec := d.waitLog(`"msg":"starting app"&&`+name, time.Second)
	if rec["remote"] == "" || rec["remote"] == nil {
		t.Errorf("start log does not say what woke the app: %v", rec)
	}
	if containerState(t, name) != "running" {
		t.Errorf("container not running after the cold start")
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
	waitContainerState(t, name, "exited", 5*time.Second)

	// The second cold start reuses the container.
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("second cold request: %v", err)
	}
	if n := d.awaitCount(`"msg":"app ready"&&`+name, 2); n != 2 {
		t.Errorf("%d starts, want 2", n)
	}
}

func TestConcurrentFirstConnectionsStartOnce(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "burst")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, ""))

	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			if _, err := httpGet(addr, "/"); err != nil {
				errs <- err
			}
		})
	}
	wg.Wait()
	close(errs)
	failed := 0
	for err := range errs {
		failed++
		if failed <= 5 {
			t.Errorf("request: %v", err)
		}
	}
	if failed > 0 {
		t.Errorf("%d of %d concurrent first requests failed", failed, n)
	}
	if starts := d.awaitCount(`"msg":"starting app"&&`+name, 1); starts != 1 {
		t.Errorf("%d starts for %d concurrent first connections, want 1", starts, n)
	}
}

// holdConn opens a connection, does one keep-alive request on it and leaves it open and
// silent, like an nginx upstream keepalive pool does.
func holdConn(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return c
}

func TestIdle(t *testing.T) {
	parallel(t)
	needDocker(t)
	tests := []struct {
		name          string
		keepWhileOpen bool
		// during runs after the first request, while the idle clock would otherwise run out.
		during func(t *testing.T, addr string) (end func())
		// wantStopDuring: the app stops while during's connection is open.
		wantStopDuring bool
	}{
		{
			name: "bytes moving keep it running",
			during: func(t *testing.T, addr string) func() {
				done := make(chan error)
				go func() {
					_, err := httpGet(addr, "/slow?d=6s&every=200ms")
					done <- err
				}()
				return func() {
					if err := <-done; err != nil {
						t.Errorf("streaming request: %v", err)
					}
				}
			},
		},
		{
			name: "a silent open connection does not",
			during: func(t *testing.T, addr string) func() {
				c := holdConn(t, addr)
				return func() {
					// sact closed it when the app stopped.
					c.SetReadDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Read(make([]byte, 1)); err == nil {
						t.Errorf("silent connection still open after the app stopped")
					}
				}
			},
			wantStopDuring: true,
		},
		{
			name:          "keep_while_open keeps it for a silent connection",
			keepWhileOpen: true,
			during: func(t *testing.T, addr string) func() {
				c := holdConn(t, addr)
				time.Sleep(6 * time.Second)
				return func() { c.Close() }
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			name := uniqueName(t, "idle")
			addr := freeAddr(t)
			d := startSact(t, "apps:"+appConfig(name, addr, "")+fmt.Sprintf("    idle: 2s\n    keep_while_open: %v\n", tt.keepWhileOpen))
			if _, err := httpGet(addr, "/"); err != nil {
				t.Fatal(err)
			}
			end := tt.during(t, addr)
			if tt.wantStopDuring {
				d.waitLog(`"msg":"stopped app"&&"reason":"idle"`, 15*time.Second)
				end()
				return
			}
			time.Sleep(4 * time.Second)
			if n := d.countLog(`"msg":"stopping app"`); n != 0 {
				t.Fatalf("app stopped while a connection kept it busy")
			}
			end()
			began := time.Now()
			d.waitLog(`"msg":"stopped app"&&"reason":"idle"`, 15*time.Second)
			if took := time.Since(began); took < 1500*time.Millisecond {
				t.Errorf("stopped %v after the last connection ended, want about idle (2s)", took)
			}
		})
	}
}

func TestConnectionDuringStopIsServed(t *testing.T) {
	parallel(t)
	needDocker(t)
	name := uniqueName(t, "racestop")
	addr := freeAddr(t)
	// The app takes 1.5s to exit after SIGTERM, so the second connection lands mid-stop.
	d := startSact(t, "apps:"+appConfig(name, addr, `, TERM_DELAY: "1500ms"`)+"    idle: 1s\n")
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	d.waitLog(`"msg":"stopping app"`, 10*time.Second)
	body, err := httpGet(addr, "/")
	if err != nil {
		t.Fatalf("connection during stop: %v", err)
	}
	if !strings.Contains(body, "hello") {
		t.Errorf("body = %q", body)
	}
	if n := d.awaitCount(`"msg":"app ready"`, 2); n != 2 {
		t.Errorf("%d starts, want 2 (one before, one after the stop)", n)
	}
}

func TestContainerGoneOutsideSact(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, how := range [][]string{{"kill"}, {"stop", "-t", "1"}, {"rm", "-f"}} {
		t.Run(how[0], func(t *testing.T) {
			t.Parallel()
			name := uniqueName(t, how[0])
			addr := freeAddr(t)
			d := startSact(t, "apps:"+appConfig(name, addr, ""))
			if _, err := httpGet(addr, "/"); err != nil {
				t.Fatal(err)
			}
			docker(t, append(how, "sact-"+name)...)
			d.waitLog(`"msg":"app exited"&&`+name, 10*time.Second)
			if _, err := httpGet(addr, "/"); err != nil {
				t.Fatalf("request after docker %s: %v", how[0], err)
			}
			if n := d.awaitCount(`"msg":"app ready"`, 2); n != 2 {
				t.Errorf("%d starts, want 2", n)
			}
		})
	}
}

func TestRestartAdoptsRunningContainer(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "adopt")
	addr := freeAddr(t)
	cfg := "apps:" + appConfig(name, addr, "")
	d := startSact(t, cfg)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	id := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name)
	d.kill()

	d2 := startSactFile(t, d.config)
	d2.waitLog(`"msg":"adopted running app"&&`+name, 10*time.Second)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("request after restart: %v", err)
	}
	if n := d2.countLog(`"msg":"starting app"`); n != 0 {
		t.Errorf("restarted sact started the app %d times, want 0 (adopt)", n)
	}
	if id2 := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name); id2 != id {
		t.Errorf("container replaced (%s -> %s), want the same one adopted", id, id2)
	}
	out := docker(t, "ps", "-a", "-q", "--filter", "label=sact.app="+name)
	if n := len(strings.Fields(out)); n != 1 {
		t.Errorf("%d containers labelled sact.app=%s, want 1", n, name)
	}
}

func TestBrokenAppsFailFastOthersServe(t *testing.T) {
	needDocker(t)
	good, missing, exits, never := uniqueName(t, "good"), uniqueName(t, "missing"), uniqueName(t, "exits"), uniqueName(t, "never")
	addrs := map[string]string{good: freeAddr(t), missing: freeAddr(t), exits: freeAddr(t), never: freeAddr(t)}
	cfg := "apps:" + appConfig(good, addrs[good], "") +
		strings.Replace(appConfig(missing, addrs[missing], ""), testImage, "sact-nope:missing", 1) +
		appConfig(exits, addrs[exits], `, EXIT_CODE: "3"`) +
		appConfig(never, addrs[never], `, NEVER_READY: "1"`) + "    start_timeout: 3s\n"
	d := startSact(t, cfg)

	tests := []struct {
		app     string
		within  time.Duration
		wantLog string
	}{
		{missing, 3 * time.Second, `not found`},
		{exits, 5 * time.Second, `exit code 3`},
		{never, 6 * time.Second, `start_timeout`},
	}
	var wg sync.WaitGroup
	for _, tt := range tests {
		wg.Go(func() {
			began := time.Now()
			if _, err := httpGet(addrs[tt.app], "/"); err == nil {
				t.Errorf("%s: request succeeded, want a failure", tt.app)
			}
			if took := time.Since(began); took > tt.within {
				t.Errorf("%s: the connection was held %v, want at most %v", tt.app, took, tt.within)
			}
		})
	}
	// Meanwhile the good app serves.
	if _, err := httpGet(addrs[good], "/"); err != nil {
		t.Errorf("good app while others fail: %v", err)
	}
	wg.Wait()
	for _, tt := range tests {
		d.waitLog(`"msg":"app failed to start"&&`+tt.app+`&&`+tt.wantLog, time.Second)
		d.waitLog(`"msg":"connection refused"&&`+tt.app, time.Second)
	}
	if !strings.Contains(d.logs.String(), "exiting with code 3") {
		t.Errorf("the failed start's log line lacks the container's own last log lines")
	}
	// Within the backoff a new connection fails fast and starts nothing.
	began := time.Now()
	httpGet(addrs[missing], "/")
	if took := time.Since(began); took > 500*time.Millisecond {
		t.Errorf("connection during fail backoff held %v, want fast failure", took)
	}
}

func TestCheckReportsLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sact.yaml")
	os.WriteFile(path, []byte("apps:\n  web:\n    imgae: x:1\n    listen: [\"tcp:127.0.0.1:9\"]\n    port: 80\n    idle: soon\n"), 0o644)
	out, err := exec.Command(sactBin, "check", "-c", path).CombinedOutput()
	if code := exitCode(err); code != 1 {
		t.Fatalf("sact check exit code %d, want 1; output:\n%s", code, out)
	}
	for _, want := range []string{path + ":3:", `did you mean "image"`, path + ":6:"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("sact check output lacks %q:\n%s", want, out)
		}
	}
	// serve refuses the same file and binds nothing.
	out, err = exec.Command(sactBin, "serve", "-c", path).CombinedOutput()
	if code := exitCode(err); code != 1 {
		t.Fatalf("sact serve on a bad config: exit code %d, want 1; output:\n%s", code, out)
	}
}

func exitCode(err error) int {
	if err == nil {
		return 0
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode()
	}
	return -1
}
