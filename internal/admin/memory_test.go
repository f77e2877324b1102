package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sact-project/sact/internal/activator"
)

type memApp struct {
	name string
	mem  int64
}

func (m memApp) Name() string                  { return m.name }
func (m memApp) Start(context.Context) error   { return nil }
func (m memApp) Stop(context.Context) error    { return nil }
func (m memApp) Pause(context.Context) error   { return nil }
func (m memApp) Restart(context.Context) error { return nil }
func (m memApp) Status() activator.Status {
	st := activator.Status{Name: m.name, State: activator.Stopped, Memory: m.mem}
	if m.mem > 0 {
		st.State = activator.Running
	}
	return st
}

// The measured memory goes out in the API (memory_bytes) and in /metrics, for running
// apps only: a stopped app has no gauge.
func TestMemoryShown(t *testing.T) {
	apps := []App{memApp{name: "web", mem: 42 << 20}, memApp{name: "idle"}}
	s := New(Options{Apps: func() []App { return apps }, Registry: prometheus.NewRegistry()})
	srv := httptest.NewServer(s.Handler(false))
	defer srv.Close()

	resp, err := http.Get(srv.URL + "/api/apps/web")
	if err != nil {
		t.Fatal(err)
	}
	var st map[string]any
	json.NewDecoder(resp.Body).Decode(&st)
	resp.Body.Close()
	if st["memory_bytes"] != float64(42<<20) {
		t.Errorf("memory_bytes = %v", st["memory_bytes"])
	}
	resp, err = http.Get(srv.URL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(b), `sact_app_memory_bytes{app="web"} 4.4040192e+07`) {
		t.Errorf("metrics lack web's memory:\n%s", b)
	}
	if strings.Contains(string(b), `sact_app_memory_bytes{app="idle"}`) {
		t.Error("a stopped app has a memory gauge")
	}
}
