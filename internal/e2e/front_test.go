package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// frontClient sends every request to the front door at addr (tcp host:port or a unix
// socket path), whatever the URL's host.
func frontClient(addr string) *http.Client {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	return &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

type reply struct {
	status int
	header http.Header
	body   string
}

func do(t *testing.T, c *http.Client, method, url string, hdr map[string]string) reply {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the body: %v", method, url, err)
	}
	return reply{resp.StatusCode, resp.Header, string(b)}
}

// frontApp is a test image app served by the front door only.
func frontApp(name, hosts, extra, env string) string {
	return fmt.Sprintf(`
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"%[5]s}
    hosts: %[3]s
    port: 8080
    idle: 30s
    stop_timeout: 2s
%[4]s`, name, testImage, hosts, extra, env)
}

func TestFrontDoor(t *testing.T) {
	needDocker(t)
	exact, wild, prefixed := uniqueName(t, "fexact"), uniqueName(t, "fwild"), uniqueName(t, "fprefix")
	tcp, sock := freeAddr(t), filepath.Join(t.TempDir(), "front.sock")
	var cfg strings.Builder
	fmt.Fprintf(&cfg, "http:\n  listen: [\"tcp:%s\", \"unix:%s\"]\n  trusted_proxies: [\"10.9.0.0/16\"]\napps:", tcp, sock)
	cfg.WriteString(frontApp(exact, `["a.test"]`, "", ""))
	cfg.WriteString(frontApp(wild, `["*.wild.test"]`, "", ""))
	cfg.WriteString(frontApp(prefixed, `["p.test/api"]`, "", ""))
	// A routing table of a thousand hosts, all asleep: none may start.
	for i := range 1000 {
		fmt.Fprintf(&cfg, "\n  idle-%d:\n    image: %s\n    hosts: [\"idle-%d.test\", \"*.idle-%d.test\"]\n    port: 8080\n", i, testImage, i, i)
	}
	d := startSact(t, cfg.String())
	c := frontClient(tcp)

	// Unknown hosts: 404, nothing started.
	for _, host := range []string{"nope.test", "wild.test", "p.test", "x.a.test"} {
		r := do(t, c, "GET", "http://"+host+"/", nil)
		if r.status != 404 || !strings.Contains(r.body, "no app") {
			t.Errorf("%s: %d %q, want 404 naming no app", host, r.status, r.body)
		}
	}
	if n := d.countLog(`"msg":"starting app"`); n != 0 {
		t.Fatalf("%d apps started for unknown hosts", n)
	}

	// Routed by exact host, wildcard and path prefix; the cold one says so.
	tests := []struct{ url, app string }{
		{"http://a.test/", exact},
		{"http://A.Test:8080/", exact},
		{"http://x.wild.test/", wild},
		{"http://deep.x.wild.test/", wild},
		{"http://p.test/api", prefixed},
		{"http://p.test/api/v1", prefixed},
	}
	for i, tt := range tests {
		r := do(t, c, "GET", tt.url, nil)
		if r.status != 200 || !strings.Contains(r.body, "hello from "+tt.app) {
			t.Errorf("%s: %d %q, want app %s", tt.url, r.status, r.body, tt.app)
		}
		cold := r.header.Get("X-Sact-Cold-Start")
		if first := i == 0 || i == 2 || i == 4; first != (cold != "") {
			t.Errorf("%s: X-Sact-Cold-Start %q, want it only on a cold start", tt.url, cold)
		}
	}
	if r := do(t, c, "GET", "http://p.test/apis", nil); r.status != 404 {
		t.Errorf("p.test/apis: %d, want 404 (a prefix matches whole path segments)", r.status)
	}
	if n := d.awaitCount(`"msg":"starting app"&&"path":"/"`, 2); n != 2 {
		t.Errorf("%d starts logged with the waking path /, want 2", n)
	}

	// X-Forwarded-*: set for an untrusted client (its own forged ones dropped), extended
	// for a unix socket peer (nginx on the host).
	var h struct {
		Host   string
		Header map[string][]string
	}
	r := do(t, c, "GET", "http://a.test/headers", map[string]string{"X-Forwarded-For": "6.6.6.6", "X-Forwarded-Proto": "https"})
	json.Unmarshal([]byte(r.body), &h)
	if h.Host != "a.test" || fmt.Sprint(h.Header["X-Forwarded-For"]) != "[127.0.0.1]" || fmt.Sprint(h.Header["X-Forwarded-Proto"]) != "[http]" || fmt.Sprint(h.Header["X-Forwarded-Host"]) != "[a.test]" {
		t.Errorf("untrusted client: upstream saw host %q headers %v", h.Host, h.Header)
	}
	r = do(t, frontClient(sock), "GET", "http://a.test/headers", map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
	json.Unmarshal([]byte(r.body), &h)
	if fmt.Sprint(h.Header["X-Forwarded-For"]) != "[203.0.113.7]" || fmt.Sprint(h.Header["X-Forwarded-Proto"]) != "[https]" {
		t.Errorf("trusted unix peer: upstream saw %v", h.Header)
	}

	// A 50 MB download arrives whole; server-sent events arrive as they are sent.
	r = do(t, c, "GET", "http://a.test/bytes?n=52428800", nil)
	if r.status != 200 || len(r.body) != 52428800 {
		t.Errorf("download: %d, %d bytes, want 52428800", r.status, len(r.body))
	}
	resp, err := c.Get("http://a.test/sse?n=3&every=700ms")
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	buf := make([]byte, 64)
	n, _ := resp.Body.Read(buf)
	if took := time.Since(began); !strings.HasPrefix(string(buf[:n]), "data: 0") || took > 500*time.Millisecond {
		t.Errorf("first event %q after %v: events are buffered instead of streamed", buf[:n], took)
	}
	resp.Body.Close()

	// A websocket through the front door.
	dialer := websocket.Dialer{NetDial: func(_, _ string) (net.Conn, error) { return net.Dial("tcp", tcp) }}
	ws, _, err := dialer.Dial("ws://x.wild.test/ws", nil)
	if err != nil {
		t.Fatalf("websocket: %v", err)
	}
	defer ws.Close()
	for i := range 3 {
		msg := fmt.Sprintf("ping %d", i)
		if err := ws.WriteMessage(websocket.TextMessage, []byte(msg)); err != nil {
			t.Fatal(err)
		}
		_, got, err := ws.ReadMessage()
		if err != nil || string(got) != msg {
			t.Fatalf("websocket echo: %q, %v", got, err)
		}
	}
	if n := d.countLog(`"msg":"starting app"&&idle-`); n != 0 {
		t.Errorf("%d of the thousand sleeping apps started", n)
	}
}

// While an app sleeps, crawlers, monitors, robots.txt, favicon and status checks are
// answered without starting it.
func TestFrontDoorQuiet(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "fquiet")
	tcp := freeAddr(t)
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", tcp)+frontApp(name, `["q.test"]`, "", ""))
	c := frontClient(tcp)
	checks := []struct {
		path, ua   string
		wantStatus int
		wantBody   string
	}{
		{"/robots.txt", "", 200, "Disallow: /"},
		{"/favicon.ico", "", 204, ""},
		{"/", "Mozilla/5.0 (compatible; Googlebot/2.1)", 503, "dormant"},
		{"/", "UptimeRobot/2.0", 503, "dormant"},
		{"/.sact/status", "", 200, `"state":"dormant"`},
	}
	for _, ch := range checks {
		r := do(t, c, "GET", "http://q.test"+ch.path, map[string]string{"User-Agent": ch.ua})
		if r.status != ch.wantStatus || !strings.Contains(r.body, ch.wantBody) {
			t.Errorf("%s (%s): %d %q, want %d with %q", ch.path, ch.ua, r.status, r.body, ch.wantStatus, ch.wantBody)
		}
		if ch.wantStatus == 503 && r.header.Get("Retry-After") == "" {
			t.Errorf("%s (%s): 503 without Retry-After", ch.path, ch.ua)
		}
	}
	if n := d.countLog(`"msg":"starting app"&&` + name); n != 0 {
		t.Fatalf("quiet requests started the app")
	}
	if r := do(t, c, "GET", "http://q.test/", nil); r.status != 200 {
		t.Fatalf("a person's request: %d %q", r.status, r.body)
	}
	// Running now: status says so, and robots.txt is the app's own.
	if r := do(t, c, "GET", "http://q.test/.sact/status", nil); !strings.Contains(r.body, `"state":"running"`) {
		t.Errorf("status of a running app: %q", r.body)
	}
	if r := do(t, c, "GET", "http://q.test/robots.txt", nil); strings.Contains(r.body, "Disallow") {
		t.Errorf("robots.txt of a running app answered by sact: %q", r.body)
	}
}

// A slow cold start: browsers get a self-refreshing page after waking_page, API clients
// wait for the real answer; broken apps give 502 and 504 with the app's name.
func TestFrontDoorColdAndBroken(t *testing.T) {
	needDocker(t)
	slow, broken, never := uniqueName(t, "fslow"), uniqueName(t, "fbroken"), uniqueName(t, "fnever")
	tcp := freeAddr(t)
	cfg := fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", tcp) +
		frontApp(slow, `["slow.test"]`, "    waking_page: 300ms\n", `, READY_DELAY: "3s"`) +
		frontApp(broken, `["broken.test"]`, "", `, EXIT_CODE: "5"`) +
		frontApp(never, `["never.test"]`, "    start_timeout: 2s\n", `, NEVER_READY: "1"`)
	d := startSact(t, cfg)
	c := frontClient(tcp)

	began := time.Now()
	r := do(t, c, "GET", "http://slow.test/", map[string]string{"Accept": "text/html,application/xhtml+xml"})
	if r.status != 503 || !strings.Contains(r.body, `http-equiv="refresh"`) || time.Since(began) > 2*time.Second {
		t.Errorf("browser during a slow start: %d after %v, body %q; want the waking page soon", r.status, time.Since(began), r.body)
	}
	r = do(t, c, "GET", "http://slow.test/", map[string]string{"Accept": "application/json"})
	if r.status != 200 || !strings.Contains(r.body, "hello from "+slow) {
		t.Errorf("API client during a slow start: %d %q; want it to wait for the answer", r.status, r.body)
	}
	if n := d.awaitCount(`"msg":"app ready"&&`+slow, 1); n != 1 {
		t.Errorf("%d starts of the slow app, want 1", n)
	}

	r = do(t, c, "GET", "http://broken.test/", nil)
	if r.status != 502 || !strings.Contains(r.body, broken) || !strings.Contains(r.body, "exit code 5") {
		t.Errorf("app that exits: %d %q, want 502 naming the app and its exit", r.status, r.body)
	}
	r = do(t, c, "GET", "http://never.test/", nil)
	if r.status != 504 || !strings.Contains(r.body, never) {
		t.Errorf("app never ready: %d %q, want 504 naming the app", r.status, r.body)
	}
	d.waitLog(`"msg":"request failed"&&`+never+`&&"status":504`, time.Second)
}

// Debian's nginx in front of the front door's unix socket, as users would put it.
func TestFrontDoorBehindNginx(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "fnginx")
	sock := filepath.Join(t.TempDir(), "front.sock")
	startSact(t, fmt.Sprintf("http:\n  listen: [\"unix:%s\"]\napps:", sock)+frontApp(name, `["site.test"]`, "", ""))
	front := startNginx(t, sock)
	r := do(t, frontClient(front), "GET", "http://site.test/headers", nil)
	var h struct {
		Host   string
		Header map[string][]string
	}
	json.Unmarshal([]byte(r.body), &h)
	if r.status != 200 || h.Host != "site.test" || fmt.Sprint(h.Header["X-Forwarded-For"]) != "[127.0.0.1]" {
		t.Errorf("through nginx: %d host %q headers %v", r.status, h.Host, h.Header)
	}
	if r := do(t, frontClient(front), "GET", "http://other.test/", nil); r.status != 404 {
		t.Errorf("unknown host through nginx: %d", r.status)
	}
}
