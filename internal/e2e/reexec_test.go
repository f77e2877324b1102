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
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// `sact restart` without systemd: the running sact starts a new one on its own listening
// sockets, which adopts the running app, and exits once its connections end. Clients loop
// on a TCP and a unix listener throughout, and a slow download runs across it: nothing is
// refused, and the download completes. The run dir is relative (made absolute at start)
// and missing at start (made 0755): in handoff mode, its paths are mounted into the app's
// container.
func TestRestartWithoutSystemd(t *testing.T) {
	t.Parallel()
	needDocker(t)
	t.Run("proxied", func(t *testing.T) {
		testRestart(t, `    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    port: 8080
`)
	})
	t.Run("handoff", func(t *testing.T) {
		testRestart(t, `    env: {NAME: %[1]s}
    user: "1001"
    network: none
    handoff: true
`)
	})
}

func testRestart(t *testing.T, mode string) {
	name := uniqueName(t, "reexec")
	base := t.TempDir()
	runDir := filepath.Join(base, "run") // missing: sact makes it
	tcp, sock := freeAddr(t), filepath.Join(base, "app.sock")
	config := writeConfig(t, fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
`+mode+`    listen: ["tcp:%[3]s", "unix:%[4]s"]
    idle: 5m
    stop_timeout: 3s
`, name, testImage, tcp, sock))

	// A file, not a pipe: the new sact inherits it, and a pipe would keep cmd.Wait waiting
	// for the new sact too.
	logs, err := os.Create(filepath.Join(base, "sact.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logs.Close()
	logText := func() string { b, _ := os.ReadFile(logs.Name()); return string(b) }
	cmd := exec.Command(sactBin, "serve", "-c", config, "-run-dir", "run", "-state-dir", filepath.Join(base, "state"), "-labels", labelSelector, "-log-format", "json")
	cmd.Dir = base
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	oldExit := make(chan error, 1)
	go func() { oldExit <- cmd.Wait() }()
	pidFile := filepath.Join(runDir, "sact.pid")
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		// The new sact is not our child: stop it by its pid file, and wait until it is gone.
		b, _ := os.ReadFile(pidFile)
		if pid, err := strconv.Atoi(strings.TrimSpace(string(b))); err == nil && pid != cmd.Process.Pid {
			syscall.Kill(pid, syscall.SIGTERM)
			waitFor(20*time.Second, func() bool { return syscall.Kill(pid, 0) != nil })
		}
		if t.Failed() {
			t.Logf("sact's log:\n%s", logText())
		}
	})
	if !waitFor(20*time.Second, func() bool { _, err := os.Stat(pidFile); return err == nil }) {
		t.Fatalf("sact wrote no pid file in its run dir:\n%s", logText())
	}
	if st, err := os.Stat(runDir); err != nil || st.Mode().Perm() != 0o755 {
		t.Errorf("the missing run dir was made with %v (%v); want 0755, so that nginx can reach sockets in it", st.Mode().Perm(), err)
	}
	unixClient := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", sock)
		},
		DisableKeepAlives: true,
	}, Timeout: 30 * time.Second}
	getUnix := func() error {
		resp, err := unixClient.Get("http://app/")
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), name) {
			return fmt.Errorf("answer %q", body)
		}
		return nil
	}
	if _, err := httpGet(tcp, "/"); err != nil {
		t.Fatalf("cold request: %v", err)
	}
	before := docker(t, "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", "sact-"+name)

	loop := clientLoop(t, tcp, 4, 10*time.Millisecond)
	var unixOK, unixFailed atomic.Int64
	unixDone := make(chan struct{})
	go func() {
		defer close(unixDone)
		for end := time.Now().Add(6 * time.Second); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			if err := getUnix(); err != nil {
				unixFailed.Add(1)
				t.Logf("unix request failed: %v", err)
			} else {
				unixOK.Add(1)
			}
		}
	}()

	// A 48 MiB download read at about 16 MiB/s: it runs across the restart.
	const size = 48 << 20
	downloaded := make(chan error, 1)
	go func() {
		resp, err := http.Get("http://" + tcp + "/bytes?n=" + strconv.Itoa(size))
		if err != nil {
			downloaded <- err
			return
		}
		defer resp.Body.Close()
		var n int64
		buf := make([]byte, 64<<10)
		for {
			k, err := resp.Body.Read(buf)
			n += int64(k)
			if err == io.EOF {
				break
			}
			if err != nil {
				downloaded <- fmt.Errorf("after %d bytes: %w", n, err)
				return
			}
			time.Sleep(4 * time.Millisecond)
		}
		if n != size {
			downloaded <- fmt.Errorf("got %d bytes of %d", n, size)
			return
		}
		downloaded <- nil
	}()
	time.Sleep(time.Second)

	t0 := time.Now()
	out, err := exec.Command(sactBin, "restart", "-run-dir", runDir).CombinedOutput()
	took := time.Since(t0)
	if err != nil {
		t.Fatalf("sact restart: %v: %s", err, out)
	}
	var oldPid, newPid int
	if _, err := fmt.Sscanf(string(out), "sact restarted: pid %d -> %d", &oldPid, &newPid); err != nil || oldPid != cmd.Process.Pid || newPid == oldPid {
		t.Errorf("sact restart said %q; want the old pid %d and a new one", out, cmd.Process.Pid)
	}
	select {
	case err := <-oldExit:
		if err != nil {
			t.Errorf("the old sact exited with %v; want 0", err)
		}
	case <-time.After(5 * time.Second):
		t.Errorf("sact restart returned, but the old sact has not exited")
	}
	if err := <-downloaded; err != nil {
		t.Errorf("the download across the restart: %v", err)
	}
	<-unixDone
	time.Sleep(500 * time.Millisecond)
	ok, failed := loop.stop()
	t.Logf("RELIABILITY sact restart (no systemd): %d TCP and %d unix requests served across it, %d and %d failed; a %d MiB download completed; restart took %v (the old sact drains the download)",
		ok, unixOK.Load(), failed, unixFailed.Load(), size>>20, took.Round(time.Millisecond))
	if failed != 0 || unixFailed.Load() != 0 || ok < 50 || unixOK.Load() < 20 {
		t.Errorf("across sact restart: TCP %d served, %d failed; unix %d served, %d failed; want none failed", ok, failed, unixOK.Load(), unixFailed.Load())
	}
	if after := docker(t, "inspect", "-f", "{{.Id}} {{.State.StartedAt}}", "sact-"+name); after != before {
		t.Errorf("the app's container changed across the restart: %s -> %s; want it adopted", before, after)
	}
	// The new sact serves on both sockets, the unix one still at its path.
	if err := getUnix(); err != nil {
		t.Errorf("after the restart, the unix listener: %v", err)
	}
	if _, err := httpGet(tcp, "/"); err != nil {
		t.Errorf("after the restart, the TCP listener: %v", err)
	}
	if !strings.Contains(logText(), "adopted running app") {
		t.Errorf("the new sact did not log adopting the app")
	}
	// And it starts the app anew, after a stop: nothing the old sact left (or removed as
	// it exited) is in the way.
	if out, err := exec.Command(sactBin, "stop", name, "-c", config, "-run-dir", runDir).CombinedOutput(); err != nil {
		t.Fatalf("sact stop after the restart: %v: %s", err, out)
	}
	if _, err := httpGet(tcp, "/"); err != nil {
		t.Errorf("a cold start by the new sact: %v", err)
	}
	if err := getUnix(); err != nil {
		t.Errorf("a cold start by the new sact, on the unix listener: %v", err)
	}
	if strings.Contains(logText(), "no app claims") {
		t.Errorf("the new sact warns about sockets it was passed")
	}
}
