package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
)

// echoKind is a kind a test adds with nothing but itself and the list it is in: apps
// that set echo: TEXT get a server that answers TEXT to every connection. It stands for a
// new backend: neither config nor the daemon knows its name or its key.
type echoKind struct{ rt *echoRuntime }

func (echoKind) Info() backend.KindInfo {
	return backend.KindInfo{Name: "echo", Describe: "echo server", Help: "a test server", Runs: "an echo server",
		Select: []string{"echo"}, Runtime: "seam-echo", PortOnHost: true}
}

func (echoKind) Decode(s backend.Settings, spec *backend.Spec) {
	if text := s.String("echo", nil); text != "" {
		spec.Extra = text
	}
}

func (k echoKind) NewRuntime(context.Context, backend.Deps) (backend.Runtime, error) {
	if k.rt.built.Add(1) > 1 {
		return nil, errors.New("built twice")
	}
	return k.rt, nil
}

// echoRuntime runs each app as a TCP server in the test process.
type echoRuntime struct {
	built, starts atomic.Int32
	mu            sync.Mutex
	running       map[string]*echoServer
}

type echoServer struct {
	ln     net.Listener
	exited chan backend.Exit
	done   sync.WaitGroup
}

func (r *echoRuntime) Start(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	text, ok := spec.Extra.(string)
	if !ok {
		return nil, fmt.Errorf("spec.Extra is %#v, want the decoded echo: text", spec.Extra)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	r.starts.Add(1)
	s := &echoServer{ln: ln, exited: make(chan backend.Exit, 1)}
	s.done.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, text)
			c.Close()
		}
	})
	r.mu.Lock()
	r.running[spec.Name] = s
	r.mu.Unlock()
	return &backend.Instance{ID: "echo-" + spec.Name, Upstream: backend.Addr{Network: "tcp", Address: ln.Addr().String()}, Exited: s.exited}, nil
}

func (r *echoRuntime) Stop(ctx context.Context, spec backend.Spec, grace time.Duration) error {
	r.mu.Lock()
	s := r.running[spec.Name]
	delete(r.running, spec.Name)
	r.mu.Unlock()
	if s != nil {
		s.ln.Close()
		s.done.Wait()
		s.exited <- backend.Exit{Code: 0, Reason: "exited"}
		close(s.exited)
	}
	return nil
}

func (r *echoRuntime) Running(context.Context, backend.Spec) (*backend.Instance, error) {
	return nil, nil
}

// TestNewKindNeedsOnlyTheList: a kind's package and the one line that lists it are all
// config and the daemon need to serve its apps: the key it claims selects it, what it
// decodes reaches its runtime, the daemon builds that runtime once and starts the app on
// the first connection.
func TestNewKindNeedsOnlyTheList(t *testing.T) {
	dir := t.TempDir()
	rt := &echoRuntime{running: make(map[string]*echoServer)}
	kinds := []backend.Kind{echoKind{rt}} // the list of kinds
	src := fmt.Sprintf(`admin:
  socket: %s/admin.sock
apps:
  seam-echo:
    echo: hello from a new kind
    listen: ["tcp:127.0.0.1:0"]
    port: 1
    on_exit: stop
  seam-echo-too:
    echo: another app of the kind
    listen: ["tcp:127.0.0.1:0"]
    port: 1
    on_exit: stop
`, dir)
	cfg, err := config.Parse(filepath.Join(dir, "sact.yaml"), []byte(src), config.Options{Kinds: kinds})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	ready := make(chan map[string][]net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- Run(ctx, cfg, Options{RunDir: filepath.Join(dir, "run"), Ready: func(a map[string][]net.Addr) { ready <- a }})
	}()
	var addrs map[string][]net.Addr
	select {
	case addrs = <-ready:
	case err := <-served:
		t.Fatalf("Run: %v", err)
	}
	for app, want := range map[string]string{"seam-echo": "hello from a new kind", "seam-echo-too": "another app of the kind"} {
		c, err := net.Dial("tcp", addrs[app][0].String())
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(time.Minute))
		got, err := io.ReadAll(c)
		c.Close()
		if err != nil || string(got) != want {
			t.Errorf("%s answered %q, %v; want %q", app, got, err, want)
		}
	}
	// What sact status and the dashboard call it is the kind's word; a capability it
	// lacks (logs) is refused, not guessed.
	admin := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", filepath.Join(dir, "admin.sock"))
	}}}
	for path, want := range map[string]string{"/api/apps/seam-echo": `"kind": "echo server"`, "/api/apps/seam-echo/logs": "this runtime keeps no logs"} {
		resp, err := admin.Get("http://sact" + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if !strings.Contains(string(body), want) {
			t.Errorf("GET %s = %s; want %s in it", path, body, want)
		}
	}
	cancel()
	if err := <-served; err != nil {
		t.Errorf("Run: %v", err)
	}
	if rt.built.Load() != 1 || rt.starts.Load() != 2 {
		t.Errorf("runtime built %d times, apps started %d times; want 1 and 2", rt.built.Load(), rt.starts.Load())
	}
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if len(rt.running) != 0 {
		t.Errorf("on_exit: stop left %d apps running", len(rt.running))
	}
}
