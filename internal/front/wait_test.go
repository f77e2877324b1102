package front

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// slowFront is a front door to one app whose start takes delay, with max_waiting 5.
func slowFront(t *testing.T, delay time.Duration, route Route) (*httptest.Server, *activator.App) {
	t.Helper()
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "real answer") }))
	t.Cleanup(up.Close)
	act := activator.New(&fake.Runtime{Addr: up.Listener.Addr().String(), StartTime: delay},
		activator.Policy{Spec: backend.Spec{Name: "app"}, Idle: time.Hour, MaxWaiting: 5}, activator.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { act.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	route.App, route.Hosts = act, []string{"app.test"}
	s, err := New([]Route{route}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	// The front door's own http.Server (its ConnContext), on httptest's listener.
	srv := httptest.NewUnstartedServer(s)
	srv.Config = s.srv
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, act
}

// waitWaiting waits up to within for the app's waiting count to reach want and returns
// how long that took, or fails.
func waitWaiting(t *testing.T, act *activator.App, want int, within time.Duration) time.Duration {
	t.Helper()
	began := time.Now()
	for {
		got := act.Status().Waiting
		if got == want {
			return time.Since(began)
		}
		if time.Since(began) > within {
			t.Fatalf("%d connections wait for the start after %s, want %d", got, within, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestWakingPageGivesItsSlotBack: a browser that got the waking page holds no max_waiting
// slot, so 25 of them (five times max_waiting) leave room for the API client behind them.
func TestWakingPageGivesItsSlotBack(t *testing.T) {
	srv, act := slowFront(t, 2*time.Second, Route{WakingPage: 50 * time.Millisecond})
	for range 5 {
		var wg sync.WaitGroup
		for range 5 {
			wg.Go(func() {
				resp, body := get(t, srv, "app.test", "/", "Accept", "text/html")
				if resp.StatusCode != 503 || !strings.Contains(body, "Starting") {
					t.Errorf("browser GET during the start: %d %q, want the waking page", resp.StatusCode, body)
				}
			})
		}
		wg.Wait()
	}
	took := waitWaiting(t, act, 0, 200*time.Millisecond)
	t.Logf("waiting count 0 %s after the last waking page", took)
	if resp, body := get(t, srv, "app.test", "/api"); resp.StatusCode != 200 || body != "real answer" {
		t.Errorf("API client behind 25 waking pages: %d %q, want the app's answer", resp.StatusCode, body)
	}
}

// TestClientGoneGivesItsSlotBack: a request whose client hangs up during the start stops
// waiting at once, with or without a waking page.
func TestClientGoneGivesItsSlotBack(t *testing.T) {
	for _, page := range []time.Duration{0, time.Minute} {
		t.Run(fmt.Sprintf("waking_page=%s", page), func(t *testing.T) {
			srv, act := slowFront(t, 2*time.Second, Route{WakingPage: page})
			ctx, cancel := context.WithCancel(context.Background())
			req, _ := http.NewRequestWithContext(ctx, "GET", srv.URL+"/", nil)
			req.Host = "app.test"
			req.Header.Set("Accept", "text/html")
			errc := make(chan error, 1)
			go func() {
				resp, err := srv.Client().Do(req)
				if err == nil {
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
				errc <- err
			}()
			waitWaiting(t, act, 1, time.Second)
			cancel()
			if err := <-errc; !errors.Is(err, context.Canceled) {
				t.Fatalf("request: %v, want it cancelled", err)
			}
			took := waitWaiting(t, act, 0, 200*time.Millisecond)
			t.Logf("slot given back %s after the client hung up", took)
		})
	}
}

// TestGonePostGivesItsSlotBack: a client that sends a request with a body (which nobody
// reads while the app starts) and hangs up stops waiting too.
func TestGonePostGivesItsSlotBack(t *testing.T) {
	srv, act := slowFront(t, 2*time.Second, Route{})
	c, err := net.Dial("tcp", srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "POST /form HTTP/1.1\r\nHost: app.test\r\nContent-Length: 3\r\n\r\nabc")
	waitWaiting(t, act, 1, time.Second)
	c.Close()
	took := waitWaiting(t, act, 0, 300*time.Millisecond)
	t.Logf("slot given back %s after the client hung up", took)
}
