package e2e

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The nginx path: a unix listener, relayed to the app's own unix socket in a bind-mounted
// directory, with the container running as a non-root user.
func TestUnixListenToUnixUpstream(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "unix")
	dir := t.TempDir()
	sockets := filepath.Join(dir, "sockets")
	os.Mkdir(sockets, 0o777)
	os.Chmod(sockets, 0o777) // the container's user 1001 creates its socket here
	listen := filepath.Join(dir, "front.sock")
	d := startSact(t, fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    user: "1001"
    volumes: ["%[3]s:/app/sockets"]
    env: {NAME: %[1]s, LISTEN: "unix:/app/sockets/app.sock"}
    listen:
      - {address: "unix:%[4]s", mode: "0660"}
    upstream: unix:%[3]s/app.sock
    idle: 30s
    stop_timeout: 2s
`, name, testImage, sockets, listen))

	fi, err := os.Stat(listen)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode() & fs.ModePerm; got != 0o660 {
		t.Errorf("listen socket mode %v, want 0660", got)
	}
	body, err := httpGet(listen, "/bytes?n=3000000")
	if err != nil {
		t.Fatalf("cold request over unix sockets: %v", err)
	}
	if len(body) != 3000000 {
		t.Errorf("got %d bytes, want 3000000", len(body))
	}
	d.waitLog(`"msg":"app ready"&&`+name+`&&unix:`, time.Second)
	if u := docker(t, "inspect", "-f", "{{.Config.User}}", "sact-"+name); u != "1001" {
		t.Errorf("container user %q, want 1001", u)
	}

	// A stale socket file left by a killed sact is replaced; a live one is not.
	d.kill()
	if _, err := os.Stat(listen); err != nil {
		t.Fatalf("expected the killed sact's socket file to remain: %v", err)
	}
	d2 := startSactFile(t, d.config)
	d2.waitLog(`"msg":"adopted running app"&&`+name, 5*time.Second)
	if _, err := httpGet(listen, "/"); err != nil {
		t.Fatalf("request after restart over the stale path: %v", err)
	}
	out, err := exec.Command(sactBin, "serve", "-c", d.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use") {
		t.Errorf("a second sact on the same socket: err %v, output %s; want a refusal saying it is in use", err, out)
	}
	if _, err := httpGet(listen, "/"); err != nil {
		t.Fatalf("the first sact stopped serving after a second one tried its socket: %v", err)
	}
}

// A changed config recreates the container at its next start, never while it serves.
func TestChangedConfigRecreatesAtNextStart(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "recreate")
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "sact.yaml")
	write := func(extra string) {
		if err := os.WriteFile(path, []byte("apps:"+appConfig(name, addr, extra)+"    idle: 1s\n"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("")
	d := startSactFile(t, path)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	id1 := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name)
	d.stop()

	write(`, EXTRA: "changed"`)
	d2 := startSactFile(t, path)
	d2.waitLog(`"msg":"adopted running app"&&`+name, 5*time.Second)
	if id := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name); id != id1 {
		t.Fatalf("container replaced while it ran")
	}
	d2.waitLog(`"msg":"stopped app"&&`+name, 20*time.Second)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	d2.waitLog(`"msg":"recreating container"&&`+name, time.Second)
	if id := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name); id == id1 {
		t.Errorf("container not recreated after its settings changed")
	}
	if env := docker(t, "inspect", "-f", "{{range .Config.Env}}{{.}} {{end}}", "sact-"+name); !strings.Contains(env, "EXTRA=changed") {
		t.Errorf("recreated container env %q lacks the new setting", env)
	}
}

// The process runtime: the same activation for a plain command, its process group killed
// on stop.
func TestProcessApp(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "testserver")
	build := exec.Command("go", "build", "-o", bin, "../testimage/testserver")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test server: %v: %s", err, out)
	}
	addr, port := freeAddr(t), freeAddr(t)
	_, p, _ := strings.Cut(port, ":")
	d := startSact(t, fmt.Sprintf(`apps:
  proc:
    command: ["/bin/sh", "-c", "exec %[1]s"]
    env: {NAME: proc, LISTEN: "tcp:127.0.0.1:%[2]s"}
    listen: ["tcp:%[3]s"]
    port: %[2]s
    idle: 1s
    stop_timeout: 2s
`, bin, p, addr))
	body, err := httpGet(addr, "/pid")
	if err != nil {
		t.Fatalf("cold request to a process app: %v", err)
	}
	pid := strings.TrimSpace(body)
	if _, err := os.Stat("/proc/" + pid); err != nil {
		t.Fatalf("app process %s not running: %v", pid, err)
	}
	d.waitLog(`"msg":"stopped app"&&"app":"proc"&&idle`, 20*time.Second)
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile("/proc/" + pid + "/stat")
		if err != nil || strings.Contains(string(b), ") Z ") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app process %s still alive after the idle stop", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	body2, err := httpGet(addr, "/pid")
	if err != nil {
		t.Fatalf("second cold request: %v", err)
	}
	if strings.TrimSpace(body2) == pid {
		t.Errorf("same pid after an idle stop and a new start")
	}
}
