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
	h := holdSocket(t, name)
	loop := clientLoop(t, h.addr, 4, 20*time.Millisecond)
	cmd, _ := h.launch(t)
	for range 3 {
		time.Sleep(2 * time.Second)
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		time.Sleep(300 * time.Millisecond) // no sact at all for a while
		cmd, _ = h.launch(t)
	}
	time.Sleep(2 * time.Second)
	ok, failed := loop.stop()
	t.Logf("%d requests served across 3 restarts, %d failed", ok, failed)
	if failed != 0 || ok < 50 {
		t.Errorf("%d failed requests (of %d) across restarts of sact; want none", failed, ok+failed)
	}
}

// heldSocket plays systemd's .socket unit for one app: the test owns its listening
// socket, and launch runs `sact serve` with it as fd 3, LISTEN_FDS, LISTEN_PID (the pid
// that execs sact) and LISTEN_FDNAMES naming the app.
type heldSocket struct {
	name, addr, config string
	f                  *os.File
}

func holdSocket(t *testing.T, name string) *heldSocket {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	addr := ln.Addr().String()
	return &heldSocket{name: name, addr: addr, f: f, config: writeConfig(t, "apps:"+appConfig(name, addr, "")+"    idle: 5m\n")}
}

func (h *heldSocket) launch(t *testing.T) (*exec.Cmd, *logBuffer) {
	cmd := exec.Command("/bin/sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=`+h.name+` exec "$0" "$@"`,
		sactBin, "serve", "-c", h.config, "-run-dir", runDirFor(t, h.config), "-log-format", "json", "-labels", labelSelector)
	cmd.ExtraFiles = []*os.File{h.f}
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	return cmd, logs
}

// loop is clients sending GET / in a loop until stop.
type loop struct {
	ok, failed atomic.Int64
	done       chan struct{}
	wg         sync.WaitGroup
}

func clientLoop(t *testing.T, addr string, clients int, pause time.Duration) *loop {
	l := &loop{done: make(chan struct{})}
	for range clients {
		l.wg.Go(func() {
			for {
				select {
				case <-l.done:
					return
				default:
				}
				if _, err := httpGetTimeout(addr, "/", 30*time.Second); err != nil {
					l.failed.Add(1)
					t.Logf("request failed: %v", err)
				} else {
					l.ok.Add(1)
				}
				time.Sleep(pause)
			}
		})
	}
	return l
}

// stop ends the loop and returns how many requests were served and failed.
func (l *loop) stop() (ok, failed int64) {
	close(l.done)
	l.wg.Wait()
	return l.ok.Load(), l.failed.Load()
}
