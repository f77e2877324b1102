package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// sact check says how handoff apps will be judged idle here: by the kernel's count of
// every connection, or from sock_diag snapshots, and why (issue 12).
func TestCheckSaysHowHandoffIsJudged(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sact.yaml")
	cfg := "apps:\n  web:\n    image: nginx\n    handoff: true\n    listen: [\"tcp:127.0.0.1:18099\"]\n"
	if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"check", "-c", path, "-labels", ""}, &out, &errOut); code != 0 {
		t.Fatalf("sact check: exit %d\n%s%s", code, out.String(), errOut.String())
	}
	got := out.String()
	want := "note: handoff apps will be judged idle from sock_diag snapshots"
	if os.Geteuid() == 0 {
		want = "handoff: every connection and byte of handoff apps is counted in the kernel"
	}
	if !strings.Contains(got, want) {
		t.Errorf("sact check said:\n%s\nwant a line with %q", got, want)
	}
	// Without a handoff app, nothing is said about it.
	os.WriteFile(path, []byte(strings.Replace(cfg, "    handoff: true\n", "    port: 80\n", 1)), 0o644)
	out.Reset()
	Run(context.Background(), []string{"check", "-c", path, "-labels", ""}, &out, &errOut)
	if strings.Contains(out.String(), "handoff") {
		t.Errorf("sact check without handoff apps:\n%s", out.String())
	}
}
