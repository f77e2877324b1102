package admin

import (
	"bufio"
	"context"
	"encoding/csv"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/events"
)

// The pool goes out with the API's snake_case keys (the dashboard reads max_running),
// and with the CamelCase keys earlier clients decode.
func TestPoolKeys(t *testing.T) {
	s := New(Options{Apps: func() []App { return nil }, Pool: func() activator.PoolStatus {
		return activator.PoolStatus{Running: 3, MaxRunning: 20}
	}})
	srv := httptest.NewServer(s.Handler(false))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/apps")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var raw struct{ Pool map[string]any }
	b, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(b, &raw); err != nil {
		t.Fatal(err)
	}
	if raw.Pool["max_running"] != 20.0 || raw.Pool["MaxRunning"] != 20.0 || raw.Pool["running"] != 3.0 || raw.Pool["Running"] != 3.0 {
		t.Errorf("pool keys: %v", raw.Pool)
	}
	var old struct{ Pool activator.PoolStatus } // as sact status decoded it before
	if err := json.Unmarshal(b, &old); err != nil || old.Pool.MaxRunning != 20 || old.Pool.Running != 3 {
		t.Errorf("old decoding: %+v, %v", old.Pool, err)
	}
}

func TestEventStream(t *testing.T) {
	hub := &events.Hub{}
	s := New(Options{Apps: func() []App { return nil }, Events: hub, Token: strings.Repeat("ab", 32)})
	srv := httptest.NewServer(s.Handler(true))
	defer srv.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/events?app=web", nil)
	resp, err := http.DefaultClient.Do(req) // loopback, not forwarded: open, like status
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "text/event-stream" {
		t.Fatalf("status %d, type %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	rd := bufio.NewReader(resp.Body)
	if line, _ := rd.ReadString('\n'); !strings.HasPrefix(line, ":") { // the stream is up
		t.Fatalf("first line %q", line)
	}
	for hub.Subscribers() == 0 {
		time.Sleep(time.Millisecond)
	}
	hub.Publish(events.Event{Kind: events.Stop, App: "other", Reason: "idle"})
	hub.Publish(events.Event{Kind: events.StartFailed, App: "web", Details: "app exited\nline two"})
	var got events.Event
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatal(err)
		}
		if data, ok := strings.CutPrefix(line, "data: "); ok {
			if err := json.Unmarshal([]byte(data), &got); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if got.App != "web" || got.Kind != events.StartFailed || got.Details != "app exited\nline two" || got.Time.IsZero() {
		t.Errorf("event %+v", got)
	}

	// Forwarded by a proxy: a credential is needed, as for logs.
	req, _ = http.NewRequest("GET", srv.URL+"/api/events", nil)
	req.Header.Set("X-Forwarded-For", "203.0.113.9")
	if r, err := http.DefaultClient.Do(req); err != nil || r.StatusCode != 401 {
		t.Errorf("forwarded without a token: %v %v", r.StatusCode, err)
	}
}

func TestCSVDead(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	old, recent, known := now.AddDate(0, 0, -120), now.Add(-time.Hour), now.AddDate(0, 0, -100)
	apps := []App{
		&fakeApp{name: "=cmd", state: activator.Stopped},
		&fakeApp{name: "fresh", state: activator.Running},
		&fakeApp{name: "new", state: activator.Stopped},
	}
	last := map[string]time.Time{"=cmd": old, "fresh": recent}
	since := map[string]time.Time{"=cmd": known, "fresh": known, "new": now.Add(-time.Minute)}
	s := New(Options{Apps: func() []App { return apps }, Now: func() time.Time { return now },
		History: func(app string, st activator.Status) History {
			return History{KnownSince: since[app], Days: make([]int, 90)}
		}})
	s.opts.Apps = func() []App {
		out := make([]App, len(apps))
		for i, a := range apps {
			out[i] = lastActive{App: a, t: last[a.Name()]}
		}
		return out
	}
	srv := httptest.NewServer(s.Handler(false))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/api/apps.csv?dead=90")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rows, err := csv.NewReader(resp.Body).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range rows[1:] {
		names = append(names, r[0]+" "+r[4])
	}
	// Only the app silent for 120 days: "new" was first seen a minute ago, so it is not
	// dead (before known_since, an app never seen counted as silent forever).
	if diff := cmp.Diff([]string{"'=cmd 120"}, names); diff != "" {
		t.Errorf("dead apps (-want +got):\n%s", diff)
	}
	if r, _ := http.Get(srv.URL + "/api/apps.csv?dead=x"); r.StatusCode != 400 {
		t.Errorf("dead=x: %d", r.StatusCode)
	}
}

type lastActive struct {
	App
	t time.Time
}

func (l lastActive) Status() activator.Status {
	st := l.App.Status()
	st.LastActivity = l.t
	return st
}

// The admin servers have a ReadTimeout (a slow client must not hold them): a stream
// must outlive it, or sact events and the dashboard's live updates end after it.
func TestEventStreamOutlivesReadTimeout(t *testing.T) {
	hub := &events.Hub{}
	s := New(Options{Apps: func() []App { return nil }, Events: hub})
	srv := httptest.NewUnstartedServer(s.Handler(false))
	srv.Config.ReadTimeout = 200 * time.Millisecond
	srv.Start()
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/api/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	rd.ReadString('\n')
	time.Sleep(time.Second) // five read timeouts
	hub.Publish(events.Event{Kind: events.Start, App: "web"})
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("the stream ended after the read timeout: %v", err)
		}
		if strings.HasPrefix(line, "data: ") {
			return
		}
	}
}
