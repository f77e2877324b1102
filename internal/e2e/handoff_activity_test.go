package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
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

// A handoff app busy with a request every 1.5 s for 30 s, with idle: 5s, is started once
// and kept; after the last request it stops within idle plus one sampling period (and
// the time a stop takes to be logged). Over TCP and over a unix socket, with a new
// connection per request that the client closes (issue 12: on sock_diag alone the app
// was stopped every 5 s), and with one kept-alive connection that then stays open and
// silent, as in nginx's pool: that must not keep the app forever. The same in proxy
// mode, where sact relays every byte.
func TestHandoffBusyAppIsKept(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, handoff := range []bool{true, false} {
		t.Run(map[bool]string{true: "handoff", false: "proxy"}[handoff], func(t *testing.T) {
			t.Parallel()
			testBusyAppIsKept(t, handoff)
		})
	}
}

// proxyConfig is an app of the test image that sact relays to, on TCP and unix.
func proxyConfig(name, tcp, unixPath string) string {
	return fmt.Sprintf(`
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s", "unix:%[4]s"]
    port: 8080
    idle: 2s
    stop_timeout: 2s
`, name, testImage, tcp, unixPath)
}

func testBusyAppIsKept(t *testing.T, handoff bool) {
	const idle, every, span = 5 * time.Second, 1500 * time.Millisecond, 30 * time.Second
	period := min(max(idle/10, 100*time.Millisecond), time.Second)
	type tcase struct {
		label, network, app, addr string
		keepAlive                 bool
	}
	dir := t.TempDir()
	var cases []tcase
	cfg := "apps:\n"
	for _, network := range []string{"tcp", "unix"} {
		for _, keepAlive := range []bool{false, true} {
			tc := tcase{label: network + "/short", network: network, keepAlive: keepAlive}
			if keepAlive {
				tc.label = network + "/keep-alive"
			}
			tc.app = uniqueName(t, "hbusy")
			tcp, sock := freeAddr(t), filepath.Join(dir, tc.app+".sock")
			tc.addr = tcp
			if network == "unix" {
				tc.addr = sock
			}
			if handoff {
				cfg += strings.TrimPrefix(handoffConfig(tc.app, tcp, sock, ""), "apps:\n")
			} else {
				cfg += strings.TrimPrefix(proxyConfig(tc.app, tcp, sock), "\n")
			}
			cases = append(cases, tc)
		}
	}
	cfg = strings.ReplaceAll(cfg, "idle: 2s", fmt.Sprintf("idle: %v", idle))
	d := startSact(t, cfg)

	var wg sync.WaitGroup
	for _, tc := range cases {
		wg.Go(func() {
			var ka net.Conn // the kept-alive connection
			var kr *bufio.Reader
			request := func() error {
				if !tc.keepAlive {
					return shortRequest(tc.network, tc.addr)
				}
				if ka == nil {
					c, err := net.DialTimeout(tc.network, tc.addr, 10*time.Second)
					if err != nil {
						return err
					}
					ka, kr = c, bufio.NewReader(c)
				}
				return keptAliveRequest(ka, kr)
			}
			defer func() {
				if ka != nil {
					ka.Close()
				}
			}()
			var last time.Time
			n := 0
			for start := time.Now(); time.Since(start) < span; time.Sleep(every) {
				if err := request(); err != nil {
					t.Errorf("%s: request: %v", tc.label, err)
					return
				}
				last = time.Now()
				if n++; n == 3 {
					// The status shows a connection the app accepted itself.
					if !tc.keepAlive {
						c, err := net.Dial(tc.network, tc.addr)
						if err != nil {
							t.Errorf("%s: %v", tc.label, err)
							return
						}
						defer c.Close()
					}
					time.Sleep(3 * period)
					if st := handoffStatus(t, d, tc.app); st.Open != 1 {
						t.Errorf("%s: status shows %d open connections, want 1: %+v", tc.label, st.Open, st)
					}
				}
			}
			if n := d.countLog(`"msg":"app ready"&&` + tc.app); n != 1 {
				t.Errorf("%s: %d cold starts in %v of a request every %v (idle %v), want 1", tc.label, n, span, every, idle)
			}
			time.Sleep(2 * period)
			st := handoffStatus(t, d, tc.app)
			if want := map[bool]int{false: n, true: 1}[tc.keepAlive]; st.Total < want {
				t.Errorf("%s: status shows %d connections in all, want at least %d", tc.label, st.Total, want)
			}
			if st.LastActivity == nil || st.LastActivity.Before(last.Add(-every)) || st.LastActivity.After(last.Add(2*period)) {
				t.Errorf("%s: status shows last activity %v; the last request ended at %v", tc.label, st.LastActivity, last)
			}
			stops := `"msg":"stopping app"&&"reason":"idle"&&` + tc.app
			for d.countLog(stops) == 0 && time.Since(last) < idle+10*time.Second {
				time.Sleep(20 * time.Millisecond)
			}
			took := time.Since(last)
			if d.countLog(stops) == 0 {
				t.Errorf("%s: not stopped %v after the last request", tc.label, took)
				return
			}
			t.Logf("%s: stopping %v after the last request", tc.label, took)
			if limit := idle + period + time.Second; took > limit {
				t.Errorf("%s: stopping %v after the last request, want within %v (idle + one sampling period + 1s to log it)", tc.label, took, limit)
			}
			if took < idle-100*time.Millisecond {
				t.Errorf("%s: stopping %v after the last request, want idle (%v) at least", tc.label, took, idle)
			}
		})
	}
	wg.Wait()
}

// keptAliveRequest makes one HTTP/1.1 request on c, which stays open.
func keptAliveRequest(c net.Conn, r *bufio.Reader) error {
	c.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: sact\r\n\r\n"); err != nil {
		return err
	}
	resp, err := http.ReadResponse(r, nil)
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

// The issue's own setup: the Rack/unicorn example behind real nginx (its keep-alive
// upstream pool), handed off and relayed, over a unix socket and over TCP. A request
// every 1.5 s for 30 s with idle: 5s gives one cold start, and the app stops within idle
// plus one sampling period of the last request (issue 12: 5-9 cold starts in 30 s).
func TestUnicornBehindNginxIsKept(t *testing.T) {
	t.Parallel()
	image := needRack(t)
	needTool(t, "nginx")
	const idle, every, span = 5 * time.Second, 1500 * time.Millisecond, 30 * time.Second
	period := min(max(idle/10, 100*time.Millisecond), time.Second)
	for _, mode := range []string{"handoff", "proxy"} {
		t.Run(mode, func(t *testing.T) {
			t.Parallel()
			dir := t.TempDir()
			type tcase struct{ network, app, listen, server string }
			var cases []tcase
			cfg := "apps:\n"
			for _, network := range []string{"unix", "tcp"} {
				tc := tcase{network: network, app: uniqueName(t, "rackbusy")}
				if network == "unix" {
					sock := filepath.Join(dir, tc.app+".sock")
					tc.listen, tc.server = fmt.Sprintf("{address: %q, mode: \"0666\"}", "unix:"+sock), "unix:"+sock
				} else {
					addr := freeAddr(t)
					tc.listen, tc.server = fmt.Sprintf("%q", "tcp:"+addr), addr
				}
				if mode == "handoff" {
					cfg += fmt.Sprintf(`  %[1]s:
    image: %[2]s
    user: "1001"
    network: none
    handoff: true
    listen: [%[3]s]
    idle: %[4]v
    stop_timeout: 5s
`, tc.app, image, tc.listen, idle)
				} else {
					tmp := filepath.Join(dir, tc.app)
					for _, sub := range []string{"sockets", "pids"} {
						os.MkdirAll(filepath.Join(tmp, sub), 0o777)
						os.Chmod(filepath.Join(tmp, sub), 0o777)
					}
					cfg += fmt.Sprintf(`  %[1]s:
    image: %[2]s
    user: "1001"
    volumes: ["%[5]s:/app/tmp"]
    env: {SOCKET_FILE: /app/tmp/sockets/unicorn.sock}
    listen: [%[3]s]
    upstream: unix:%[5]s/sockets/unicorn.sock
    idle: %[4]v
    stop_timeout: 5s
`, tc.app, image, tc.listen, idle, tmp)
				}
				cases = append(cases, tc)
			}
			d := startSact(t, cfg)
			var wg sync.WaitGroup
			for _, tc := range cases {
				front := startNginxTo(t, tc.server)
				wg.Go(func() {
					var last time.Time
					for start := time.Now(); time.Since(start) < span; time.Sleep(every) {
						body, err := httpGet(front, "/")
						if err != nil || !strings.Contains(body, "Simple app for test") {
							t.Errorf("%s: request through nginx: %q, %v", tc.network, body, err)
							return
						}
						last = time.Now()
					}
					if n := d.countLog(`"msg":"app ready"&&` + tc.app); n != 1 {
						t.Errorf("%s: %d cold starts in %v of a request every %v (idle %v), want 1", tc.network, n, span, every, idle)
					}
					stops := `"msg":"stopping app"&&"reason":"idle"&&` + tc.app
					before := d.countLog(stops)
					for d.countLog(stops) == before && time.Since(last) < idle+15*time.Second {
						time.Sleep(20 * time.Millisecond)
					}
					took := time.Since(last)
					if d.countLog(stops) == before {
						t.Errorf("%s: not stopped %v after the last request, with nginx's pool open", tc.network, took)
						return
					}
					t.Logf("%s: stopping %v after the last request", tc.network, took)
					if limit := idle + period + time.Second; took > limit || took < idle-100*time.Millisecond {
						t.Errorf("%s: stopping %v after the last request, want between %v and %v", tc.network, took, idle, limit)
					}
				})
			}
			wg.Wait()
		})
	}
}
