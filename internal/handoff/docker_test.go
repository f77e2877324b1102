package handoff

import (
	"archive/tar"
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// emptyImage is an image with nothing in it but /tmp: the shim and the app come in
// through a bind mount, as sact's own binary does.
const emptyImage = "sact-handoff-test:empty"

func docker(ctx context.Context, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("docker %s: %v: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

// needDocker skips the test without a usable engine, or fails it when
// SACT_REQUIRE_DOCKER=1, so that a missing engine never passes for green.
func needDocker(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := docker(ctx, "info", "--format", "{{.ServerVersion}}"); err != nil {
		if os.Getenv("SACT_REQUIRE_DOCKER") == "1" {
			t.Fatalf("Docker is required (SACT_REQUIRE_DOCKER=1) but not usable: %v", err)
		}
		t.Skipf("no Docker engine: %v", err)
	}
}

// staticTestBinary returns a statically linked copy of this test binary, building one
// without cgo if this one needs a dynamic loader the empty image lacks.
func staticTestBinary(t *testing.T, ctx context.Context) string {
	t.Helper()
	f, err := elf.Open(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	dynamic := false
	for _, p := range f.Progs {
		dynamic = dynamic || p.Type == elf.PT_INTERP
	}
	f.Close()
	dir := t.TempDir()
	bin := filepath.Join(dir, "sact")
	if !dynamic {
		copyFile(t, os.Args[0], bin, 0o755)
		return bin
	}
	cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, ".")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build a static test binary: %v\n%s", err, out)
	}
	return bin
}

func ensureEmptyImage(t *testing.T, ctx context.Context) {
	t.Helper()
	if _, err := docker(ctx, "image", "inspect", emptyImage); err == nil {
		return
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "tmp/", Typeflag: tar.TypeDir, Mode: 0o1777, ModTime: time.Unix(0, 0)})
	tw.Close()
	cmd := exec.CommandContext(ctx, "docker", "import", "-", emptyImage)
	cmd.Stdin = &buf
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import: %v: %s", err, out)
	}
}

// TestDocker runs the handoff as sact will: the container has no network, a read-only
// root, a non-root user and no shell; the shim is the bind-mounted binary, the handoff
// directory is bind-mounted at the default place.
func TestDocker(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	needDocker(t, ctx)
	bin := staticTestBinary(t, ctx)
	ensureEmptyImage(t, ctx)

	f := newFixture(t, Options{User: "65534:65534"})
	early, err := net.Dial("tcp", f.tcp.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()

	name := fmt.Sprintf("sact-handoff-test-%d", os.Getpid())
	t.Cleanup(func() { docker(context.Background(), "rm", "-f", name) })
	if _, err := docker(ctx, "run", "-d", "--name", name,
		"--network", "none", "--read-only", "--user", "65534:65534",
		"-v", bin+":/sact:ro", "-v", filepath.Dir(f.sock)+":"+filepath.Dir(DefaultSocket)+":ro", // as sact mounts it
		"-e", helperEnv+"=1", "-e", "SACT_TEST_WANT_NAMES=http:admin", "-e", "SACT_TEST_WANT_FAMILIES=inet:unix",
		"--entrypoint", "/sact", emptyImage, "shim", "--", "/sact", "serve"); err != nil {
		t.Fatal(err)
	}
	logs := func() string { out, _ := docker(context.Background(), "logs", name); return out }

	select {
	case p := <-f.peers:
		// SO_PEERCRED gives sact the host pid, which is what the engine reports.
		if pid, err := docker(ctx, "inspect", "-f", "{{.State.Pid}}", name); err != nil || pid != strconv.Itoa(p.PID) {
			t.Errorf("peer pid %d, container's State.Pid %s (%v)", p.PID, pid, err)
		}
		if p.UID != 65534 {
			t.Errorf("peer uid %d, want 65534", p.UID)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the shim never connected; container logs:\n%s", logs())
	}
	late, err := net.Dial("unix", f.unix.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	// Inside its pid namespace the app, exec'd by the shim, is pid 1.
	if got := readLine(t, early); got != "http 1" {
		t.Errorf("TCP client connected before the container started got %q, want %q", got, "http 1")
	}
	if got := readLine(t, late); got != "admin 1" {
		t.Errorf("unix client got %q, want %q", got, "admin 1")
	}
	code, err := docker(ctx, "wait", name)
	if err != nil || code != "0" {
		t.Errorf("container exit %s (%v); logs:\n%s", code, err, logs())
	}
	waitLog(t, f.logs, "sockets handed off")
}
