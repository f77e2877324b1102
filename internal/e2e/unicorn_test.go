package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

var (
	rackOnce  sync.Once
	rackImage string
	rackErr   error
)

// needRack returns the Rack/unicorn example's image, built offline from Debian's packages
// on first use (about 90 s) and cached by content hash.
func needRack(t *testing.T) string {
	t.Helper()
	needDocker(t)
	rackOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		rackImage, rackErr = testimage.RackUnicorn(ctx)
	})
	if rackErr != nil {
		if required() {
			t.Fatalf("building the unicorn image: %v", rackErr)
		}
		t.Skipf("cannot build the unicorn image: %v", rackErr)
	}
	return rackImage
}

// The classic setup sact replaces, both ways: relayed to unicorn's own socket in the
// app's mounted tmp/, and with sact's socket handed to unicorn (LISTEN_FDS).
func TestRackUnicorn(t *testing.T) {
	t.Parallel()
	image := needRack(t)
	tests := []struct {
		mode   string
		config func(name, listen, tmp string) string
	}{
		{"proxy", func(name, listen, tmp string) string {
			return fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    user: "1001"
    volumes: ["%[3]s:/app/tmp"]
    env: {SOCKET_FILE: /app/tmp/sockets/unicorn.sock}
    listen: ["unix:%[4]s"]
    upstream: unix:%[3]s/sockets/unicorn.sock
    idle: 3s
    stop_timeout: 5s
`, name, image, tmp, listen)
		}},
		{"handoff", func(name, listen, tmp string) string {
			return fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    user: "1001"
    network: none
    handoff: true
    listen: ["unix:%[3]s"]
    idle: 3s
    stop_timeout: 5s
`, name, image, listen)
		}},
	}
	for _, tt := range tests {
		t.Run(tt.mode, func(t *testing.T) {
			name := uniqueName(t, "rack-"+tt.mode)
			dir := t.TempDir()
			tmp := filepath.Join(dir, "tmp")
			for _, sub := range []string{"sockets", "pids"} {
				os.MkdirAll(filepath.Join(tmp, sub), 0o777)
				os.Chmod(filepath.Join(tmp, sub), 0o777)
			}
			listen := filepath.Join(dir, "rack.sock")
			d := startSact(t, tt.config(name, listen, tmp))

			// Cold, with a burst: one start, every client answered.
			burst(t, 20, []string{listen}, "Simple app for test")
			rec := d.waitLog(`"msg":"app ready"&&`+name, time.Second)
			t.Logf("%s cold start: %v", tt.mode, rec["duration"])
			if n := d.awaitCount(`"msg":"app ready"&&`+name, 1); n != 1 {
				t.Errorf("%d starts, want 1", n)
			}
			if u := docker(t, "inspect", "-f", "{{.Config.User}}", "sact-"+name); u != "1001" {
				t.Errorf("container user %q, want 1001", u)
			}
			if tt.mode == "handoff" {
				logs := docker(t, "logs", "sact-"+name)
				if !strings.Contains(logs, "inherited addr="+listen) {
					t.Errorf("unicorn did not take the inherited socket; its log:\n%s", logs)
				}
			}
			d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
			if body, err := httpGet(listen, "/"); err != nil || !strings.Contains(body, "Simple app for test") {
				t.Errorf("second cold start: %q, %v", body, err)
			}
		})
	}
}
