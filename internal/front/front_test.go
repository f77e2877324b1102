package front

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

func TestTable(t *testing.T) {
	tb := newTable()
	r := func(name string) *route { return &route{name: name} }
	for _, p := range []struct{ pattern, app string }{
		{"a.test", "a"}, {"*.wild.test", "wild"}, {"*.deep.wild.test", "deep"},
		{"p.test/api", "api"}, {"p.test/api/v2", "v2"}, {"p.test", "p"},
	} {
		if err := tb.add(p.pattern, r(p.app)); err != nil {
			t.Fatal(err)
		}
	}
	for i := range 1000 {
		tb.add(fmt.Sprintf("app-%d.test", i), r(fmt.Sprintf("app-%d", i)))
	}
	if err := tb.add("A.test", r("dup")); err == nil {
		t.Errorf("a host routed twice was accepted")
	}
	tests := []struct{ host, path, want string }{
		{"a.test", "/", "a"},
		{"A.TEST.", "/x", "a"},
		{"a.test:8080", "/", "a"},
		{"b.a.test", "/", ""},
		{"x.wild.test", "/", "wild"},
		{"y.x.wild.test", "/", "wild"},
		{"x.deep.wild.test", "/", "deep"},
		{"wild.test", "/", ""},
		{"p.test", "/api", "api"},
		{"p.test", "/api/", "api"},
		{"p.test", "/api/v2/x", "v2"},
		{"p.test", "/apis", "p"},
		{"p.test", "/", "p"},
		{"app-999.test", "/", "app-999"},
		{"app-1000.test", "/", ""},
		{"", "/", ""},
		{"[::1]:80", "/", ""},
	}
	for _, tt := range tests {
		got := ""
		if rt := tb.lookup(tt.host, tt.path); rt != nil {
			got = rt.name
		}
		if got != tt.want {
			t.Errorf("lookup(%q, %q) = %q, want %q", tt.host, tt.path, got, tt.want)
		}
	}
}

func newFront(t *testing.T, delay time.Duration, route Route) (*httptest.Server, *fake.Runtime, func()) {
	t.Helper()
	release := make(chan struct{})
	var once sync.Once
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			<-release
		}
		fmt.Fprintf(w, "app saw %s %s", r.Host, r.URL.Path)
	}))
	t.Cleanup(func() { once.Do(func() { close(release) }); up.Close() })
	rt := &fake.Runtime{Addr: up.Listener.Addr().String(), StartTime: delay}
	act := activator.New(rt, activator.Policy{Spec: backend.Spec{Name: "app"}, Idle: time.Hour}, activator.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { act.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	route.App = act
	route.Hosts = []string{"app.test"}
	s, err := New([]Route{route}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	t.Cleanup(srv.Close)
	return srv, rt, func() { once.Do(func() { close(release) }) }
}

func get(t *testing.T, srv *httptest.Server, host, path string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", srv.URL+path, nil)
	req.Host = host
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestServe(t *testing.T) {
	srv, rt, release := newFront(t, 50*time.Millisecond, Route{MaxInFlight: 2, Quiet: Quiet{Enabled: true, Favicon: true, UserAgents: []string{"bot"}, Status: 503}})

	if resp, _ := get(t, srv, "other.test", "/"); resp.StatusCode != 404 {
		t.Errorf("unknown host: %d", resp.StatusCode)
	}
	for _, q := range [][]string{{"/robots.txt"}, {"/favicon.ico"}, {"/", "User-Agent", "SomeBot/1"}, {"/.sact/status"}} {
		get(t, srv, "app.test", q[0], q[1:]...)
	}
	if n, _ := rt.Counts(); n != 0 {
		t.Fatalf("%d starts for quiet requests", n)
	}
	resp, body := get(t, srv, "app.test", "/hello")
	if resp.StatusCode != 200 || body != "app saw app.test /hello" || resp.Header.Get("X-Sact-Cold-Start") == "" {
		t.Errorf("cold request: %d %q %v", resp.StatusCode, body, resp.Header)
	}
	resp, _ = get(t, srv, "app.test", "/hello")
	if resp.Header.Get("X-Sact-Cold-Start") != "" {
		t.Errorf("warm request marked cold")
	}

	// Two requests in flight fill max_in_flight: the third gets 503.
	var wg sync.WaitGroup
	for range 2 {
		wg.Go(func() { get(t, srv, "app.test", "/block") })
	}
	time.Sleep(100 * time.Millisecond)
	if resp, _ := get(t, srv, "app.test", "/"); resp.StatusCode != 503 || resp.Header.Get("Retry-After") == "" {
		t.Errorf("over max_in_flight: %d", resp.StatusCode)
	}
	release()
	wg.Wait()
	if n, _ := rt.Counts(); n != 1 {
		t.Errorf("%d starts, want 1", n)
	}
}

func TestTrusted(t *testing.T) {
	s := &Server{trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	for remote, want := range map[string]bool{
		"10.1.2.3:555": true, "[::ffff:10.1.2.3]:5": true, "[::1]:1": true,
		"11.0.0.1:80": false, "@": false, "": false,
	} {
		if got := s.isTrusted(remote); got != want {
			t.Errorf("isTrusted(%q) = %v, want %v", remote, got, want)
		}
	}
	s.trustUnix = true // trusted_proxies: [unix]
	for remote, want := range map[string]bool{"@": true, "": true, "11.0.0.1:80": false} {
		if got := s.isTrusted(remote); got != want {
			t.Errorf("with TrustUnix: isTrusted(%q) = %v, want %v", remote, got, want)
		}
	}
}

func BenchmarkServe(b *testing.B) {
	t := &testing.T{}
	srv, _, _ := newFront(t, 0, Route{})
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	c := &http.Client{Transport: tr}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("GET", srv.URL+"/", nil)
			req.Host = "app.test"
			resp, err := c.Do(req)
			if err != nil {
				b.Fatal(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
	})
}

func TestSetRoutes(t *testing.T) {
	act := activator.New(&fake.Runtime{}, activator.Policy{Spec: backend.Spec{Name: "a"}}, activator.Options{})
	other := activator.New(&fake.Runtime{}, activator.Policy{Spec: backend.Spec{Name: "b"}}, activator.Options{})
	a := Route{App: act, Hosts: []string{"a.test"}}
	s, err := New([]Route{a}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	lookup := func(host string) string {
		if rt := s.routes.Load().table.lookup(host, "/"); rt != nil {
			return rt.name
		}
		return ""
	}
	first := s.routes.Load().all[0]

	b := Route{App: other, Hosts: []string{"b.test"}}
	if err := s.SetRoutes([]Route{a, b}, nil); err != nil {
		t.Fatal(err)
	}
	if lookup("a.test") != "a" || lookup("b.test") != "b" {
		t.Errorf("after adding b: a.test -> %q, b.test -> %q", lookup("a.test"), lookup("b.test"))
	}
	if s.routes.Load().all[0] != first {
		t.Error("an unchanged route was rebuilt: it loses its upstream connections")
	}

	clash := Route{App: other, Hosts: []string{"a.test"}}
	if err := s.SetRoutes([]Route{a, clash}, nil); err == nil {
		t.Fatal("two routes for a.test accepted")
	}
	if lookup("b.test") != "b" {
		t.Error("a rejected SetRoutes changed the routes")
	}

	if err := s.SetRoutes([]Route{b}, nil); err != nil {
		t.Fatal(err)
	}
	if lookup("a.test") != "" {
		t.Error("a.test still routed after its route was removed")
	}
}

func TestRequestToADyingInstanceIsSentAgain(t *testing.T) {
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "fresh")
	}))
	defer healthy.Close()
	// The first instance of each round dies under the first request it gets (the
	// connection is cut, and the exit is reported just after, as the engine's event
	// comes after the kill); later instances are healthy.
	var round atomic.Int32
	var dyingAddr string
	rt := &fake.Runtime{Upstream: func(backend.Spec) backend.Addr {
		if round.Add(1) == 1 {
			return backend.Addr{Network: "tcp", Address: dyingAddr}
		}
		return backend.Addr{Network: "tcp", Address: healthy.Listener.Addr().String()}
	}}
	dying := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, _, _ := w.(http.Hijacker).Hijack()
		c.Close() // killed mid-request
		go func() {
			time.Sleep(100 * time.Millisecond)
			rt.Crash("app")
		}()
	}))
	defer dying.Close()
	dyingAddr = dying.Listener.Addr().String()

	act := activator.New(rt, activator.Policy{Spec: backend.Spec{Name: "app"}, Idle: time.Hour}, activator.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { act.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	s, err := New([]Route{{App: act, Hosts: []string{"app.test"}}}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(s)
	defer srv.Close()

	if resp, body := get(t, srv, "app.test", "/"); resp.StatusCode != 200 || body != "fresh" {
		t.Errorf("GET to an instance that died under it: %d %q, want 200 from a fresh start", resp.StatusCode, body)
	}
	if n, _ := rt.Counts(); n != 2 {
		t.Errorf("%d starts, want 2", n)
	}
	// A POST is not sent twice: it gets the 502.
	round.Store(0)
	act.Stop(context.Background())
	req, _ := http.NewRequest("POST", srv.URL+"/", strings.NewReader("x"))
	req.Host = "app.test"
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadGateway {
		t.Errorf("POST to a dying instance: %d, want 502 (not replayed)", resp.StatusCode)
	}
}
