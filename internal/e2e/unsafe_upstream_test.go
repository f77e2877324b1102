package e2e

import (
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
	"syscall"
	"testing"
	"time"
)

// Issue 11, case 1: an app whose unix upstream lies in a directory it can write replaces
// its socket with a link to a host socket. sact, root on the host, must not follow it: not
// in the relay, not in the front door, not in the readiness poll.

// hostSecret is a host unix socket that stands in for /var/run/docker.sock: an HTTP server
// saying HOST-SECRET, in a directory no container can see. It counts connections.
type hostSecret struct {
	path  string
	conns atomic.Int64
}

func newHostSecret(t *testing.T) *hostSecret {
	t.Helper()
	s := &hostSecret{path: filepath.Join(t.TempDir(), "engine.sock")}
	ln, err := net.Listen("unix", s.path)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintln(w, "HOST-SECRET")
		}),
		ConnState: func(_ net.Conn, st http.ConnState) {
			if st == http.StateNew {
				s.conns.Add(1)
			}
		},
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

// swapForLink replaces path with a symbolic link to target, atomically, as an app would.
func swapForLink(t *testing.T, target, path string) {
	t.Helper()
	tmp := path + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// appDir is a directory bind-mounted into the app, writable by its user.
func appDir(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "sockets")
	if err := os.Mkdir(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o777)
	return dir
}

// getHost is one request through the front door for host, on a new connection.
func getHost(front, host, path string) (string, error) {
	req, _ := http.NewRequest("GET", "http://"+front+path, nil)
	req.Host = host
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 30 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), err
}

// The relay (listen: tcp) and the front door (hosts:) after the app, having served, swaps
// its socket for a link to a host socket; and a link to the real engine's socket.
func TestUnsafeUpstreamSwappedForLink(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "unsafe")
	dir := appDir(t)
	sock := filepath.Join(dir, "app.sock")
	secret := newHostSecret(t)
	addr, front, adminAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	host := name + ".test"
	d := startSact(t, fmt.Sprintf(`admin:
  listen: %[6]q
http:
  listen: ["tcp:%[5]s"]
apps:
  %[1]s:
    image: %[2]s
    volumes: ["%[3]s:/app/sockets"]
    env: {NAME: %[1]s, LISTEN: "unix:/app/sockets/app.sock"}
    listen: ["tcp:%[4]s"]
    hosts: [%[7]q]
    upstream: unix:%[3]s/app.sock
    idle: 10m
    stop_timeout: 2s
`, name, testImage, dir, addr, front, adminAddr, host))

	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("relay before the swap: %q, %v", body, err)
	}
	if body, err := getHost(front, host, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("front door before the swap: %q, %v", body, err)
	}

	swapForLink(t, secret.path, sock)

	// The relay dials anew for every connection.
	body, err := httpGetTimeout(addr, "/", 10*time.Second)
	if strings.Contains(body, "HOST-SECRET") {
		t.Errorf("relay: a client of the app reached the host socket through the link: %q", body)
	} else if err == nil {
		t.Errorf("relay after the swap: %q, want the connection refused", body)
	}
	d.waitLog(`"msg":"refusing unsafe upstream"&&"app":"`+name+`"&&"path":"`+sock+`"&&"reason":"symlink"`, 5*time.Second)

	// The front door keeps pooled connections to the old socket: requests at once make it
	// dial new ones.
	var wg sync.WaitGroup
	var leaked, refused atomic.Int64
	for range 6 {
		wg.Go(func() {
			body, err := getHost(front, host, "/hold?d=300ms")
			if strings.Contains(body, "HOST-SECRET") {
				leaked.Add(1)
			} else if err != nil {
				refused.Add(1)
			}
		})
	}
	wg.Wait()
	if n := leaked.Load(); n > 0 {
		t.Errorf("front door: %d of 6 requests reached the host socket through the link", n)
	}
	if refused.Load() == 0 {
		t.Errorf("front door: no request was refused; the test made no new dial")
	}
	if n := secret.conns.Load(); n > 0 {
		t.Errorf("the host socket got %d connections from sact", n)
	}
	if n := metrics(t, adminAddr, "sact_connections_failed_total", `app="`+name+`"`, `reason="upstream_unsafe"`); n < 2 {
		t.Errorf("sact_connections_failed_total{reason=upstream_unsafe} = %v, want the relay's and the front door's refusals counted", n)
	}
	if n := d.countLog(`"msg":"refusing unsafe upstream"&&"app":"` + name + `"`); n != 1 {
		t.Errorf("%d log lines for one unsafe path, want 1 (once per cause)", n)
	}

	// The real engine's socket: a GET /version is harmless, and must not get its JSON.
	if _, err := os.Stat("/var/run/docker.sock"); err == nil {
		swapForLink(t, "/var/run/docker.sock", sock)
		body, _ := httpGetTimeout(addr, "/version", 10*time.Second)
		if strings.Contains(body, "ApiVersion") {
			t.Errorf("relay: the Docker engine answered a client of the app: %q", body)
		}
	}
}

// A fresh start where the socket is a link from the beginning: the readiness poll must not
// take the host socket for the app, and the start fails naming the path and the fix.
func TestUnsafeUpstreamAtStart(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "unsafestart")
	dir := appDir(t)
	sock := filepath.Join(dir, "app.sock")
	secret := newHostSecret(t)
	if err := os.Symlink(secret.path, sock); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	d := startSact(t, fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    volumes: ["%[3]s:/app/sockets"]
    env: {NAME: %[1]s, LISTEN: "unix:/app/sockets/elsewhere.sock"}
    listen: ["tcp:%[4]s"]
    upstream: unix:%[3]s/app.sock
    start_timeout: 3s
    stop_timeout: 2s
`, name, testImage, dir, addr))

	body, err := httpGetTimeout(addr, "/", 20*time.Second)
	if strings.Contains(body, "HOST-SECRET") {
		t.Fatalf("the readiness poll took the host socket for the app, and a client reached it: %q", body)
	}
	if err == nil {
		t.Errorf("request to an app whose upstream is a link: %q, want it refused", body)
	}
	rec := d.waitLog(`"msg":"app failed to start"&&"app":"`+name+`"`, 10*time.Second)
	if msg, _ := rec["err"].(string); !strings.Contains(msg, sock) || !strings.Contains(msg, "symbolic link") || !strings.Contains(msg, "let the app create its socket") {
		t.Errorf("start failure %q: want it to name %s, the link, and the fix", msg, sock)
	}
	if n := d.countLog(`"msg":"refusing unsafe upstream"&&"app":"` + name + `"&&"reason":"symlink"`); n != 1 {
		t.Errorf("%d log lines for a readiness poll of 3s on one unsafe path, want 1", n)
	}
	if n := secret.conns.Load(); n > 0 {
		t.Errorf("the host socket got %d connections from sact", n)
	}
}

// quiet.robots_txt in a directory the app writes, read by sact as root and served to
// anyone while the app sleeps: a link to a host file must not be read, and a FIFO must not
// hang sact's start (nor take the other apps down).
func TestUnsafeRobotsTxt(t *testing.T) {
	needDocker(t)
	name, other := uniqueName(t, "robots"), uniqueName(t, "robotsother")
	dir := appDir(t)
	robots := filepath.Join(dir, "robots.txt")
	if err := os.WriteFile(robots, []byte("User-agent: *\nDisallow: /private\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(t.TempDir(), "secret.txt")
	os.WriteFile(secret, []byte("HOST-SECRET\n"), 0o600)
	front := freeAddr(t)
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", front)+
		frontApp(name, fmt.Sprintf("[%q]", name+".test"), fmt.Sprintf("    volumes: [\"%s:/app/public\"]\n    quiet: {robots_txt: %q}\n", dir, robots), "")+
		frontApp(other, fmt.Sprintf("[%q]", other+".test"), "", ""))
	c := frontClient(front)
	if r := do(t, c, "GET", "http://"+name+".test/robots.txt", nil); !strings.Contains(r.body, "Disallow: /private") {
		t.Fatalf("the app's robots.txt while it sleeps: %d %q", r.status, r.body)
	}

	// The app swaps its file for a link; sact restarts (a reboot, an upgrade).
	swapForLink(t, secret, robots)
	d.stop()
	d = startSactFile(t, d.config)
	r := do(t, c, "GET", "http://"+name+".test/robots.txt", nil)
	if strings.Contains(r.body, "HOST-SECRET") {
		t.Fatalf("sact served a host file linked from the app's robots.txt: %q", r.body)
	}
	if !strings.Contains(r.body, "Disallow: /") {
		t.Errorf("robots.txt after the link was refused: %d %q, want the default disallow-all", r.status, r.body)
	}
	d.waitLog(`"app":"`+name+`"&&robots_txt&&symbolic link`, 5*time.Second)
	if r := do(t, c, "GET", "http://"+other+".test/.sact/status", nil); !strings.Contains(r.body, "dormant") {
		t.Errorf("the other app after a bad robots_txt: %d %q", r.status, r.body)
	}

	// A FIFO: reading it would wait for a writer forever.
	os.Remove(robots)
	if err := syscall.Mkfifo(robots, 0o666); err != nil {
		t.Fatal(err)
	}
	d.stop()
	d = startSactFile(t, d.config) // fails if sact never gets to serving
	if r := do(t, c, "GET", "http://"+other+".test/.sact/status", nil); !strings.Contains(r.body, "dormant") {
		t.Errorf("the other app with a FIFO for robots_txt: %d %q", r.status, r.body)
	}
	d.waitLog(`"app":"`+name+`"&&robots_txt&&FIFO`, 5*time.Second)
}

// An image is the app's, and the app is hostile: sact.* labels baked into it must not
// declare an app. Docker copies an image's labels into every container made from it, so
// without care an image could have sact serve, on a port it names, an upstream it names:
// here a host socket standing in for /var/run/docker.sock.
func TestImageLabelsDeclareNoApp(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "imglabel")
	_, value, _ := strings.Cut(labelSelector, "=")
	secret := newHostSecret(t)
	evil := freeAddr(t)
	img := "sact-e2e-" + name + ":latest"
	build := exec.Command("docker", "build", "-q", "-t", img, "-")
	build.Env = append(os.Environ(), "DOCKER_BUILDKIT=0")
	build.Stdin = strings.NewReader(fmt.Sprintf("FROM %s\nLABEL sact.enable=%q sact.name=%q sact.listen=%q sact.upstream=%q\n",
		testImage, value, "evil-"+name, "tcp:"+evil, "unix:"+secret.path))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", img).Run() })
	noApp := func(when string) {
		t.Helper()
		if body, err := httpGetTimeout(evil, "/", 5*time.Second); err == nil || strings.Contains(body, "HOST-SECRET") {
			t.Errorf("%s: the image's labels declared an app on %s: %q, %v", when, evil, body, err)
		}
	}

	// Made from the image elsewhere (docker create, as compose does), without labels of
	// its own.
	made := uniqueName(t, "imglabelmade")
	docker(t, "create", "--name", "sact-"+made, img)
	addr := freeAddr(t)
	d := startSact(t, "apps:"+strings.Replace(appConfig(name, addr, ""), testImage, img, 1))
	noApp("a container made from the image")
	docker(t, "rm", "-f", "sact-"+made)

	// Made by sact for an app of sact.yaml: sact-NAME carries the image's labels too, and
	// a reload looks for labelled containers again.
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("the app of the labelled image: %q, %v", body, err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(`"msg":"config reloaded"`, 10*time.Second)
	noApp("sact's own container of the image")
	if n := secret.conns.Load(); n > 0 {
		t.Errorf("the host socket got %d connections from sact", n)
	}
}

// A container made elsewhere (container:, as compose makes it) binds a root-owned 0755
// directory, which its root user writes as host root: sact.yaml does not name that
// volume, the engine does. A link the app makes of a directory on the way to its socket
// must not be followed.
func TestUnsafeUpstreamContainerMadeElsewhere(t *testing.T) {
	needDocker(t)
	// Not under /tmp: everything there is beneath a world-writable directory anyway.
	base, err := os.MkdirTemp("/run", "sact-e2e-")
	if err != nil {
		t.Skipf("needs a root-owned directory outside /tmp: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	os.Chmod(base, 0o755)
	vol, hostDir := filepath.Join(base, "vol"), filepath.Join(base, "host")
	for _, d := range []string{vol, filepath.Join(vol, "sub"), hostDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// The host socket has the name the app's upstream ends in.
	ln, err := net.Listen("unix", filepath.Join(hostDir, "app.sock"))
	if err != nil {
		t.Fatal(err)
	}
	var reached atomic.Int64
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached.Add(1)
		fmt.Fprintln(w, "HOST-SECRET")
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	name := uniqueName(t, "unsafemade")
	docker(t, "create", "--name", "sact-"+name, "-v", vol+":/app/sockets",
		"-e", "NAME="+name, "-e", "LISTEN=unix:/app/sockets/sub/app.sock", testImage)
	addr := freeAddr(t)
	d := startSact(t, fmt.Sprintf(`apps:
  %[1]s:
    container: sact-%[1]s
    listen: ["tcp:%[2]s"]
    upstream: unix:%[3]s/sub/app.sock
    stop_timeout: 2s
`, name, addr, vol))
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("before the swap: %q, %v", body, err)
	}
	// The app moves its directory away and puts a link to the host's in its place.
	if err := os.Rename(filepath.Join(vol, "sub"), filepath.Join(vol, "sub.old")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(hostDir, filepath.Join(vol, "sub")); err != nil {
		t.Fatal(err)
	}
	body, err := httpGetTimeout(addr, "/", 10*time.Second)
	if strings.Contains(body, "HOST-SECRET") || reached.Load() > 0 {
		t.Fatalf("a client of the app reached the host socket through a link in the container's volume: %q", body)
	}
	if err == nil {
		t.Errorf("after the swap: %q, want the connection refused", body)
	}
	d.waitLog(`"msg":"refusing unsafe upstream"&&"app":"`+name+`"&&"reason":"symlink"&&"at":"`+filepath.Join(vol, "sub")+`"`, 5*time.Second)
}
