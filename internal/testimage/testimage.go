// Package testimage builds the images that sact's tests, demo and benchmarks run, offline:
// no registry is needed. The test server is a static Go binary put into an image with the
// engine's image import; the image is tagged with the binary's content hash, so it is
// built once and reused until the server's source changes.
package testimage

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"

	"github.com/sact-project/sact/internal/backend/docker"
)

// Repo is the repository the test server image is tagged in.
const Repo = "sact-testserver"

// TestServer returns the reference of the test server image (see testserver's package
// documentation), building and importing it first if the engine lacks it. It needs the Go
// toolchain and sact's source tree, as `go run` and `go test` have.
func TestServer(ctx context.Context) (string, error) {
	return goImage(ctx, Repo, "testserver", `EXPOSE 8080`)
}

// HostileRepo is the repository the hostile app's image is tagged in.
const HostileRepo = "sact-hostile"

// Hostile returns the reference of the hostile app's image (see the hostile package's
// documentation): an app that attacks sact and the host from inside its container.
func Hostile(ctx context.Context) (string, error) {
	return goImage(ctx, HostileRepo, "hostile", `EXPOSE 8080`)
}

// goImage builds ./internal/testimage/NAME into a static binary, and returns the image
// repo:HASH holding it as /NAME, its entrypoint, importing it first if the engine lacks it.
func goImage(ctx context.Context, repo, name string, changes ...string) (string, error) {
	bin, err := buildBinary(ctx, name)
	if err != nil {
		return "", fmt.Errorf("building the %s image's binary: %w", name, err)
	}
	sum := sha256.Sum256(bin)
	ref := repo + ":" + hex.EncodeToString(sum[:6])

	changes = append([]string{`ENTRYPOINT ["/` + name + `"]`}, changes...)
	if err := docker.ImportImage(ctx, ref, map[string][]byte{name: bin}, changes); err != nil {
		return "", err
	}
	return ref, nil
}

// SourceDir is the directory holding sact's go.mod, found from this file's compile-time
// path.
func SourceDir() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", fmt.Errorf("cannot tell where sact's source is")
	}
	dir := filepath.Join(filepath.Dir(file), "..", "..")
	if _, err := os.Stat(filepath.Join(dir, "go.mod")); err != nil {
		return "", fmt.Errorf("sact's source is not at %s (this binary was built elsewhere): run it from a checkout with `go run ./cmd/sact`", dir)
	}
	return dir, nil
}

// buildBinary compiles ./internal/testimage/NAME into a static, reproducible binary.
func buildBinary(ctx context.Context, name string) ([]byte, error) {
	dir, err := SourceDir()
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "sact-"+name+"-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	out := filepath.Join(tmp, name)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w -buildid=", "-o", out, "./internal/testimage/"+name)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux")
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("go build: %v: %s", err, b)
	}
	return os.ReadFile(out)
}
