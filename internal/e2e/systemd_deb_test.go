package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

// systemdHost is a container running systemd as its PID 1 (a Debian host of its own) with
// the host's Docker socket mounted: sact installed in it starts the apps' containers as
// siblings on the host's engine.
type systemdHost struct {
	t    *testing.T
	name string
}

// The image is built once per run (about 40 s the first time, then cached by content
// hash), and so is the package.
var (
	systemdOnce  sync.Once
	systemdImage string
	systemdErr   error
)

func needSystemdImage(t *testing.T) string {
	t.Helper()
	needDocker(t)
	needTool(t, "debootstrap")
	systemdOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		start := time.Now()
		systemdImage, systemdErr = testimage.Systemd(ctx)
		t.Logf("systemd image %s ready in %v", systemdImage, time.Since(start).Round(time.Millisecond))
	})
	if systemdErr != nil {
		if required() {
			t.Fatalf("building the systemd image: %v", systemdErr)
		}
		t.Skipf("cannot build the systemd image: %v", systemdErr)
	}
	return systemdImage
}

// buildDeb runs `make deb` into a directory of the test's own and returns the package.
func buildDeb(t *testing.T) string {
	t.Helper()
	needTool(t, "make")
	dist := t.TempDir()
	start := time.Now()
	cmd := exec.Command("make", "-C", "../..", "deb", "DIST="+dist)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make deb: %v\n%s", err, out)
	}
	debs, _ := filepath.Glob(filepath.Join(dist, "sact_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("make deb made %v; want one sact_*.deb", debs)
	}
	st, _ := os.Stat(debs[0])
	t.Logf("RELIABILITY make deb: %s, %d KiB, in %v", filepath.Base(debs[0]), st.Size()/1024, time.Since(start).Round(time.Millisecond))
	return debs[0]
}

// bootSystemd runs image with systemd as PID 1, in the way this engine allows (no
// --privileged), with the host's directory shared at the same path, and waits until it
// has booted. The container is removed after the test.
func bootSystemd(t *testing.T, image string, shared string) *systemdHost {
	t.Helper()
	h := &systemdHost{t: t, name: uniqueName(t, "systemd")}
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", h.name).Run() })
	docker(t, "run", "-d", "--name", h.name, "--hostname", "sact-host",
		"--cap-add", "SYS_ADMIN", "--security-opt", "seccomp=unconfined",
		"--tmpfs", "/run", "--tmpfs", "/run/lock", "--tmpfs", "/tmp",
		"-v", "/sys/fs/cgroup:/sys/fs/cgroup:ro", "-e", "container=docker",
		"-v", "/var/run/docker.sock:/run/docker.sock", "-v", shared+":"+shared, image)
	start := time.Now()
	for {
		out, _ := h.exec("systemctl", "is-system-running")
		if s := strings.TrimSpace(out); s == "running" || s == "degraded" {
			t.Logf("systemd booted (%s) in %v", s, time.Since(start).Round(time.Millisecond))
			return h
		}
		if time.Since(start) > 60*time.Second {
			failed, _ := h.exec("systemctl", "--failed", "--no-pager")
			t.Fatalf("systemd did not boot in 60 s: %q\n%s", out, failed)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// exec runs a command in the systemd host and returns its combined output.
func (h *systemdHost) exec(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"exec", h.name}, args...)...).CombinedOutput()
	return string(out), err
}

// sh runs a shell script in the systemd host, failing the test if it fails.
func (h *systemdHost) sh(script string) string {
	h.t.Helper()
	out, err := h.exec("sh", "-c", script)
	if err != nil {
		h.t.Fatalf("in the systemd host: %s: %v\n%s\njournal:\n%s", script, err, out, h.journal())
	}
	return out
}

// write puts content at path in the systemd host.
func (h *systemdHost) write(path, content string) {
	h.t.Helper()
	cmd := exec.Command("docker", "exec", "-i", h.name, "sh", "-c", `mkdir -p "$(dirname "$0")" && cat >"$0"`, path)
	cmd.Stdin = strings.NewReader(content)
	if out, err := cmd.CombinedOutput(); err != nil {
		h.t.Fatalf("writing %s in the systemd host: %v: %s", path, err, out)
	}
}

func (h *systemdHost) journal() string {
	out, _ := h.exec("journalctl", "-u", "sact", "--no-pager", "-o", "cat")
	return out
}

// active is systemctl is-active of unit.
func (h *systemdHost) active(unit string) string {
	out, _ := h.exec("systemctl", "is-active", unit)
	return strings.TrimSpace(out)
}

// mainPID is the main pid of sact.service, 0 when it does not run.
func (h *systemdHost) mainPID() int {
	out, _ := h.exec("systemctl", "show", "-p", "MainPID", "--value", "sact.service")
	n, _ := strconv.Atoi(strings.TrimSpace(out))
	return n
}

// waitFor polls cond for up to d.
func waitFor(d time.Duration, cond func() bool) bool {
	for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if cond() {
			return true
		}
	}
	return cond()
}

// sact installed from its .deb on a host run by a real systemd: the package installs and
// enables sact.socket; the first request to an app's socket unit starts sact (Type=notify)
// and then the app; `systemctl reload` applies a changed config and fails visibly on a
// broken one; `systemctl restart` under a client loop refuses nothing and adopts the
// running app; the watchdog restarts a sact that stops answering; the journal has the
// app's lines; `dpkg -r` removes it and leaves the app's container alone.
//
// The app's upstream is its port on the container IP, reachable from the systemd host
// because both are containers on the host engine's bridge; its listening socket is made by
// systemd inside the systemd host (sact-app@NAME.socket), so no path has to mean the same
// on both sides.
func TestSystemdDeb(t *testing.T) {
	image := needSystemdImage(t)
	deb := buildDeb(t)

	// Where systemd does not run (an image build, a chroot), the package installs too: the
	// units are enabled for the next boot, nothing is started.
	plain := uniqueName(t, "nosystemd")
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", plain).Run() })
	docker(t, "create", "--name", plain, image, "sh", "-c",
		"dpkg -i /var/tmp/sact.deb && getent group sact && test -L /etc/systemd/system/sockets.target.wants/sact.socket && dpkg -r sact")
	docker(t, "cp", deb, plain+":/var/tmp/sact.deb")
	if out, err := exec.Command("docker", "start", "-a", plain).CombinedOutput(); err != nil {
		t.Errorf("installing without systemd running: %v\n%s", err, out)
	}

	began := time.Now()
	// An app's mounted directory, and the sockets in it, are at the same path for the host's
	// engine (which resolves the app's volumes), for sact in the systemd host (which dials
	// the app's unix upstream there) and for this test (which connects to the front socket).
	//
	// Not under /tmp: sact dials an upstream beneath the first directory others can write
	// without crossing a mount point, and in the systemd host the shared directory is one.
	shared, err := os.MkdirTemp("/run", "sact-e2e-systemd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(shared) })
	os.Chmod(shared, 0o755)
	sockets := filepath.Join(shared, "sockets")
	os.Mkdir(sockets, 0o777)
	os.Chmod(sockets, 0o777)
	front := filepath.Join(shared, "front.sock")
	h := bootSystemd(t, image, shared)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("journalctl -u sact:\n%s", h.journal())
		}
	})

	// Install: the group, the enabled socket; sact itself does not run yet.
	docker(t, "cp", deb, h.name+":/var/tmp/sact.deb")
	h.sh("dpkg -i /var/tmp/sact.deb")
	if got := h.sh("getent group sact"); !strings.HasPrefix(got, "sact:") {
		t.Errorf("no sact group after install: %q", got)
	}
	if s := h.active("sact.socket"); s != "active" {
		t.Errorf("sact.socket is %s after install; want active", s)
	}
	if out := h.sh("systemctl is-enabled sact.socket sact.service"); strings.Count(out, "enabled") != 2 {
		t.Errorf("after install, units are: %s; want both enabled", out)
	}
	if s := h.active("sact.service"); s == "active" {
		t.Errorf("sact runs right after install; want it started by the first connection")
	}
	h.sh("sact check -c /etc/sact/sact.yaml") // the packaged example is valid where it lands

	// The app, its socket held by systemd, and a watchdog short enough for the test.
	app, unixApp := uniqueName(t, "sdapp"), uniqueName(t, "sdunix")
	config := func(extra string) string {
		return fmt.Sprintf(`admin:
  group: sact
apps:
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["unix:/run/sact/%[1]s.sock"]
    port: 8080
    idle: 5m
    stop_timeout: 3s
  %[4]s:
    image: %[2]s
    user: "1001"
    volumes: ["%[5]s:/app/sockets"]
    env: {NAME: %[4]s, LISTEN: "unix:/app/sockets/app.sock"}
    listen: ["unix:%[6]s"]
    upstream: unix:%[5]s/app.sock
    idle: 5m
    stop_timeout: 3s
%[3]s`, app, testImage, extra, unixApp, sockets, front)
	}
	h.write("/etc/sact/sact.yaml", config(""))
	h.write("/etc/systemd/system/sact.service.d/watchdog.conf", "[Service]\nWatchdogSec=5s\n")
	// The unix app's socket has no .socket unit: sact binds it, and keeps it in systemd's
	// file descriptor store across restarts.
	h.sh("systemctl daemon-reload && systemctl enable --now sact-app@" + app + ".socket")
	if s := h.active("sact.service"); s == "active" {
		t.Fatalf("sact runs before any connection")
	}
	sock := "/run/sact/" + app + ".sock"
	curl := "curl -sS --max-time 60 --unix-socket " + sock + " http://app/"

	// The first request starts sact, then the app.
	t0 := time.Now()
	if body := h.sh(curl); !strings.Contains(body, app) {
		t.Errorf("first request answered %q; want the app %s", body, app)
	}
	t.Logf("RELIABILITY first request through the socket unit (starts sact, then the app): %v", time.Since(t0).Round(time.Millisecond))
	if s := h.active("sact.service"); s != "active" {
		t.Fatalf("sact.service is %s after the first request", s)
	}
	if st := h.sh("systemctl show -p Type -p StatusText --value sact.service"); !strings.Contains(st, "notify") || !strings.Contains(st, "serving 2 apps") {
		t.Errorf("sact.service: %q; want Type=notify and the READY status", st)
	}
	if s := containerState(t, app); s != "running" {
		t.Fatalf("app container is %q after the first request", s)
	}
	// From the host, through the shared directory: the systemd host's sact relays to the
	// app's own socket in its mounted directory.
	if body, err := httpGet(front, "/"); err != nil || !strings.Contains(body, unixApp) {
		t.Errorf("from the host to %s: %q, %v; want the app %s over its unix upstream", front, body, err, unixApp)
	}

	// Reload: a second app appears; a broken config fails the reload and changes nothing.
	second := uniqueName(t, "sdapp2")
	h.write("/etc/sact/sact.yaml", config(fmt.Sprintf(`  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:127.0.0.1:9001"]
    port: 8080
    stop_timeout: 3s
`, second, testImage)))
	h.sh("systemctl reload sact")
	if out := h.sh("sact status"); !strings.Contains(out, second) {
		t.Errorf("after systemctl reload, sact status lacks the new app %s:\n%s", second, out)
	}
	if body := h.sh("curl -sS --max-time 60 http://127.0.0.1:9001/"); !strings.Contains(body, second) {
		t.Errorf("the app added by the reload answered %q", body)
	}
	h.write("/etc/sact/sact.yaml", config("  broken:\n    image: x\n    no_such_key: 1\n"))
	out, err := h.exec("systemctl", "reload", "sact")
	if err == nil {
		t.Errorf("systemctl reload with a broken config succeeded: %s", out)
	}
	status, _ := h.exec("systemctl", "status", "sact", "--no-pager", "-n", "30")
	if !strings.Contains(status, "no_such_key") {
		t.Errorf("systemctl status does not say what is wrong with the config:\n%s", status)
	}
	if s := h.active("sact.service"); s != "active" {
		t.Errorf("sact.service is %s after a refused reload; want still active", s)
	}
	if body := h.sh(curl); !strings.Contains(body, app) {
		t.Errorf("after a refused reload the app answered %q", body)
	}
	// The added app is removed by the restart below, not by a reload: the old sact keeps
	// its socket in systemd's store as it stops, and the new one, which has no such app,
	// must free it.
	h.write("/etc/sact/sact.yaml", config(""))

	// The watchdog: a sact that stops answering is killed and started again. The unix
	// app's socket, bound by this sact, is put in systemd's store as the watchdog aborts it.
	pid := h.mainPID()
	t1 := time.Now()
	hostLoop := clientLoop(t, front, 2, 20*time.Millisecond)
	h.sh("kill -STOP " + strconv.Itoa(pid))
	if !waitFor(60*time.Second, func() bool {
		p := h.mainPID()
		return p != 0 && p != pid && h.active("sact.service") == "active"
	}) {
		t.Fatalf("sact (pid %d) stopped with SIGSTOP was not restarted by the watchdog:\n%s", pid, h.journal())
	}
	time.Sleep(500 * time.Millisecond)
	hostOK, hostFailed := hostLoop.stop()
	t.Logf("RELIABILITY watchdog (WatchdogSec=5s): a stopped sact replaced in %v; %d of %d requests through the shared socket served", time.Since(t1).Round(time.Millisecond), hostOK, hostOK+hostFailed)
	// A request that the hung sact had accepted dies with it (at most one per client);
	// every other waits in the socket systemd keeps, and is served by the next sact.
	if hostFailed > 2 || hostOK < 10 {
		t.Errorf("across the watchdog's restart, from the host: %d served, %d failed; want at most the 2 in flight lost", hostOK, hostFailed)
	}
	if body := h.sh(curl); !strings.Contains(body, app) {
		t.Errorf("after the watchdog restart the app answered %q", body)
	}
	if all, _ := h.exec("journalctl", "--no-pager", "-o", "cat"); !strings.Contains(all, "Watchdog timeout") {
		t.Errorf("the journal does not show a watchdog timeout")
	}

	// sact restart is for hosts without systemd; here it points at systemctl.
	if out, err := h.exec("sact", "restart"); err == nil || !strings.Contains(out, "systemctl restart sact") {
		t.Errorf("sact restart under systemd: %v %s; want a failure pointing at systemctl", err, out)
	}

	// Restart under a client loop: nothing refused, the running app adopted.
	before := docker(t, "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", "sact-"+app)
	pid = h.mainPID()
	hostLoop = clientLoop(t, front, 2, 20*time.Millisecond) // from the host, through the shared socket
	loopOut := h.sh(`rm -f /tmp/codes /tmp/stop
( while [ ! -e /tmp/stop ]; do ` + curl + ` -o /dev/null -w '%{http_code}\n' >>/tmp/codes 2>>/tmp/errors; done ) &
sleep 1; systemctl restart sact; sleep 1; systemctl restart sact; sleep 1
touch /tmp/stop; wait
echo total $(wc -l </tmp/codes) ok $(grep -c '^200$' /tmp/codes); cat /tmp/errors`)
	hostOK, hostFailed = hostLoop.stop()
	var total, ok int
	fmt.Sscanf(loopOut, "total %d ok %d", &total, &ok)
	t.Logf("RELIABILITY systemctl restart sact twice under client loops: %d of %d requests served (curl in the systemd host), %d of %d (from the host through the shared unix socket)", ok, total, hostOK, hostOK+hostFailed)
	if total < 10 || ok != total {
		t.Errorf("across restarts: %d of %d requests served; want all:\n%s", ok, total, loopOut)
	}
	if hostOK < 10 || hostFailed != 0 {
		t.Errorf("across restarts, from the host: %d served, %d failed; want none failed", hostOK, hostFailed)
	}
	if p := h.mainPID(); p == pid || p == 0 {
		t.Errorf("sact's pid %d -> %d: not restarted", pid, p)
	}
	if after := docker(t, "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", "sact-"+app); after != before {
		t.Errorf("the app's container changed across the restart: %s -> %s; want it adopted", before, after)
	}
	if j := h.journal(); !strings.Contains(j, "adopted running app") || !strings.Contains(j, "kept in systemd") {
		t.Errorf("the journal does not show the app adopted and the sockets kept in systemd:\n%s", j)
	}
	// The app removed across the restart keeps no socket in systemd: its address refuses
	// at once.
	if out, err := h.exec("curl", "-sS", "--max-time", "5", "http://127.0.0.1:9001/"); err == nil || !strings.Contains(out, "curl: (7)") { // 7: cannot connect; 28 would be a wait
		t.Errorf("the removed app's address after restarts: %v %s; want the connection refused", err, out)
	}

	// The journal has the app's lines, as logfmt without a timestamp of their own, at
	// their priority.
	j := h.journal()
	for _, want := range []string{`msg="starting app" app=` + app, `msg="app ready" app=` + app} {
		if !strings.Contains(j, want) {
			t.Errorf("journalctl -u sact lacks %q:\n%s", want, j)
		}
	}
	if strings.Contains(j, "time=") {
		t.Errorf("journal lines carry a timestamp of their own:\n%s", j)
	}
	if errs, _ := h.exec("journalctl", "-u", "sact", "-p", "err", "--no-pager", "-o", "cat"); !strings.Contains(errs, "no_such_key") || strings.Contains(errs, "app ready") {
		t.Errorf("journalctl -p err: want the refused reload and no info lines:\n%s", errs)
	}

	// An upgrade (the same package again): the config is kept, a running sact restarts on
	// the new binary and adopts the app.
	pid = h.mainPID()
	h.sh("dpkg -i /var/tmp/sact.deb")
	if got := h.sh("cat /etc/sact/sact.yaml"); got != config("") {
		t.Errorf("the upgrade changed the config:\n%s", got)
	}
	if p := h.mainPID(); p == pid || p == 0 || h.active("sact.service") != "active" {
		t.Errorf("after the upgrade sact's pid is %d (was %d), %s; want restarted", p, pid, h.active("sact.service"))
	}
	if body := h.sh(curl); !strings.Contains(body, app) {
		t.Errorf("after the upgrade the app answered %q", body)
	}

	// Removal: sact and its sockets stop, the app's container is left running.
	h.sh("dpkg -r sact")
	if s := h.active("sact.service"); s == "active" {
		t.Errorf("sact.service still %s after dpkg -r", s)
	}
	if out, err := h.exec("test", "-e", "/usr/bin/sact"); err == nil {
		t.Errorf("/usr/bin/sact still there after dpkg -r %s", out)
	}
	if out, err := h.exec("test", "-e", "/run/sact/admin.sock"); err == nil {
		t.Errorf("the admin socket is left behind after dpkg -r %s", out)
	}
	if s := containerState(t, app); s != "running" {
		t.Errorf("dpkg -r left the app's container %q; want it running, untouched", s)
	}
	h.sh("test -e /etc/sact/sact.yaml") // a conffile: kept until purge
	h.sh("dpkg -P sact && ! test -e /etc/sact/sact.yaml")
	t.Logf("RELIABILITY systemd test: install to purge in %v", time.Since(began).Round(time.Millisecond))
}
