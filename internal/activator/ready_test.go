package activator

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// upRuntime starts instances at a fixed upstream that the test serves for real.
func upRuntime(up backend.Addr) *fake.Runtime {
	return &fake.Runtime{Upstream: func(backend.Spec) backend.Addr { return up }}
}

// bootingServer accepts at once but answers its health path 503 until ready is set, as a
// Rails app does while it boots behind a listening server. It records what it was asked.
type bootingServer struct {
	ln    net.Listener
	ready atomic.Bool
	mu    sync.Mutex
	early []string // requests answered 503
	seen  []*http.Request
}

func newBootingServer(t *testing.T, h http.HandlerFunc) *bootingServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &bootingServer{ln: ln}
	if h == nil {
		h = func(w http.ResponseWriter, r *http.Request) {
			s.mu.Lock()
			s.seen = append(s.seen, r)
			if !s.ready.Load() {
				s.early = append(s.early, r.Method+" "+r.URL.RequestURI())
				s.mu.Unlock()
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			s.mu.Unlock()
			w.WriteHeader(http.StatusOK)
		}
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *bootingServer) addr() backend.Addr {
	return backend.Addr{Network: "tcp", Address: s.ln.Addr().String()}
}

func runApp(t *testing.T, rt backend.Runtime, p Policy) *App {
	t.Helper()
	p.Spec.Name = "web"
	a := New(rt, p, Options{Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, address)
	}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { a.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

// TestReadyHTTPHoldsClientsUntilHealthy: with an HTTP check, a connection that woke the app
// gets its lease only once the health path answers 200; with the default (accepts), it
// would get it while the app still answers 503.
func TestReadyHTTPHoldsClientsUntilHealthy(t *testing.T) {
	for _, tt := range []struct {
		name  string
		ready Readiness
		early bool // the lease comes while the app still answers 503
	}{
		{"accepts", Readiness{}, true},
		{"http", Readiness{HTTP: &HTTPCheck{Path: "/healthz", Host: "shop.example.com"}}, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := newBootingServer(t, nil)
			a := runApp(t, upRuntime(s.addr()), Policy{Ready: tt.ready, StartTimeout: 10 * time.Second})
			go func() {
				time.Sleep(300 * time.Millisecond)
				s.ready.Store(true)
			}()
			l, err := a.Acquire(context.Background(), Wake{})
			if err != nil {
				t.Fatal(err)
			}
			defer l.Release()
			if early := !s.ready.Load(); early != tt.early {
				t.Fatalf("lease while the app answers 503: %v, want %v", early, tt.early)
			}
			if tt.ready.HTTP == nil {
				return
			}
			s.mu.Lock()
			defer s.mu.Unlock()
			if len(s.early) == 0 {
				t.Fatalf("the check never asked the booting app")
			}
			for _, r := range s.seen {
				if r.Method != "GET" || r.URL.Path != "/healthz" || r.Host != "shop.example.com" || r.Header.Get("User-Agent") != "sact-ready" {
					t.Errorf("check sent %s %s Host %q UA %q", r.Method, r.URL, r.Host, r.Header.Get("User-Agent"))
				}
			}
		})
	}
}

// TestReadyHTTPStatusRange: a status outside the range is not ready; a redirect is the
// answer, never followed.
func TestReadyHTTPStatusRange(t *testing.T) {
	var followed atomic.Bool
	s := newBootingServer(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/elsewhere" {
			followed.Store(true)
			return
		}
		http.Redirect(w, r, "/elsewhere", http.StatusFound)
	})
	a := runApp(t, upRuntime(s.addr()), Policy{Ready: Readiness{HTTP: &HTTPCheck{Path: "/up", StatusMin: 200, StatusMax: 299}}, StartTimeout: 3 * time.Second})
	_, err := a.Acquire(context.Background(), Wake{})
	if !errors.Is(err, ErrStartTimeout) || !strings.Contains(err.Error(), "got status 302") {
		t.Fatalf("err = %v, want a start timeout that says 302", err)
	}
	if followed.Load() {
		t.Error("the check followed the redirect")
	}
	// The default range counts the redirect as the answer: ready.
	b := runApp(t, upRuntime(s.addr()), Policy{Ready: Readiness{HTTP: &HTTPCheck{Path: "/up"}}, StartTimeout: 5 * time.Second})
	l, err := b.Acquire(context.Background(), Wake{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	if followed.Load() {
		t.Error("the check followed the redirect")
	}
}

// TestReadyHTTPHostileApp: an app that never answers, trickles, or sends an endless
// header costs sact one bounded try at a time, and the start fails at start_timeout.
func TestReadyHTTPHostileApp(t *testing.T) {
	for _, tt := range []struct {
		name  string
		serve func(c net.Conn)
		want  string
	}{
		{"silent", func(c net.Conn) { time.Sleep(10 * time.Second) }, "timeout"},
		{"endless header", func(c net.Conn) {
			bufio.NewReader(c).ReadString('\n')
			c.Write([]byte("HTTP/1.1 200 OK\r\n"))
			junk := []byte("X-Junk: " + strings.Repeat("a", 4096) + "\r\n")
			for i := 0; i < 4096; i++ {
				if _, err := c.Write(junk); err != nil {
					return
				}
			}
		}, "header"},
		{"not http", func(c net.Conn) { c.Write([]byte("SSH-2.0-OpenSSH\r\n\r\n")) }, "malformed"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					go func() { defer c.Close(); tt.serve(c) }()
				}
			}()
			a := runApp(t, upRuntime(backend.Addr{Network: "tcp", Address: ln.Addr().String()}),
				// Several tries fit in start_timeout: on a loaded machine (CI under -race) one
				// try may be cut by its own 2s bound before the app's answer shows.
				Policy{Ready: Readiness{HTTP: &HTTPCheck{Path: "/up"}}, StartTimeout: 6 * time.Second})
			began := time.Now()
			_, err = a.Acquire(context.Background(), Wake{})
			if !errors.Is(err, ErrStartTimeout) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want a start timeout mentioning %q", err, tt.want)
			}
			if took := time.Since(began); took > 12*time.Second {
				t.Errorf("took %v; start_timeout is 6s", took)
			}
		})
	}
}

// TestReadyHealthcheck: ready: healthcheck waits for the runtime's word, then for the
// upstream to accept; a runtime without health checks fails the start.
func TestReadyHealthcheck(t *testing.T) {
	s := newBootingServer(t, func(w http.ResponseWriter, r *http.Request) {})
	rt := fake.HealthWaiting{Runtime: upRuntime(s.addr()), Healthy: make(chan struct{})}
	a := runApp(t, rt, Policy{Ready: Readiness{Healthcheck: true}, StartTimeout: 10 * time.Second})
	healthy := make(chan time.Time, 1)
	go func() {
		time.Sleep(300 * time.Millisecond)
		healthy <- time.Now()
		close(rt.Healthy)
	}()
	l, err := a.Acquire(context.Background(), Wake{})
	if err != nil {
		t.Fatal(err)
	}
	l.Release()
	select {
	case <-healthy:
	default:
		t.Fatal("the lease came before the runtime said healthy")
	}

	b := runApp(t, upRuntime(s.addr()), Policy{Ready: Readiness{Healthcheck: true}, StartTimeout: 10 * time.Second})
	if _, err := b.Acquire(context.Background(), Wake{}); err == nil || !strings.Contains(err.Error(), "health checks") {
		t.Fatalf("err = %v, want: this runtime has no health checks", err)
	}
}

// TestReadyExitWhileChecking: an app that exits while the HTTP check waits fails its
// start at once, with its logs, not at start_timeout.
func TestReadyExitWhileChecking(t *testing.T) {
	s := newBootingServer(t, nil) // answers 503 for ever
	rt := upRuntime(s.addr())
	a := runApp(t, rt, Policy{Ready: Readiness{HTTP: &HTTPCheck{Path: "/up"}}, StartTimeout: time.Minute})
	go func() {
		time.Sleep(200 * time.Millisecond)
		rt.Exit("web", backend.Exit{Code: 1, Reason: "exited", Logs: "boom"})
	}()
	began := time.Now()
	_, err := a.Acquire(context.Background(), Wake{})
	if err == nil || !strings.Contains(err.Error(), "boom") || time.Since(began) > 20*time.Second {
		t.Fatalf("err = %v after %v, want the exit with its logs", err, time.Since(began))
	}
}

// TestMemoryBudgetCountsMeasuredUse: an app without a memory limit counts against
// memory_budget by its measured use: measured at 800 MiB under a 1 GiB budget, it is
// evicted when an app limited to 512 MiB starts. Counted as 0, it was not.
func TestMemoryBudgetCountsMeasuredUse(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newHostRuntime(&fake.Runtime{StartTime: 500 * time.Millisecond})
		pool := NewPool(0, 2)
		pool.SetMemoryBudget(1 << 30)
		unlimited := host(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second}, "fat")["fat"]
		limited := host(t, rt, pool, Policy{Idle: time.Hour, StartTimeout: 10 * time.Second, Spec: backend.Spec{Memory: 512 << 20}}, "small")["small"]
		use(t, unlimited).Release()
		if st := pool.Status(); st.MemoryUsed != 0 {
			t.Fatalf("memory used %d before any sample, want 0", st.MemoryUsed)
		}
		unlimited.SetMemory(800 << 20)
		if st := unlimited.Status(); st.Memory != 800<<20 {
			t.Fatalf("status memory %d", st.Memory)
		}
		if st := pool.Status(); st.MemoryUsed != 800<<20 {
			t.Fatalf("memory used %d MiB, want 800", st.MemoryUsed>>20)
		}
		use(t, limited).Release()
		if got := unlimited.Status(); got.State != Stopped || got.StopReason != "evicted" {
			t.Errorf("fat: %v (%s), want stopped, evicted", got.State, got.StopReason)
		}
		if got := unlimited.Status(); got.Memory != 0 {
			t.Errorf("a stopped app shows %d bytes", got.Memory)
		}
		unlimited.SetMemory(900 << 20) // a sample that arrives late
		if got := unlimited.Status(); got.Memory != 0 {
			t.Errorf("a late sample stuck to the stopped app: %d", got.Memory)
		}
		if st := pool.Status(); st.MemoryUsed != 512<<20 {
			t.Errorf("memory used %d MiB, want 512", st.MemoryUsed>>20)
		}
	})
}

// TestReadyHTTPNeverFollowsLink: the HTTP check reaches a unix upstream through the same
// safe dial as the leases: a link the app planted in its own directory, pointing at a
// host socket that would answer 200, is refused, and the start fails as upstream_unsafe.
func TestReadyHTTPNeverFollowsLink(t *testing.T) {
	dir, secretDir := t.TempDir(), t.TempDir()
	secret := answer(t, filepath.Join(secretDir, "engine.sock"), "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
	sock := filepath.Join(dir, "app.sock")
	os.Symlink(filepath.Join(secretDir, "engine.sock"), sock)
	app := New(unixRuntime(sock), Policy{
		Spec:         backend.Spec{Name: "web", Volumes: []string{dir + ":/app/tmp"}},
		StartTimeout: 500 * time.Millisecond,
		Ready:        Readiness{HTTP: &HTTPCheck{Path: "/up"}},
	}, Options{})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- app.Run(ctx) }()
	defer func() { cancel(); <-done }()
	_, err := app.Acquire(ctx, Wake{})
	if got := FailureReason(err); got != "upstream_unsafe" {
		t.Errorf("Acquire: %v (reason %q); want reason upstream_unsafe", err, got)
	}
	if n := secret.Load(); n != 0 {
		t.Errorf("the check reached the host socket behind the link %d times", n)
	}

	// The app's own socket, answering HTTP, makes it ready.
	os.Remove(sock)
	answer(t, sock, "HTTP/1.1 204 No Content\r\n\r\n")
	if err := app.Start(ctx); err != nil {
		t.Fatalf("start with a real socket: %v", err)
	}
}
