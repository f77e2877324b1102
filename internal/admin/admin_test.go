package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sact-project/sact/internal/activator"
)

type fakeApp struct {
	mu      sync.Mutex
	name    string
	state   activator.State
	changes int
}

func (f *fakeApp) Name() string { return f.name }
func (f *fakeApp) Status() activator.Status {
	f.mu.Lock()
	defer f.mu.Unlock()
	return activator.Status{Name: f.name, State: f.state, ColdStarts: 2, Stops: map[string]int{"idle": 1}}
}
func (f *fakeApp) set(s activator.State) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = s
	f.changes++
	return nil
}
func (f *fakeApp) Start(context.Context) error   { return f.set(activator.Running) }
func (f *fakeApp) Stop(context.Context) error    { return f.set(activator.Stopped) }
func (f *fakeApp) Pause(context.Context) error   { return f.set(activator.Paused) }
func (f *fakeApp) Restart(context.Context) error { return f.set(activator.Running) }
func (f *fakeApp) changed() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.changes
}

func TestAPI(t *testing.T) {
	web := &fakeApp{name: "web"}
	s := New(Options{Apps: func() []App { return []App{web} }, Registry: prometheus.NewRegistry(),
		Token: strings.Repeat("ab", 32), TokenFile: "/var/lib/sact/admin.token"})
	overHTTP := httptest.NewServer(s.Handler(true))
	defer overHTTP.Close()
	local := httptest.NewServer(s.Handler(false))
	defer local.Close()

	post := func(base, path, bearer string) int {
		req, _ := http.NewRequest("POST", base+path, nil)
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(overHTTP.URL, "/api/apps/web/start", ""); code != 401 || web.state != activator.Stopped {
		t.Errorf("start over HTTP without a token: %d, state %v", code, web.state)
	}
	if code := post(overHTTP.URL, "/api/apps/web/start", strings.Repeat("ab", 32)); code != 200 || web.state != activator.Running {
		t.Errorf("start with the token: %d, state %v", code, web.state)
	}
	// The unix socket needs nothing, as before.
	if code := post(local.URL, "/api/apps/web/stop", ""); code != 200 || web.state != activator.Stopped {
		t.Errorf("stop on the unix socket: %d, state %v", code, web.state)
	}
	if code := post(local.URL, "/api/apps/nope/stop", ""); code != 404 {
		t.Errorf("unknown app: %d", code)
	}
	if resp, _ := http.Get(local.URL + "/api/apps/web/start"); resp.StatusCode != 405 {
		t.Errorf("GET of a change: %d, want 405", resp.StatusCode)
	}

	resp, _ := http.Get(local.URL + "/api/apps")
	var list struct{ Apps []AppStatus }
	json.NewDecoder(resp.Body).Decode(&list)
	resp.Body.Close()
	if len(list.Apps) != 1 || list.Apps[0].State != "stopped" || list.Apps[0].ColdStarts != 2 {
		t.Errorf("list: %+v", list)
	}
	resp, _ = http.Get(overHTTP.URL + "/metrics")
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`sact_stops_total{app="web",reason="idle"} 1`, `sact_app_state{app="web",state="stopped"} 1`} {
		if !strings.Contains(string(metrics), want) {
			t.Errorf("metrics lack %s", want)
		}
	}
}

// TestHTTPGuard: the checks every request over admin.listen passes (issue 11, case 2).
func TestHTTPGuard(t *testing.T) {
	token := strings.Repeat("0f", 32)
	web := &fakeApp{name: "web", state: activator.Running}
	logs := func(context.Context, string, int) (string, error) { return "secret log line\n", nil }
	s := New(Options{Apps: func() []App { return []App{web} }, Logs: logs, Registry: prometheus.NewRegistry(),
		Token: token, TokenFile: "/var/lib/sact/admin.token", Listen: "127.0.0.1:9180",
		Hosts: []string{"dash.example.com", "ops.example.com:8443"}})
	h := s.Handler(true)
	session := func() string {
		req := request("POST", "127.0.0.1:9180", "/login", "127.0.0.1:4000", map[string]string{"Origin": "http://127.0.0.1:9180"})
		req.Body = io.NopCloser(strings.NewReader(url.Values{"token": {token}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		var out struct{ Session string }
		json.Unmarshal(rec.Body.Bytes(), &out)
		if rec.Code != 200 || len(out.Session) != 64 {
			t.Fatalf("login: %d %s", rec.Code, rec.Body)
		}
		return out.Session
	}()
	bearer := map[string]string{"Authorization": "Bearer " + token}
	with := func(kv ...string) map[string]string {
		m := map[string]string{"Authorization": "Bearer " + token}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	const lo, far = "127.0.0.1:40000", "192.0.2.7:40000"
	for _, tt := range []struct {
		name, method, host, path, peer string
		header                         map[string]string
		code                           int
		body                           string // the answer contains this
		changes                        bool   // the app was started or stopped
	}{
		{name: "page on the listen address", method: "GET", host: "127.0.0.1:9180", path: "/", peer: lo, code: 200, body: "sudo cat /var/lib/sact/admin.token"},
		{name: "page on localhost", method: "GET", host: "localhost:9180", path: "/", peer: lo, code: 200},
		{name: "page on [::1]", method: "GET", host: "[::1]:9180", path: "/", peer: lo, code: 200},
		{name: "page under an admin.hosts name", method: "GET", host: "dash.example.com", path: "/", peer: far, code: 200},
		{name: "admin.hosts name without port, any port", method: "GET", host: "DASH.example.com:443", path: "/", peer: far, code: 200},
		{name: "admin.hosts name with port", method: "GET", host: "ops.example.com:8443", path: "/", peer: far, code: 200},
		{name: "admin.hosts port is kept", method: "GET", host: "ops.example.com", path: "/", peer: far, code: 421, body: "admin.hosts"},
		{name: "wrong Host", method: "GET", host: "evil.example", path: "/", peer: lo, code: 421, body: "admin.hosts"},
		{name: "DNS rebinding Host", method: "GET", host: "evil.example:9180", path: "/api/apps", peer: lo, code: 421, body: "admin.hosts"},
		{name: "DNS rebinding with the token", method: "POST", host: "evil.example:9180", path: "/api/apps/web/stop", peer: lo, header: bearer, code: 421},
		{name: "localhost on another port", method: "GET", host: "localhost:9999", path: "/", peer: lo, code: 421},
		{name: "no Host", method: "GET", host: "", path: "/", peer: lo, code: 421},
		{name: "status on loopback", method: "GET", host: "127.0.0.1:9180", path: "/api/apps", peer: lo, code: 200, body: `"web"`},
		{name: "one app on loopback", method: "GET", host: "127.0.0.1:9180", path: "/api/apps/web", peer: lo, code: 200},
		{name: "metrics on loopback", method: "GET", host: "127.0.0.1:9180", path: "/metrics", peer: lo, code: 200, body: "sact_app_state"},
		{name: "metrics on loopback IPv6", method: "GET", host: "[::1]:9180", path: "/metrics", peer: "[::1]:40000", code: 200},
		{name: "metrics from afar", method: "GET", host: "dash.example.com", path: "/metrics", peer: far, code: 401},
		{name: "metrics from afar with the token", method: "GET", host: "dash.example.com", path: "/metrics", peer: far, header: bearer, code: 200},
		{name: "status from afar", method: "GET", host: "dash.example.com", path: "/api/apps", peer: far, code: 401},
		{name: "status forwarded by a local proxy", method: "GET", host: "dash.example.com", path: "/api/apps", peer: lo, header: map[string]string{"X-Forwarded-For": "192.0.2.9"}, code: 401},
		{name: "logs without auth", method: "GET", host: "127.0.0.1:9180", path: "/api/apps/web/logs", peer: lo, code: 401, body: "/var/lib/sact/admin.token"},
		{name: "logs through an escaped slash", method: "GET", host: "127.0.0.1:9180", path: "/api/apps/web%2Flogs", peer: lo, code: 401},
		{name: "logs with the token", method: "GET", host: "127.0.0.1:9180", path: "/api/apps/web/logs", peer: lo, header: bearer, code: 200, body: "secret log line"},
		{name: "logs with a session", method: "GET", host: "127.0.0.1:9180", path: "/api/apps/web/logs", peer: lo, header: map[string]string{"X-Sact-Token": session}, code: 200},
		{name: "stop without auth", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, code: 401},
		{name: "stop with a wrong token", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"Authorization": "Bearer " + strings.Repeat("0f", 31) + "00"}, code: 401},
		{name: "stop with an empty bearer", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"Authorization": "Bearer "}, code: 401},
		{name: "stop with another scheme", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"Authorization": "Token " + token}, code: 401},
		{name: "stop with the file's token as X-Sact-Token", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"X-Sact-Token": token}, code: 401},
		{name: "stop with a made-up session", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"X-Sact-Token": strings.Repeat("1", 64)}, code: 401},
		{name: "stop with bearer", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: bearer, code: 200, changes: true},
		{name: "start with basic auth", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/start", peer: far, header: map[string]string{"Authorization": basic("anyone", token)}, code: 200, changes: true},
		{name: "start with basic auth, wrong password", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/start", peer: lo, header: map[string]string{"Authorization": basic("admin", "guess")}, code: 401},
		{name: "start with a session", method: "POST", host: "localhost:9180", path: "/api/apps/web/start", peer: lo, header: map[string]string{"X-Sact-Token": session, "Origin": "http://localhost:9180"}, code: 200, changes: true},
		{name: "cross-site Origin on POST", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: with("Origin", "http://evil.example"), code: 403, body: "admin.hosts"},
		{name: "cross-site Origin with a session", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: map[string]string{"X-Sact-Token": session, "Origin": "http://evil.example:9180"}, code: 403},
		{name: "Origin null", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: with("Origin", "null"), code: 403},
		{name: "cross-site Referer without Origin", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: with("Referer", "http://evil.example/page"), code: 403},
		{name: "same-site Origin", method: "POST", host: "127.0.0.1:9180", path: "/api/apps/web/stop", peer: lo, header: with("Origin", "http://127.0.0.1:9180"), code: 200, changes: true},
		{name: "admin.hosts Origin over https", method: "POST", host: "dash.example.com", path: "/api/apps/web/pause", peer: far, header: with("Origin", "https://dash.example.com"), code: 200, changes: true},
		{name: "reload without auth", method: "POST", host: "127.0.0.1:9180", path: "/api/reload", peer: lo, code: 401},
		{name: "login from another site", method: "POST", host: "127.0.0.1:9180", path: "/login?token=" + token, peer: lo, header: map[string]string{"Origin": "http://evil.example"}, code: 403},
		{name: "login with a wrong token", method: "POST", host: "127.0.0.1:9180", path: "/login?token=wrong", peer: lo, code: 401},
	} {
		t.Run(tt.name, func(t *testing.T) {
			before := web.changed()
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, request(tt.method, tt.host, tt.path, tt.peer, tt.header))
			if rec.Code != tt.code || !strings.Contains(rec.Body.String(), tt.body) {
				t.Errorf("%s %s (Host %q, peer %s): %d %.200q; want %d with %q", tt.method, tt.path, tt.host, tt.peer, rec.Code, rec.Body.String(), tt.code, tt.body)
			}
			if changed := web.changed() != before; changed != tt.changes {
				t.Errorf("app changed: %v, want %v", changed, tt.changes)
			}
			if strings.Contains(rec.Body.String(), token) {
				t.Errorf("the answer holds the token")
			}
		})
	}
}

func TestSessions(t *testing.T) {
	now := time.Unix(1e9, 0)
	ss := &sessions{now: func() time.Time { return now }, m: map[string]time.Time{}}
	first := ss.add()
	if !ss.valid(first) {
		t.Fatal("a new session is not valid")
	}
	now = now.Add(time.Minute)
	second := ss.add()
	for range maxSessions - 1 {
		ss.add()
	}
	if ss.valid(first) || !ss.valid(second) || len(ss.m) != maxSessions {
		t.Errorf("after %d logins: first valid %v, second valid %v, %d kept; want the oldest ended and %d kept", maxSessions+1, ss.valid(first), ss.valid(second), len(ss.m), maxSessions)
	}
	now = now.Add(sessionTTL)
	if ss.valid(second) {
		t.Errorf("a session is valid after %v", sessionTTL)
	}
	ss.remove(second)

	// Without a token nothing over HTTP authenticates: not even an empty credential.
	s := New(Options{Apps: func() []App { return nil }})
	rec := httptest.NewRecorder()
	s.Handler(true).ServeHTTP(rec, request("POST", "127.0.0.1:9180", "/login?token=", "127.0.0.1:1", nil))
	if rec.Code != 401 {
		t.Errorf("login to a server without a token: %d", rec.Code)
	}
}

// request is a request as the admin listener on 127.0.0.1:9180 receives it from peer.
func request(method, host, path, peer string, header map[string]string) *http.Request {
	req := httptest.NewRequest(method, "http://127.0.0.1:9180"+path, nil)
	req.Host = host
	req.RemoteAddr = peer
	for k, v := range header {
		req.Header.Set(k, v)
	}
	return req.WithContext(context.WithValue(req.Context(), http.LocalAddrContextKey, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 9180}))
}

func basic(user, pass string) string {
	req, _ := http.NewRequest("GET", "/", nil)
	req.SetBasicAuth(user, pass)
	return req.Header.Get("Authorization")
}

// BenchmarkHTTPGuard is what the checks cost a bearer-token request over HTTP.
func BenchmarkHTTPGuard(b *testing.B) {
	token := strings.Repeat("0f", 32)
	web := &fakeApp{name: "web"}
	s := New(Options{Apps: func() []App { return []App{web} }, Token: token, Hosts: []string{"dash.example.com"}})
	req := request("GET", "dash.example.com", "/api/apps/web", "192.0.2.7:1", map[string]string{"Authorization": "Bearer " + token})
	for _, over := range []bool{false, true} {
		h := s.Handler(over)
		b.Run(map[bool]string{false: "unix", true: "http"}[over], func(b *testing.B) {
			for b.Loop() {
				h.ServeHTTP(httptest.NewRecorder(), req)
			}
		})
	}
}

// A local user who floods the admin listener with refused requests must not flood the
// journal (which would then drop sact's other lines): a burst is logged, the rest
// counted, and the next line logged says how many it left out.
func TestRefusedRequestsFloodNoLog(t *testing.T) {
	var logs strings.Builder // ServeHTTP, called here, is the only writer
	now := time.Unix(1_800_000_000, 0)
	reg := prometheus.NewRegistry()
	s := New(Options{Apps: func() []App { return nil }, Registry: reg, Token: strings.Repeat("0f", 32),
		Listen: "127.0.0.1:9180", Logger: slog.New(slog.NewJSONHandler(&logs, nil)), Now: func() time.Time { return now }})
	h := s.Handler(true)
	refuse := func(n int) {
		for range n {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, request("POST", "127.0.0.1:9180", "/api/apps/web/stop", "127.0.0.1:4000", nil))
			if rec.Code != http.StatusUnauthorized {
				t.Fatalf("refused request answered %d", rec.Code)
			}
		}
	}
	lines := func() []string {
		var out []string
		for _, l := range strings.Split(logs.String(), "\n") {
			if strings.Contains(l, `"msg":"admin request refused"`) {
				out = append(out, l)
			}
		}
		return out
	}
	refuse(1000)
	if got := len(lines()); got != refusedBurst {
		t.Errorf("1000 refused requests made %d log lines, want %d", got, refusedBurst)
	}
	now = now.Add(refusedEvery)
	refuse(1)
	l := lines()
	if want := fmt.Sprintf(`"not_logged_before":%d`, 1000-refusedBurst); len(l) != refusedBurst+1 || !strings.Contains(l[len(l)-1], want) {
		t.Errorf("the first line after the flood: %q, want it with %s", l[len(l)-1], want)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, request("GET", "127.0.0.1:9180", "/metrics", "127.0.0.1:4000", nil))
	if want := `sact_admin_requests_refused_total{reason="no credential"} 1001`; !strings.Contains(rec.Body.String(), want) {
		t.Errorf("/metrics has not %s:\n%s", want, rec.Body)
	}
}
