package admin

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/sact-project/sact/internal/activator"
)

type fakeApp struct {
	name  string
	state activator.State
}

func (f *fakeApp) Name() string { return f.name }
func (f *fakeApp) Status() activator.Status {
	return activator.Status{Name: f.name, State: f.state, ColdStarts: 2, Stops: map[string]int{"idle": 1}}
}
func (f *fakeApp) Start(context.Context) error { f.state = activator.Running; return nil }
func (f *fakeApp) Stop(context.Context) error  { f.state = activator.Stopped; return nil }
func (f *fakeApp) Pause(context.Context) error { f.state = activator.Paused; return nil }

func TestAPI(t *testing.T) {
	web := &fakeApp{name: "web"}
	s := New(Options{Apps: func() []App { return []App{web} }, Registry: prometheus.NewRegistry()})
	overHTTP := httptest.NewServer(s.Handler(true))
	defer overHTTP.Close()
	local := httptest.NewServer(s.Handler(false))
	defer local.Close()

	post := func(base, path, token string) int {
		req, _ := http.NewRequest("POST", base+path, nil)
		if token != "" {
			req.Header.Set("X-Sact-Token", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post(overHTTP.URL, "/api/apps/web/start", ""); code != 403 || web.state != activator.Stopped {
		t.Errorf("start over HTTP without token: %d, state %v", code, web.state)
	}
	if code := post(overHTTP.URL, "/api/apps/web/start", "wrong"); code != 403 {
		t.Errorf("start with a wrong token: %d", code)
	}
	// The dashboard carries the token.
	resp, err := http.Get(overHTTP.URL + "/")
	if err != nil {
		t.Fatal(err)
	}
	page, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	m := regexp.MustCompile(`name="sact-token" content="([0-9a-f]+)"`).FindStringSubmatch(string(page))
	if m == nil {
		t.Fatalf("dashboard has no token")
	}
	if code := post(overHTTP.URL, "/api/apps/web/start", m[1]); code != 200 || web.state != activator.Running {
		t.Errorf("start with the dashboard's token: %d, state %v", code, web.state)
	}
	if code := post(local.URL, "/api/apps/web/stop", ""); code != 200 || web.state != activator.Stopped {
		t.Errorf("stop on the unix socket: %d, state %v", code, web.state)
	}
	if code := post(local.URL, "/api/apps/nope/stop", ""); code != 404 {
		t.Errorf("unknown app: %d", code)
	}
	if resp, _ := http.Get(overHTTP.URL + "/api/apps/web/start"); resp.StatusCode != 405 {
		t.Errorf("GET of a change: %d, want 405", resp.StatusCode)
	}

	resp, _ = http.Get(local.URL + "/api/apps")
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
