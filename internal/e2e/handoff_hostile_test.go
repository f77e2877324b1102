package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A hostile handoff container (issue 11, cases 3 and 4): what it could do to its handoff
// directory, and a flood of peers on its handoff socket. sact keeps serving every other
// app, and the handoff app itself as far as it can.

// clobberedRunDir writes a config of a handoff app beside an ordinary app and returns its
// path, the run directory sact will use, and the apps' names and addresses.
func clobberedConfig(t *testing.T) (path, runDir, hname, htcp, other, otherAddr string) {
	hname, other = uniqueName(t, "hclob"), uniqueName(t, "hbystand")
	htcp, otherAddr = freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "app.sock")
	cfg := strings.Replace(handoffConfig(hname, htcp, sock, ""), "idle: 2s", "idle: 5m", 1) + strings.TrimPrefix(appConfig(other, otherAddr, ""), "\n")
	path = writeConfig(t, cfg)
	return path, runDirFor(t, path), hname, htcp, other, otherAddr
}

// asContainer makes path owned by the uid the handoff app runs as (1001), as an earlier
// sact left the handoff directory.
func asContainer(t *testing.T, path string) {
	t.Helper()
	if err := os.Lchown(path, 1001, 1001); err != nil {
		t.Fatal(err)
	}
}

func TestHandoffClobberedDirectory(t *testing.T) {
	t.Parallel()
	needDocker(t)

	// What a container could do to its directory on an earlier sact, which gave it the
	// directory: the next sact serve then exited 1, and took every app down with it.
	t.Run("socket replaced by a directory", func(t *testing.T) {
		path, runDir, hname, htcp, other, otherAddr := clobberedConfig(t)
		dir := filepath.Join(runDir, "handoff", hname)
		sock := filepath.Join(dir, "handoff.sock")
		if err := os.MkdirAll(filepath.Join(sock, "evil"), 0o700); err != nil {
			t.Fatal(err)
		}
		for _, p := range []string{dir, sock, filepath.Join(sock, "evil")} {
			asContainer(t, p)
		}
		d := startSactFile(t, path)
		if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
			t.Errorf("the other app: %q, %v", body, err)
		}
		if body, err := httpGet(htcp, "/"); err != nil || !strings.Contains(body, hname) {
			t.Errorf("the handoff app after the repair: %q, %v", body, err)
		}
		rec := d.waitLog(`"msg":"removed what stood at the handoff socket's path"&&"app":"`+hname, 5*time.Second)
		if rec["what"] != "directory" || rec["path"] != sock {
			t.Errorf("logged %v, want the path %s and what=directory", rec, sock)
		}
		d.waitLog(`"msg":"repaired the handoff directory"&&"app":"`+hname, time.Second)
		fi, err := os.Lstat(dir)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode() != os.ModeDir|0o711 {
			t.Errorf("handoff directory after the repair: owner %d, mode %v; want root's, 0711", st.Uid, fi.Mode())
		}
	})

	t.Run("directory replaced by a symlink", func(t *testing.T) {
		path, runDir, hname, htcp, other, otherAddr := clobberedConfig(t)
		host := t.TempDir() // a host directory the app must never be given
		os.Chmod(host, 0o750)
		marker := filepath.Join(host, "marker")
		os.WriteFile(marker, []byte("host data"), 0o640)
		dir := filepath.Join(runDir, "handoff", hname)
		os.MkdirAll(filepath.Dir(dir), 0o700)
		if err := os.Symlink(host, dir); err != nil {
			t.Fatal(err)
		}
		d := startSactFile(t, path)
		if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
			t.Errorf("the other app: %q, %v", body, err)
		}
		if body, err := httpGet(htcp, "/"); err != nil || !strings.Contains(body, hname) {
			t.Errorf("the handoff app after the repair: %q, %v", body, err)
		}
		rec := d.waitLog(`"msg":"removed what stood in place of the handoff directory"&&"app":"`+hname, 5*time.Second)
		if rec["what"] != "symlink" || rec["path"] != dir {
			t.Errorf("logged %v, want the path %s and what=symlink", rec, dir)
		}
		if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
			t.Errorf("handoff directory after the repair: %v, %v; want a directory", fi.Mode(), err)
		}
		ents, _ := os.ReadDir(host)
		if fi, _ := os.Stat(host); len(ents) != 1 || fi.Mode().Perm() != 0o750 {
			t.Errorf("the host directory behind the link: %v, mode %v; want only its marker, 0750", ents, fi.Mode())
		}
		if b, _ := os.ReadFile(marker); string(b) != "host data" {
			t.Errorf("host file behind the link: %q", b)
		}
	})

	// Now from inside a running handoff container: it cannot change its directory at all.
	t.Run("from inside the container", func(t *testing.T) {
		path, _, hname, htcp, _, _ := clobberedConfig(t)
		startSactFile(t, path)
		if _, err := httpGet(htcp, "/"); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command("docker", "exec", "-e", "HANDOFF_PROBE=1", "sact-"+hname, "/testserver").CombinedOutput()
		if err != nil {
			t.Fatalf("docker exec: %v: %s", err, out)
		}
		var res map[string]string
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("probe output %q: %v", out, err)
		}
		t.Logf("SECURITY handoff directory from inside: %v", res)
		if len(res) < 7 {
			t.Errorf("probe tried %d things, want 7 or more: %v", len(res), res)
		}
		for attempt, e := range res {
			if e == "" {
				t.Errorf("%s in the handoff directory worked from inside the container", attempt)
			} else if !strings.Contains(e, "read-only file system") && !strings.Contains(e, "permission denied") && !strings.Contains(e, "operation not permitted") {
				t.Errorf("%s: %s; want EROFS, EACCES or EPERM", attempt, e)
			}
		}
		if rw := docker(t, "inspect", "-f", `{{range .Mounts}}{{if eq .Destination "/run/sact-handoff"}}{{.RW}}{{end}}{{end}}`, "sact-"+hname); rw != "false" {
			t.Errorf("handoff directory mounted with RW=%q, want false", rw)
		}
		// And the app still serves.
		if _, err := httpGet(htcp, "/"); err != nil {
			t.Errorf("handoff app after the probe: %v", err)
		}
	})

	// A handoff that cannot be set up at all (here: its socket path is longer than the
	// kernel allows) makes that one app broken, never the daemon.
	t.Run("setup fails for good", func(t *testing.T) {
		bin := filepath.Join(t.TempDir(), "testserver")
		if out, err := exec.Command("go", "build", "-o", bin, "../testimage/testserver").CombinedOutput(); err != nil {
			t.Fatalf("building the test server: %v: %s", err, out)
		}
		broken := "hbroken-" + strings.Repeat("x", 90)
		other, otherAddr, brokenAddr := uniqueName(t, "hbystand"), freeAddr(t), freeAddr(t)
		d := startSact(t, fmt.Sprintf(`apps:
  %s:
    command: [%q]
    listen: ["tcp:%s"]
    handoff: true
`, broken, bin, brokenAddr)+strings.TrimPrefix(appConfig(other, otherAddr, ""), "\n"))
		if body, err := httpGet(otherAddr, "/"); err != nil || !strings.Contains(body, other) {
			t.Errorf("the other app: %q, %v", body, err)
		}
		rec := d.waitLog(`"msg":"app is broken; the other apps serve on"&&"app":"`+broken, 5*time.Second)
		if r, _ := rec["reason"].(string); !strings.Contains(r, "the kernel allows 107") {
			t.Errorf("logged reason %q, want the socket path's length", r)
		}
		var list struct {
			Apps []struct {
				Name, State string
				LastError   string `json:"last_error"`
			}
		}
		getJSON(t, d, "/api/apps", &list)
		found := false
		for _, a := range list.Apps {
			if a.Name == broken {
				found = true
				if a.State != "broken" || !strings.Contains(a.LastError, "the kernel allows 107") {
					t.Errorf("status of the broken app: %q, %q; want broken and why", a.State, a.LastError)
				}
			}
		}
		if !found {
			t.Errorf("the broken app is missing from the status: %+v", list.Apps)
		}
		if v := socketMetric(t, d, "sact_app_broken", `app="`+broken+`"`); v != 1 {
			t.Errorf("sact_app_broken = %v, want 1", v)
		}
		// A client of the broken app is refused at once rather than left in the backlog.
		began := time.Now()
		if _, err := httpGetTimeout(brokenAddr, "/", 10*time.Second); err == nil {
			t.Errorf("a request to the broken app succeeded")
		}
		if took := time.Since(began); took > 3*time.Second {
			t.Errorf("a client of the broken app waited %v to be refused", took)
		}
		// Retried with backoff: 1s, 2s, ...
		d.waitLog(`"msg":"app is broken; the other apps serve on"&&"retry_in":"2s"`, 5*time.Second)
		if out, err := exec.Command(sactBin, "start", "-run-dir", d.runDir, "-c", d.config, broken).CombinedOutput(); err == nil || !strings.Contains(string(out), "is broken") {
			t.Errorf("sact start of a broken app: %v: %s; want it refused, saying why", err, out)
		}
		out, err := exec.Command(sactBin, "status", "-run-dir", d.runDir, "-c", d.config).CombinedOutput()
		if err != nil {
			t.Fatalf("sact status: %v: %s", err, out)
		}
		if !strings.Contains(string(out), broken+" is broken: ") {
			t.Errorf("sact status does not say why the app is broken:\n%s", out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if f := strings.Fields(line); len(f) > 1 && f[0] == broken && f[1] != "broken" && f[1] != "is" {
				t.Errorf("sact status shows the broken app as %q:\n%s", f[1], out)
			}
		}
		t.Logf("sact status:\n%s", out)
		if !strings.Contains(string(out), broken+"  broken") {
			t.Errorf("sact status does not show the app broken:\n%s", out)
		}
	})
}

// getJSON reads an admin API path over the admin socket.
func getJSON(t *testing.T, d *daemon, path string, out any) {
	t.Helper()
	resp, err := adminClient(d).Get("http://sact" + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
}

// socketMetric reads /metrics over the admin socket: the sum of the samples of name whose
// labels hold every one of labels.
func socketMetric(t *testing.T, d *daemon, name string, labels ...string) float64 {
	t.Helper()
	return metricsFrom(t, adminClient(d), "http://sact/metrics", name, labels...)
}

// countingEngine relays the Docker engine's API and counts the requests to inspect one
// container.
type countingEngine struct {
	path     string
	inspects sync.Map // container name -> *atomic.Int64
}

func newCountingEngine(t *testing.T) *countingEngine {
	t.Helper()
	e := &countingEngine{path: filepath.Join(t.TempDir(), "docker.sock")}
	ln, err := net.Listen("unix", e.path)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse("http://docker")
	rp := httputil.NewSingleHostReverseProxy(target)
	rp.FlushInterval = -1                    // the event stream
	rp.ErrorLog = log.New(io.Discard, "", 0) // sact cancels requests as it likes
	rp.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", "/var/run/docker.sock")
	}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// GET /v1.47/containers/NAME/json
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		if n := len(parts); r.Method == "GET" && n >= 3 && parts[n-3] == "containers" && parts[n-1] == "json" {
			c, _ := e.inspects.LoadOrStore(parts[n-2], new(atomic.Int64))
			c.(*atomic.Int64).Add(1)
		}
		rp.ServeHTTP(w, r)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return e
}

func (e *countingEngine) count(container string) int64 {
	if c, ok := e.inspects.Load(container); ok {
		return c.(*atomic.Int64).Load()
	}
	return 0
}

// TestHandoffPeerFlood: a second process in a handoff container connects 500 peers at
// once to its handoff socket, each saying hello like a shim. None gets the sockets; sact's
// engine calls and goroutines stay bounded; another app is served throughout.
func TestHandoffPeerFlood(t *testing.T) {
	needDocker(t)
	eng := newCountingEngine(t)
	hname, other := uniqueName(t, "hflood"), uniqueName(t, "hbystand")
	htcp, otherAddr := freeAddr(t), freeAddr(t)
	sock := filepath.Join(t.TempDir(), "app.sock")
	cfg := strings.Replace(handoffConfig(hname, htcp, sock, ""), "idle: 2s", "idle: 5m", 1) +
		strings.TrimPrefix(appConfig(other, otherAddr, ""), "\n")
	d := startSactFileEnv(t, writeConfig(t, cfg), "DOCKER_HOST=unix://"+eng.path)
	for _, a := range []string{htcp, otherAddr} {
		if _, err := httpGet(a, "/"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(time.Second) // let startup's work settle
	baseGoroutines := socketMetric(t, d, "go_goroutines")
	baseInspects := eng.count("sact-" + hname)

	// The other app is asked all along; the goroutines are sampled all along.
	stop := make(chan struct{})
	var served, failed atomic.Int64
	var maxGoroutines atomic.Int64
	var bg sync.WaitGroup
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			if body, err := httpGetTimeout(otherAddr, "/", 10*time.Second); err == nil && strings.Contains(body, other) {
				served.Add(1)
			} else {
				failed.Add(1)
				t.Logf("the other app during the flood: %q, %v", body, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	bg.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
			}
			if g := int64(socketMetric(t, d, "go_goroutines")); g > maxGoroutines.Load() {
				maxGoroutines.Store(g)
			}
		}
	})

	began := time.Now()
	out, err := exec.Command("docker", "exec", "-e", "HANDOFF_FLOOD=500", "sact-"+hname, "/testserver").CombinedOutput()
	took := time.Since(began)
	time.Sleep(3 * time.Second) // the peers' exchanges end within their deadline
	inspects := eng.count("sact-"+hname) - baseInspects
	close(stop)
	bg.Wait()
	if err != nil {
		t.Fatalf("docker exec: %v: %s", err, out)
	}
	var res struct {
		Peers, Refused, Files, Closed int
		DialErrors                    int `json:"dial_errors"`
		Took, First                   string
	}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("flood output %q: %v", out, err)
	}
	grown := maxGoroutines.Load() - int64(baseGoroutines)
	window := took + 3*time.Second
	t.Logf("RELIABILITY handoff flood: %d peers in %v: %d refused (%q), %d closed, %d dial errors, %d got sockets; %d engine inspects of the container in %v; goroutines %v -> max %d (+%d); other app: %d served, %d failed",
		res.Peers, res.Took, res.Refused, res.First, res.Closed, res.DialErrors, res.Files, inspects, window.Round(time.Millisecond), baseGoroutines, maxGoroutines.Load(), grown, served.Load(), failed.Load())
	if res.Files != 0 {
		t.Errorf("%d peers that are not the container's first process got its sockets", res.Files)
	}
	if limit := int64(2 + 4*window.Seconds()); inspects > limit {
		t.Errorf("%d engine inspects of the container for one flood in %v, want at most %d (4 a second)", inspects, window, limit)
	}
	if grown > 60 {
		t.Errorf("sact grew by %d goroutines during the flood, want a small bound", grown)
	}
	if failed.Load() > 0 || served.Load() == 0 {
		t.Errorf("the other app during the flood: %d served, %d failed", served.Load(), failed.Load())
	}
	if n := d.countLog(`"msg":"handoff peer refused"`) + d.countLog(`"msg":"too many handoff peers at once`); n > 10+int(window.Seconds())*6 {
		t.Errorf("%d log lines for one flood, want them rate-limited", n)
	}
	// The handoff app itself still serves, and a restart of its container still gets the
	// sockets from sact.
	if _, err := httpGet(htcp, "/"); err != nil {
		t.Errorf("the handoff app after the flood: %v", err)
	}
	docker(t, "restart", "-t", "1", "sact-"+hname)
	if _, err := httpGet(htcp, "/"); err != nil {
		t.Errorf("the handoff app after a docker restart: %v", err)
	}
}

// A plain process in handoff mode that runs as its own user: reaches the shim and its
// socket through the host's paths (there is no mount), so the handoff directories must
// let it through while only the socket is its own.
func TestHandoffProcessAsUser(t *testing.T) {
	dir := t.TempDir()
	for d := dir; d != "/tmp" && d != "/"; d = filepath.Dir(d) {
		os.Chmod(d, 0o755)
	}
	bin := filepath.Join(dir, "testserver")
	if out, err := exec.Command("go", "build", "-o", bin, "../testimage/testserver").CombinedOutput(); err != nil {
		t.Fatalf("building the test server: %v: %s", err, out)
	}
	addr := freeAddr(t)
	d := startSact(t, fmt.Sprintf(`apps:
  hprocuser:
    command: [%q]
    user: "65534:65534"
    env: {NAME: hprocuser}
    listen: ["tcp:%s"]
    handoff: true
`, bin, addr))
	// Like /run/sact (systemd's RuntimeDirectory=, 0755); the harness makes its own 0700.
	os.Chmod(d.runDir, 0o755)
	if body, err := httpGetTimeout(addr, "/", 20*time.Second); err != nil || !strings.Contains(body, "hello from hprocuser") {
		t.Fatalf("process app as user 65534 in handoff mode: %q, %v", body, err)
	}
	sock := filepath.Join(d.runDir, "handoff", "hprocuser", "handoff.sock")
	fi, err := os.Lstat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || fi.Mode().Perm() != 0o600 {
		t.Errorf("handoff socket: owner %d, mode %v; want 65534, 0600", st.Uid, fi.Mode().Perm())
	}
	for _, p := range []string{filepath.Join(d.runDir, "handoff"), filepath.Dir(sock)} {
		fi, err := os.Lstat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st := fi.Sys().(*syscall.Stat_t); st.Uid != 0 || fi.Mode().Perm()&0o022 != 0 || fi.Mode().Perm()&0o004 != 0 {
			t.Errorf("%s: owner %d, mode %v; want root's, writable and listable by root alone", p, st.Uid, fi.Mode().Perm())
		}
	}
}
