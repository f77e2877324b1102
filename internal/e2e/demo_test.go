package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"
)

// The README's first command: `sact demo` builds its image offline, shows a cold start and
// an idle stop, and exits with -once. It must not need root (its runtime files go to a
// temp dir) nor collide with a sact already serving on this host.
func TestDemo(t *testing.T) {
	needDocker(t)
	exec.Command("docker", "rm", "-f", "sact-hello").Run()
	t.Cleanup(func() { exec.Command("docker", "rm", "-f", "sact-hello").Run() })
	cmd := exec.Command(sactBin, "demo", "-once", "-idle", "2s", "-listen", freeAddr(t))
	done := make(chan struct{})
	var out []byte
	var err error
	go func() { out, err = cmd.CombinedOutput(); close(done) }()
	select {
	case <-done:
	case <-time.After(2 * time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatalf("demo did not finish:\n%s", out)
	}
	if err != nil {
		t.Fatalf("sact demo: %v\n%s", err, out)
	}
	for _, want := range []string{`-> "hello from hello`, `msg="starting app"`, `msg="stopped app" app=hello reason=idle`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("demo output lacks %q:\n%s", want, out)
		}
	}
}
