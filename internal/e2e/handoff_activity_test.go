package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// shortRequest makes one HTTP/1.1 request on a new connection and closes it as soon as
// the response is read: the client closes first, as nginx does with its keep-alive pool
// or a browser leaving, so on TCP the TIME_WAIT is on the client's side and nothing of
// the connection is left on the app's by the next look.
func shortRequest(network, addr string) error {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: sact\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != 200 {
		return fmt.Errorf("status %s", resp.Status)
	}
	return nil
}

// A handoff app busy with short connections, one every 1.5 s for 30 s with idle: 5s, is
// started once and kept; it stops within idle plus one sampling period (and the time a
// stop takes to be logged) after the last one. Over TCP and over a unix socket (issue 12:
// on sock_diag alone the app was stopped every 5 s).
func TestHandoffShortConnectionsKeepTheApp(t *testing.T) {
	needDocker(t)
	const idle, every, span = 5 * time.Second, 1500 * time.Millisecond, 30 * time.Second
	period := min(max(idle/10, 100*time.Millisecond), time.Second)
	tcpApp, unixApp := uniqueName(t, "hbusytcp"), uniqueName(t, "hbusyunix")
	dir := t.TempDir()
	tcp := freeAddr(t)
	sock := filepath.Join(dir, "unix.sock")
	cfg := handoffConfig(tcpApp, tcp, filepath.Join(dir, "tcp.sock"), "") +
		strings.TrimPrefix(handoffConfig(unixApp, freeAddr(t), sock, ""), "apps:\n")
	cfg = strings.ReplaceAll(cfg, "idle: 2s", fmt.Sprintf("idle: %v", idle))
	d := startSact(t, cfg)

	var wg sync.WaitGroup
	for _, tc := range []struct{ app, network, addr string }{
		{tcpApp, "tcp", tcp}, {unixApp, "unix", sock},
	} {
		wg.Go(func() {
			var last time.Time
			n := 0
			for start := time.Now(); time.Since(start) < span; time.Sleep(every) {
				if err := shortRequest(tc.network, tc.addr); err != nil {
					t.Errorf("%s: request: %v", tc.network, err)
					return
				}
				last = time.Now()
				if n++; n == 3 {
					// The status shows a connection the app accepted itself.
					c, err := net.Dial(tc.network, tc.addr)
					if err != nil {
						t.Errorf("%s: %v", tc.network, err)
						return
					}
					time.Sleep(3 * period)
					if st := handoffStatus(t, d, tc.app); st.Open != 1 {
						t.Errorf("%s: status shows %d open connections, want 1: %+v", tc.network, st.Open, st)
					}
					c.Close()
				}
			}
			time.Sleep(2 * period)
			st := handoffStatus(t, d, tc.app)
			if st.Total < n {
				t.Errorf("%s: status shows %d connections in all after %d, want at least %d", tc.network, st.Total, n, n)
			}
			if st.LastActivity == nil || st.LastActivity.Before(last) || st.LastActivity.After(last.Add(2*period)) {
				t.Errorf("%s: status shows last activity %v; the last request ended at %v", tc.network, st.LastActivity, last)
			}
			if n := d.countLog(`"msg":"app ready"&&` + tc.app); n != 1 {
				t.Errorf("%s: %d cold starts in %v of a request every %v (idle %v), want 1", tc.network, n, span, every, idle)
			}
			stops := `"msg":"stopping app"&&"reason":"idle"&&` + tc.app
			before := d.countLog(stops)
			for d.countLog(stops) == before && time.Since(last) < idle+10*time.Second {
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(last)
			if d.countLog(stops) == before {
				t.Errorf("%s: not stopped %v after the last request", tc.network, took)
				return
			}
			t.Logf("%s: stopping %v after the last request", tc.network, took)
			if limit := idle + period + time.Second; took > limit {
				t.Errorf("%s: stopping %v after the last request, want within %v (idle + one sampling period + 1s to log it)", tc.network, took, limit)
			}
		})
	}
	wg.Wait()
}

type appStatus struct {
	Name         string     `json:"name"`
	Open         int        `json:"open_connections"`
	Total        int        `json:"connections_total"`
	LastActivity *time.Time `json:"last_activity"`
}

// handoffStatus is app's entry in `sact status -json`.
func handoffStatus(t *testing.T, d *daemon, app string) appStatus {
	t.Helper()
	out, err := sactCLI(t, d, "status", "-json")
	if err != nil {
		t.Errorf("sact status: %v: %s", err, out)
		return appStatus{}
	}
	var list struct{ Apps []appStatus }
	if err := json.Unmarshal([]byte(out), &list); err != nil {
		t.Errorf("sact status -json: %v: %s", err, out)
	}
	for _, a := range list.Apps {
		if a.Name == app {
			return a
		}
	}
	t.Errorf("sact status shows no app %s: %s", app, out)
	return appStatus{}
}
