package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

// Every command has `sact help COMMAND`: its syntax, what it does, and its flags, on
// stdout, exit 0; shim's is printed without running it.
func TestHelpPerCommand(t *testing.T) {
	for name, cmd := range commands {
		t.Run(name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			if code := Run(context.Background(), []string{"help", name}, &out, &errOut); code != 0 {
				t.Fatalf("exit %d: %s", code, errOut.String())
			}
			syntax, what := splitUsage(cmd.usage)
			if !strings.HasPrefix(out.String(), "usage: sact "+syntax+"\n\n"+what) {
				t.Errorf("help %s:\n%s", name, out.String())
			}
			if strings.Contains(cmd.usage, "[-c FILE]") && !strings.Contains(out.String(), "\nflags:\n  -c string") {
				t.Errorf("help %s does not list its flags:\n%s", name, out.String())
			}
		})
	}
	var out, errOut bytes.Buffer
	if code := Run(context.Background(), []string{"help", "nope"}, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), `unknown command "nope"`) {
		t.Errorf("help of an unknown command: exit %d, %q", code, errOut.String())
	}
}

// Under systemd, sact restart says to use systemctl instead of signalling a sact that
// would refuse to re-execute itself.
func TestRestartUnderSystemd(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("NOTIFY_SOCKET", "/nonexistent")
	if err := writePidFile(dir); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := Run(context.Background(), []string{"restart", "-run-dir", dir}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "systemctl restart sact") {
		t.Errorf("sact restart under systemd: exit %d, %q; want 1 and the systemctl command", code, errOut.String())
	}
	if pid, err := readPid(dir + "/" + pidFileName); err != nil || pid <= 0 {
		t.Errorf("readPid of a systemd pid file: %d, %v", pid, err)
	}
}

// A stale pid file naming another process is not signalled.
func TestRestartStalePidFile(t *testing.T) {
	dir := t.TempDir()
	t.Setenv("NOTIFY_SOCKET", "")
	if err := writePidFile(dir); err != nil { // this test binary: not `sact serve`
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	code := Run(context.Background(), []string{"restart", "-run-dir", dir}, &out, &errOut)
	if code != 1 || !strings.Contains(errOut.String(), "is not a running `sact serve`") {
		t.Errorf("sact restart with a stale pid file: exit %d, %q", code, errOut.String())
	}
}
