package e2e

import (
	"net"
	"os"
	"os/exec"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// sact restarted while its socket is held for it, as systemd holds a .socket unit's:
// clients loop throughout and none is refused, since connections wait in the backlog
// while no sact runs. The test plays systemd: it owns the listening socket and passes it
// to each sact as fd 3 with LISTEN_FDS, LISTEN_PID (the pid that execs sact) and
// LISTEN_FDNAMES naming the app.
func TestRestartOnInheritedSocketRefusesNothing(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "sdrestart")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	addr := ln.Addr().String()
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cfgPath := writeConfig(t, "apps:"+appConfig(name, addr, "")+"    idle: 5m\n")

	launch := func() *exec.Cmd {
		cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=`+name+` exec "$0" "$@"`,
			sactBin, "serve", "-c", cfgPath, "-run-dir", runDirFor(t, cfgPath), "-log-format", "json", "-labels", labelSelector)
		cmd.ExtraFiles = []*os.File{f}
		logs := &logBuffer{}
		cmd.Stdout, cmd.Stderr = logs, logs
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}

	var ok, failed atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := httpGetTimeout(addr, "/", 30*time.Second); err != nil {
					failed.Add(1)
					t.Logf("request failed: %v", err)
				} else {
					ok.Add(1)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
	cmd := launch()
	for range 3 {
		time.Sleep(2 * time.Second)
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		time.Sleep(300 * time.Millisecond) // no sact at all for a while
		cmd = launch()
	}
	time.Sleep(2 * time.Second)
	close(stop)
	wg.Wait()
	t.Logf("%d requests served across 3 restarts, %d failed", ok.Load(), failed.Load())
	if failed.Load() != 0 || ok.Load() < 50 {
		t.Errorf("%d failed requests (of %d) across restarts of sact; want none", failed.Load(), ok.Load()+failed.Load())
	}
}
