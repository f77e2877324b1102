package e2e

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// handoffConfig is an app of the test image that takes its sockets through the shim, with
// no network of its own.
func handoffConfig(name, tcp, unixPath, extra string) string {
	return fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    user: "1001"
    network: none
    handoff: true
    env: {NAME: %[1]s}
    listen: ["tcp:%[3]s", "unix:%[4]s"]
    idle: 2s
    stop_timeout: 2s
%[5]s`, name, testImage, tcp, unixPath, extra)
}

func TestHandoff(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "handoff")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
	d := startSact(t, handoffConfig(name, tcp, sock, ""))

	// A burst during boot: every connection waits in the kernel's backlog and is served by
	// the app itself.
	burst(t, 40, []string{tcp, sock}, "hello from "+name+" (pid 1)")
	if n := d.awaitCount(`"msg":"app ready"&&`+name, 1); n != 1 {
		t.Errorf("%d starts for a burst, want 1", n)
	}
	if mode := docker(t, "inspect", "-f", "{{.HostConfig.NetworkMode}}", "sact-"+name); mode != "none" {
		t.Errorf("network mode %q, want none", mode)
	}
	if u := docker(t, "inspect", "-f", "{{.Config.User}}", "sact-"+name); u != "1001" {
		t.Errorf("container user %q, want 1001", u)
	}
	if n := d.countLog(`"msg":"relay ended"&&` + name); n != 0 {
		t.Errorf("sact relayed %d connections of a handoff app", n)
	}

	// A connection moving bytes keeps the app; the idle clock only starts when it ends.
	body, err := httpGet(tcp, "/slow?d=5s&every=200ms")
	if err != nil || !strings.HasSuffix(body, "done\n") {
		t.Fatalf("stream: %q, %v", body, err)
	}
	if n := d.countLog(`"msg":"stopped app"&&` + name); n != 0 {
		t.Fatalf("app stopped while a connection streamed through its own socket")
	}
	rec := d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 15*time.Second)
	t.Logf("stopped: %v", rec)
	waitContainerState(t, name, "exited", 5*time.Second)

	// Watched again after the stop: the next client starts it anew.
	if _, err := httpGet(sock, "/"); err != nil {
		t.Fatalf("second cold start over the unix socket: %v", err)
	}
	d.waitLog(`"msg":"app ready"&&`+name, time.Second)
	if n := d.awaitCount(`"msg":"app ready"&&`+name, 2); n != 2 {
		t.Errorf("%d starts, want 2", n)
	}
}

// A silent open connection does not keep a handoff app, unless keep_while_open.
func TestHandoffSilentConnection(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, keep := range []bool{false, true} {
		t.Run(fmt.Sprintf("keep_while_open=%v", keep), func(t *testing.T) {
			name := uniqueName(t, "hsilent")
			tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
			d := startSact(t, handoffConfig(name, tcp, sock, fmt.Sprintf("    keep_while_open: %v\n", keep)))
			if _, err := httpGet(tcp, "/"); err != nil {
				t.Fatal(err)
			}
			c := dialTCP(t, tcp) // open, says nothing
			defer c.Close()
			time.Sleep(5 * time.Second) // idle is 2s
			stopped := d.countLog(`"msg":"stopped app"&&`+name) > 0
			if keep && stopped {
				t.Errorf("stopped with an open connection and keep_while_open")
			}
			if !keep && !stopped {
				t.Errorf("a silent open connection kept the app past idle")
			}
		})
	}
}

// An app that exits at once: its queued clients are refused promptly, not left hanging,
// and it is not restarted in a tight loop.
func TestHandoffAppExits(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "hexit")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
	d := startSact(t, strings.Replace(handoffConfig(name, tcp, sock, ""), "env: {NAME: "+name+"}", `env: {NAME: `+name+`, EXIT_CODE: "4"}`, 1))
	began := time.Now()
	if _, err := httpGetTimeout(tcp, "/", 20*time.Second); err == nil {
		t.Fatalf("request to an app that exits at once succeeded")
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("client held %v by an app that exited at once", took)
	}
	d.waitLog(`"msg":"app exited"&&`+name+`&&exiting with code 4`, 5*time.Second)
	time.Sleep(2 * time.Second)
	if n := d.countLog(`"msg":"starting app"&&` + name); n > 2 {
		t.Errorf("%d starts within a few seconds: a crashing app is restarted in a loop", n)
	}
}

// Restarting sact (cleanly or by kill -9) while a handoff app runs leaves the app serving
// on its socket throughout; the new sact takes the socket back and keeps the idle clock.
func TestHandoffSurvivesSactRestart(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "hrestart")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
	cfg := strings.Replace(handoffConfig(name, tcp, sock, ""), "idle: 2s", "idle: 4s", 1)
	d := startSact(t, cfg)
	first, err := httpGet(sock, "/pid")
	if err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"SIGTERM", "SIGKILL"} {
		if how == "SIGTERM" {
			d.stop()
		} else {
			d.kill()
		}
		// sact is gone: the app still answers on both sockets, by itself.
		for _, addr := range []string{sock, tcp} {
			if body, err := httpGet(addr, "/pid"); err != nil || body != first {
				t.Fatalf("after %s of sact, %s: %q, %v; want the same app (pid %q) serving", how, addr, body, err, first)
			}
		}
		d = startSactFile(t, d.config)
		d.waitLog(`"msg":"took back the listening sockets of a running handoff app"&&`+name, 5*time.Second)
		for _, addr := range []string{sock, tcp} {
			if body, err := httpGet(addr, "/pid"); err != nil || body != first {
				t.Fatalf("after restart (%s), %s: %q, %v", how, addr, body, err)
			}
		}
		if n := d.countLog(`"msg":"starting app"&&` + name); n != 0 {
			t.Errorf("the new sact started the app again (%d starts) instead of adopting it", n)
		}
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
	if _, err := httpGet(tcp, "/"); err != nil {
		t.Fatalf("cold start after the restarts: %v", err)
	}
}

// Handoff for a plain process: the shim wraps the command, which gets the socket as fd 3.
func TestHandoffProcessApp(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "testserver")
	if out, err := exec.Command("go", "build", "-o", bin, "../testimage/testserver").CombinedOutput(); err != nil {
		t.Fatalf("building the test server: %v: %s", err, out)
	}
	addr := freeAddr(t)
	d := startSact(t, fmt.Sprintf(`apps:
  hproc:
    command: [%q]
    env: {NAME: hproc}
    listen: ["tcp:%s"]
    handoff: true
    idle: 2s
    stop_timeout: 2s
`, bin, addr))
	burst(t, 10, []string{addr}, "hello from hproc")
	pid, err := httpGet(addr, "/pid")
	if err != nil {
		t.Fatal(err)
	}
	// The app itself answers (no relay), as the process sact started: the shim exec'd it.
	rec := d.waitLog(`"msg":"app ready"&&"app":"hproc"`, time.Second)
	if id, _ := rec["container"].(string); id != strings.TrimSpace(pid) {
		t.Errorf("served by pid %s, but sact started pid %v", strings.TrimSpace(pid), rec["container"])
	}
	d.waitLog(`"msg":"stopped app"&&"app":"hproc"&&"reason":"idle"`, 15*time.Second)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("second cold start: %v", err)
	}
}
