package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

// The hostile-app suite (SECURITY.md): apps built to attack sact and the host from inside
// their containers (internal/testimage/hostile), served beside an ordinary app. None of
// their attacks may work, sact must keep serving the ordinary app throughout, and what sact
// can see of the attacks is in its log.

var (
	hostileOnce  sync.Once
	hostileImage string
	hostileErr   error
)

func needHostileImage(t *testing.T) string {
	t.Helper()
	needDocker(t)
	hostileOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		hostileImage, hostileErr = testimage.Hostile(ctx)
	})
	if hostileErr != nil {
		t.Fatalf("building the hostile image: %v", hostileErr)
	}
	return hostileImage
}

// attackResult is one line of the hostile app's /report.
type attackResult struct {
	Attack, Result, Detail string
}

// canary is a host unix socket answering HTTP with a secret, standing in for the Docker
// engine's socket: a symlink a container makes to it must never reach it.
type canary struct {
	path  string
	conns atomic.Int64
}

func newCanary(t *testing.T, dir string) *canary {
	t.Helper()
	c := &canary{path: filepath.Join(dir, "app.sock")}
	ln, err := net.Listen("unix", c.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "HOST-SECRET") }),
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateNew {
				c.conns.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return c
}

func TestHostileApps(t *testing.T) {
	image := needHostileImage(t)
	bystander, hproxy, hhandoff := uniqueName(t, "bystander"), uniqueName(t, "hproxy"), uniqueName(t, "hhandoff")
	byAddr, proxyAddr, handoffAddr, front := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)
	vol := t.TempDir()
	os.Chmod(vol, 0o777)
	sockDir := filepath.Join(vol, "sockets")
	os.Mkdir(sockDir, 0o777)
	os.Chmod(sockDir, 0o777)
	canaryDir := t.TempDir()
	can := newCanary(t, canaryDir)
	handoffSock := filepath.Join(t.TempDir(), "hhandoff.sock")

	config := fmt.Sprintf(`http:
  listen: ["tcp:%[1]s"]
apps:%[2]s
  %[3]s:
    image: %[4]s
    user: "0"
    network: none
    volumes: ["%[5]s:/app/tmp"]
    env: {LISTEN: "unix:/app/tmp/sockets/app.sock", NO_NETWORK: "1"}
    listen: ["tcp:%[6]s"]
    hosts: ["%[3]s.test"]
    upstream: "unix:%[7]s/app.sock"
    start_timeout: 5s
    stop_timeout: 1s
  %[8]s:
    image: %[4]s
    user: "0"
    network: none
    handoff: true
    env: {NO_NETWORK: "1", FLOOD: "500", PROBE_PATHS: "/run/sact-handoff/../../run/docker.sock"}
    listen: ["tcp:%[9]s", "unix:%[10]s"]
    stop_timeout: 1s
`, front, appConfig(bystander, byAddr, ""), hproxy, image, vol, proxyAddr, sockDir, hhandoff, handoffAddr, handoffSock)
	d := startSact(t, config)

	// The ordinary app, asked every 50 ms for the whole test.
	var served, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var loop sync.WaitGroup
	loop.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			if body, err := httpGetTimeout(byAddr, "/", 10*time.Second); err != nil || !strings.Contains(body, "hello from "+bystander) {
				failed.Add(1)
				firstErr.CompareAndSwap(nil, fmt.Sprintf("%v %q", err, body))
			} else {
				served.Add(1)
			}
		}
	})
	var ended sync.Once
	endLoop := func() {
		ended.Do(func() {
			close(stop)
			loop.Wait()
		})
	}
	defer func() {
		endLoop()
		t.Logf("RELIABILITY hostile apps: the ordinary app served %d requests, %d failed", served.Load(), failed.Load())
		if failed.Load() > 0 {
			t.Errorf("the ordinary app failed %d of %d requests during the attacks; first: %v", failed.Load(), served.Load()+failed.Load(), firstErr.Load())
		}
	}()

	report := func(addr string) []attackResult {
		t.Helper()
		body, err := httpGetTimeout(addr, "/report", 60*time.Second)
		if err != nil {
			t.Fatalf("report of the hostile app at %s: %v", addr, err)
		}
		var rs []attackResult
		if err := json.Unmarshal([]byte(body[strings.Index(body, "["):]), &rs); err != nil {
			t.Fatalf("report %q: %v", body, err)
		}
		return rs
	}
	judge := func(app string, rs []attackResult) {
		t.Helper()
		if len(rs) < 5 {
			t.Errorf("%s reported only %d attacks: %v", app, len(rs), rs)
		}
		for _, r := range rs {
			t.Logf("RELIABILITY hostile %s: %s: %s (%s)", app, r.Attack, r.Result, r.Detail)
			if r.Result == "SUCCEEDED" {
				t.Errorf("attack from inside %s worked: %s: %s", app, r.Attack, r.Detail)
			}
		}
	}

	t.Run("handoff container", func(t *testing.T) {
		rs := report(handoffAddr)
		judge(hhandoff, rs)
		var sawFlood bool
		for _, r := range rs {
			sawFlood = sawFlood || r.Attack == "handoff-flood"
		}
		if !sawFlood {
			t.Errorf("the handoff app did not flood its handoff socket: %v", rs)
		}
		// What sact sees of the flood is in its log, once (rate-limited), with the app.
		d.waitLog(hhandoff+"&&too many handoff peers", 10*time.Second)
		// Its own clients are still served after all of that, over both listeners.
		if body, err := httpGet(handoffAddr, "/"); err != nil || !strings.Contains(body, "hostile app") {
			t.Errorf("handoff app after its attacks: %q, %v", body, err)
		}
	})

	t.Run("proxied container", func(t *testing.T) {
		judge(hproxy, report(proxyAddr))
	})

	// The symlink swap: the app replaces its upstream socket with a link to a host socket.
	// Neither the relay, the front door nor a readiness poll may follow it.
	swap := func(t *testing.T, path, target string) {
		t.Helper()
		body, err := httpGet(proxyAddr, path+"?to="+target)
		if err != nil || !strings.Contains(body, "swapped") {
			t.Fatalf("asking the app to swap its socket: %q, %v", body, err)
		}
	}
	reachedHost := func(body string) bool {
		return strings.Contains(body, "HOST-SECRET") || strings.Contains(body, "ApiVersion")
	}
	frontGet := func() (int, string) {
		req, _ := http.NewRequest("GET", "http://"+front+"/version", nil)
		req.Host = hproxy + ".test"
		c := http.Client{Timeout: 20 * time.Second}
		resp, err := c.Do(req)
		if err != nil {
			return 0, err.Error()
		}
		defer resp.Body.Close()
		var b strings.Builder
		buf := make([]byte, 4096)
		n, _ := resp.Body.Read(buf)
		b.Write(buf[:n])
		return resp.StatusCode, b.String()
	}

	t.Run("symlink swap to the engine's socket", func(t *testing.T) {
		swap(t, "/swap", "/var/run/docker.sock")
		body, err := httpGet(proxyAddr, "/version")
		if reachedHost(body) {
			t.Fatalf("a client of the app reached the Docker engine through the relay: %q", body)
		}
		t.Logf("relay after the swap: %q, %v", body, err)
		if code, body := frontGet(); reachedHost(body) || code == 200 {
			t.Fatalf("the front door followed the link: %d %q", code, body)
		}
		d.waitLog(hproxy+"&&"+filepath.Join(sockDir, "app.sock")+"&&symlink", 10*time.Second)
	})

	t.Run("directory swap to a host socket", func(t *testing.T) {
		// A fresh start of the app (its socket is a link now; it makes a new one), then the
		// socket's directory is replaced by a link to the canary's.
		if _, err := sactCLI(t, d, "stop", hproxy); err != nil {
			t.Fatal(err)
		}
		if body, err := httpGet(proxyAddr, "/"); err != nil || !strings.Contains(body, "hostile app") {
			t.Fatalf("the app after a restart: %q, %v", body, err)
		}
		if body, err := httpGet(proxyAddr, "/linkonstart?to="+can.path); err != nil {
			t.Fatalf("asking the app to link its socket at its next start: %q, %v", body, err)
		}
		swap(t, "/swapdir", canaryDir)
		body, err := httpGet(proxyAddr, "/")
		if reachedHost(body) {
			t.Fatalf("the relay followed a linked directory to a host socket: %q", body)
		}
		t.Logf("relay after the directory swap: %q, %v", body, err)
		if code, body := frontGet(); reachedHost(body) || code == 200 {
			t.Fatalf("the front door followed the linked directory: %d %q", code, body)
		}
	})

	t.Run("readiness never follows a link", func(t *testing.T) {
		// Stopped with its socket's directory a link to the canary's: the next start's
		// readiness poll must not take the canary for the app.
		sactCLI(t, d, "stop", hproxy)
		body, err := httpGetTimeout(proxyAddr, "/", 20*time.Second)
		if reachedHost(body) {
			t.Fatalf("readiness took a host socket for the app: %q", body)
		}
		t.Logf("cold start with a linked socket directory: %q, %v", body, err)
	})
	if n := can.conns.Load(); n != 0 {
		t.Errorf("the host socket behind the links got %d connections from sact", n)
	}

	t.Run("sact restarts over what the apps left", func(t *testing.T) {
		endLoop() // a restart without a .socket unit refuses connections meanwhile
		d.stop()
		d2 := startSactFile(t, d.config)
		for _, a := range []string{byAddr, handoffAddr} {
			if _, err := httpGet(a, "/"); err != nil {
				t.Errorf("after a restart over the hostile apps' leftovers, %s: %v\n%s", a, err, d2.logs.String())
			}
		}
	})
}
