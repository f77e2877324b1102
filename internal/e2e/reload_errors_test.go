package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestReloadOfABrokenFileSaysWhy: `sact reload -c FILE` on a file with a YAML error, for
// a sact whose admin socket the file itself names, prints the error with its line, not
// "cannot reach sact" at the default socket; and the daemon logs every failed reload,
// whoever asked for it (issue 13).
func TestReloadOfABrokenFileSaysWhy(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "rbroken")
	sock := filepath.Join(t.TempDir(), "adm.sock")
	config := fmt.Sprintf("admin:\n  socket: %s\napps:", sock) + appConfig(name, freeAddr(t), "")
	d := startSact(t, config)

	tests := []struct {
		name, text, want string
	}{
		{"yaml syntax", config + "    idle: [unclosed\n", "sact.yaml:"},
		{"invalid value", config + "    idle: soon\n", `"soon" is not a duration`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(d.config, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := sactCLI(t, d, "reload")
			if err == nil {
				t.Fatalf("sact reload of a broken file succeeded:\n%s", out)
			}
			if strings.Contains(out, "cannot reach sact") || !strings.Contains(out, tt.want) {
				t.Errorf("sact reload said:\n%s\nwant the file's error (%q)", out, tt.want)
			}
			if n := d.awaitCount(`"msg":"config not reloaded`, i+1); n != i+1 {
				t.Errorf("%d failed reloads logged by sact, want %d", n, i+1)
			}
		})
	}
	os.WriteFile(d.config, []byte(config), 0o644)
	if out, err := sactCLI(t, d, "reload"); err != nil {
		t.Errorf("reload of the repaired file: %v\n%s", err, out)
	}
	d.waitLog(`"msg":"config reloaded"`, 5*time.Second)
}

// TestWatchdogPingsDoNotMultiplyWithReloads: sact pings systemd's watchdog at half
// WatchdogSec, from one goroutine that only pings while the daemon's loop answers; each
// reload used to start one more free-running pinger (issue 13).
func TestWatchdogPingsDoNotMultiplyWithReloads(t *testing.T) {
	needDocker(t)
	notifySock := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifySock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var pings atomic.Int64
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := conn.Read(buf)
			if err != nil {
				return
			}
			if strings.Contains(string(buf[:n]), "WATCHDOG=1") {
				pings.Add(1)
			}
		}
	}()
	path := writeConfig(t, "apps:"+appConfig(uniqueName(t, "wdog"), freeAddr(t), ""))
	d := startSactFileEnv(t, path, "NOTIFY_SOCKET="+notifySock, "WATCHDOG_USEC=400000") // a ping every 200 ms
	rate := func() int64 {
		before := pings.Load()
		time.Sleep(2 * time.Second)
		return pings.Load() - before
	}
	first := rate()
	for range 5 {
		d.cmd.Process.Signal(syscall.SIGHUP)
		time.Sleep(100 * time.Millisecond)
	}
	d.awaitCount(`"msg":"config reloaded"`, 5)
	after := rate()
	t.Logf("watchdog pings in 2 s: %d before 5 reloads, %d after", first, after)
	if first < 5 || first > 15 {
		t.Errorf("%d pings in 2 s at WatchdogSec=400ms, want about 10", first)
	}
	if after > first+3 {
		t.Errorf("%d pings in 2 s after 5 reloads, %d before: each reload added a pinger", after, first)
	}
}
