package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// required reports whether a test must fail, not skip, when something it needs is
// missing: in CI (CI=true, as .ci/run sets) or with SACT_REQUIRE_DOCKER=1, so that a
// missing tool can never pass for green.
func required() bool {
	return os.Getenv("SACT_REQUIRE_DOCKER") == "1" || os.Getenv("CI") == "true"
}

// toolDirs are searched after $PATH: Debian puts nginx and debootstrap in /usr/sbin,
// which a non-root user's $PATH often lacks, and systemd's helpers in /lib/systemd.
var toolDirs = []string{"/usr/sbin", "/sbin", "/usr/lib/systemd", "/lib/systemd"}

// needTool returns the path of the first of names found, or skips the test naming the
// tool and the command that installs it; under required() it fails the test instead.
func needTool(t *testing.T, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
		for _, d := range toolDirs {
			p := filepath.Join(d, n)
			if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode().Perm()&0o111 != 0 {
				return p
			}
		}
	}
	if required() {
		t.Fatalf("%s is required (CI or SACT_REQUIRE_DOCKER=1) but not installed: install it with `sudo scripts/install-deps`", names[0])
	}
	t.Skipf("%s is not installed (`sudo scripts/install-deps` installs it)", names[0])
	return ""
}
