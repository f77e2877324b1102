package main

import (
	"os/exec"
	"slices"
	"strings"
	"testing"
)

const module = "github.com/sact-project/sact"

// TestDependencies keeps the seams: the packages that decide (the activator, config) and
// move bytes (the front door, the proxy) never learn Docker, whose client lives in
// backend/docker only (issue 13); and the release binary does not carry the test images'
// builder, which needs sact's source tree and the Go toolchain.
func TestDependencies(t *testing.T) {
	dockerClient := func(dep string) bool {
		return strings.HasPrefix(dep, "github.com/moby/moby/") || strings.HasPrefix(dep, "github.com/docker/docker/")
	}
	for _, pkg := range []string{"internal/activator", "internal/config", "internal/front", "internal/proxy", "internal/relay", "internal/events", "internal/handoff", "internal/handoff/host", "internal/daemon"} {
		for _, dep := range deps(t, pkg) {
			if dockerClient(dep) {
				t.Errorf("%s imports the Docker client (%s); only internal/backend/docker may", pkg, dep)
			}
		}
	}
	main := deps(t, "cmd/sact")
	if slices.Contains(main, module+"/internal/testimage") {
		t.Errorf("the sact binary links internal/testimage, the test images' builder")
	}
	if !slices.ContainsFunc(main, dockerClient) {
		t.Errorf("the sact binary does not link the Docker client: the test looks for the wrong module")
	}
}

// deps returns what `go list -deps` lists for the module's package pkg.
func deps(t *testing.T, pkg string) []string {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", module+"/"+pkg).Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", pkg, err)
	}
	return strings.Fields(string(out))
}
