//go:build linux

package testimage

import (
	"bytes"
	"context"
	"fmt"
	"io"
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

// lockedBuffer collects a process's output while the test reads it.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestRubyRackUnicorn builds (or reuses) the Rack/unicorn image and runs it the way the
// classic setup did: as uid 1001, with tmp/ bind-mounted and unicorn on a unix socket in it.
func TestRubyRackUnicorn(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Debian image and runs a container")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		if os.Getenv("SACT_REQUIRE_DOCKER") == "1" || os.Getenv("CI") == "true" {
			t.Fatalf("Docker is required (SACT_REQUIRE_DOCKER=1) but not usable: %v: %s", err, out)
		}
		t.Skipf("no Docker engine: %v: %s", err, bytes.TrimSpace(out))
	}

	start := time.Now()
	ref, err := RackUnicorn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("image %s ready in %v", ref, time.Since(start).Round(time.Millisecond))

	tmp := t.TempDir()
	for _, d := range []string{"sockets", "pids"} {
		if err := os.Mkdir(filepath.Join(tmp, d), 0o777); err != nil {
			t.Fatal(err)
		}
	}
	for _, d := range []string{"", "sockets", "pids"} {
		if err := os.Chmod(filepath.Join(tmp, d), 0o777); err != nil {
			t.Fatal(err)
		}
	}
	sock := filepath.Join(tmp, "sockets", "unicorn.sock")

	name := fmt.Sprintf("sact-ruby-test-%d-%d", os.Getpid(), time.Now().UnixNano())
	run := exec.Command("docker", "run", "--rm", "--name", name, "--user", "1001",
		"-v", tmp+":/app/tmp", "-e", "SOCKET_FILE=/app/tmp/sockets/unicorn.sock", ref)
	var logs lockedBuffer
	run.Stdout, run.Stderr = &logs, &logs
	if err := run.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	t.Cleanup(func() {
		rm, rmCancel := context.WithTimeout(context.Background(), time.Minute)
		defer rmCancel()
		exec.CommandContext(rm, "docker", "rm", "-f", name).Run()
		select {
		case <-exited:
		case <-rm.Done():
			run.Process.Kill()
		}
	})

	// Wait for unicorn's socket to accept.
	deadline := time.Now().Add(60 * time.Second)
	for {
		c, err := net.Dial("unix", sock)
		if err == nil {
			c.Close()
			break
		}
		select {
		case err := <-exited:
			exited <- err
			t.Fatalf("the container exited (%v) before %s accepted; its output:\n%s", err, sock, logs.String())
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s does not accept after 60s (%v); the container's output:\n%s", sock, err, logs.String())
		}
	}
	t.Logf("unicorn accepting %v after the start", time.Since(start).Round(time.Millisecond))

	hc := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		}},
	}
	resp, err := hc.Get("http://rack/")
	if err != nil {
		t.Fatalf("GET over %s: %v; the container's output:\n%s", sock, err, logs.String())
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || strings.TrimSpace(string(body)) != "Simple app for test" {
		t.Fatalf("GET / = %s %q, want 200 %q; the container's output:\n%s", resp.Status, body, "Simple app for test", logs.String())
	}
}
