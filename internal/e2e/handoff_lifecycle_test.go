package e2e

import (
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestHandoffKilledFromOutsideIsNoFailure: a handoff app stopped from outside soon after
// its start (docker kill, docker restart) did not fail to boot, so its next client is not
// refused and no backoff delays the next start (issue 12: it cost 0.7 to 1.7 s).
func TestHandoffKilledFromOutsideIsNoFailure(t *testing.T) {
	needDocker(t)
	for _, how := range []string{"kill", "restart"} {
		t.Run(how, func(t *testing.T) {
			name := uniqueName(t, "hkill")
			tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "app.sock")
			d := startSact(t, handoffConfig(name, tcp, sock, ""))
			if _, err := httpGet(tcp, "/"); err != nil {
				t.Fatal(err)
			}
			docker(t, how, "sact-"+name)
			d.waitLog(`"msg":"app exited"&&`+name, 10*time.Second)
			began := time.Now()
			body, err := httpGetTimeout(tcp, "/", 20*time.Second)
			took := time.Since(began)
			if err != nil || !strings.Contains(body, "hello from "+name) {
				t.Fatalf("the request after docker %s: %q, %v", how, body, err)
			}
			t.Logf("RELIABILITY handoff app after docker %s soon after its start: next request served in %v", how, took.Round(time.Millisecond))
			if n := d.countLog("exited soon after its start&&" + name); n != 0 {
				t.Errorf("docker %s was taken for a failed boot (%d times): its clients were refused and the next start delayed", how, n)
			}
		})
	}
}
