package docker

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/sact-project/sact/internal/backend"
)

// fakeEngine answers the few Engine API calls New and Running make: a ping, the container
// list, inspects and removals. It records the requests other than the ping.
type fakeEngine struct {
	mu         sync.Mutex
	containers map[string]string // name -> sact.app label
	requests   []string
}

var apiPath = regexp.MustCompile(`^/v[0-9.]+`)

func (e *fakeEngine) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	w.Header().Set("Api-Version", "1.41")
	w.Header().Set("Content-Type", "application/json")
	path := apiPath.ReplaceAllString(req.URL.Path, "")
	if path == "/_ping" {
		w.Write([]byte("OK"))
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.requests = append(e.requests, req.Method+" "+path)
	switch {
	case req.Method == http.MethodGet && path == "/containers/json":
		var list []map[string]any
		for name, app := range e.containers {
			list = append(list, map[string]any{"Id": name, "Names": []string{"/" + name}, "Labels": map[string]string{LabelApp: app}})
		}
		json.NewEncoder(w).Encode(list)
	case req.Method == http.MethodGet && strings.HasSuffix(path, "/json"):
		name := strings.TrimSuffix(strings.TrimPrefix(path, "/containers/"), "/json")
		app, ok := e.containers[name]
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"message": "No such container: " + name})
			return
		}
		json.NewEncoder(w).Encode(map[string]any{"Id": name, "Name": "/" + name,
			"Config": map[string]any{"Labels": map[string]string{LabelApp: app}}, "State": map[string]any{"Running": true}})
	case req.Method == http.MethodDelete:
		delete(e.containers, strings.TrimPrefix(path, "/containers/"))
		w.WriteHeader(http.StatusNoContent)
	default:
		w.WriteHeader(http.StatusNotImplemented)
	}
}

func (e *fakeEngine) took() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	r := e.requests
	e.requests = nil
	return r
}

// TestFirstLookInspectsOnlyListedLeftovers: an app's first look for its container asks
// the engine about its own name, and about a deploy's names (-Next, -Old) only when the
// engine has such a container: 1000 apps made 3000 requests at startup, whose garbage and
// connection goroutines stayed in sact's memory (make bench's 1000 idle apps).
func TestFirstLookInspectsOnlyListedLeftovers(t *testing.T) {
	eng := &fakeEngine{containers: map[string]string{"sact-b-Next": "b"}}
	srv := httptest.NewServer(eng)
	defer srv.Close()
	t.Setenv("DOCKER_HOST", "tcp://"+strings.TrimPrefix(srv.URL, "http://"))
	ctx := context.Background()
	r, err := New(ctx, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer r.cli.Close()
	eng.took()

	if inst, err := r.Running(ctx, backend.Spec{Name: "a"}); inst != nil || err != nil {
		t.Fatalf("a: %v, %v", inst, err)
	}
	if got, want := eng.took(), []string{"GET /containers/sact-a/json"}; !slices.Equal(got, want) {
		t.Errorf("an app without containers: requests %q, want %q", got, want)
	}
	if inst, err := r.Running(ctx, backend.Spec{Name: "b"}); inst != nil || err != nil {
		t.Fatalf("b: %v, %v", inst, err)
	}
	if got, want := eng.took(), []string{"GET /containers/sact-b-Next/json", "DELETE /containers/sact-b-Next", "GET /containers/sact-b/json"}; !slices.Equal(got, want) {
		t.Errorf("an app with a leftover deploy: requests %q, want %q", got, want)
	}

	// Made after the list: the event stream tells.
	eng.mu.Lock()
	eng.containers["sact-a-Old"] = "a"
	eng.mu.Unlock()
	r.handle(ctx, events.Message{Type: events.ContainerEventType, Action: events.ActionRename, TimeNano: time.Now().UnixNano(),
		Actor: events.Actor{ID: "x", Attributes: map[string]string{"name": "sact-a-Old", "oldName": "/sact-a"}}})
	r.Running(ctx, backend.Spec{Name: "a"})
	if got, want := eng.took(), []string{"GET /containers/sact-a-Old/json", "DELETE /containers/sact-a-Old", "GET /containers/sact-a/json"}; !slices.Equal(got, want) {
		t.Errorf("a deploy name renamed to after the list: requests %q, want %q", got, want)
	}
	r.handle(ctx, events.Message{Type: events.ContainerEventType, Action: events.ActionDestroy, TimeNano: time.Now().UnixNano(),
		Actor: events.Actor{ID: "x", Attributes: map[string]string{"name": "sact-a-Old"}}})
	r.Running(ctx, backend.Spec{Name: "a"})
	if got, want := eng.took(), []string{"GET /containers/sact-a/json"}; !slices.Equal(got, want) {
		t.Errorf("after its destroy: requests %q, want %q", got, want)
	}
}

// With no list (the engine refused it), every deploy name is looked at, as before.
func TestLeftoversWithoutListInspectEveryName(t *testing.T) {
	if !(&Runtime{}).mayExist("sact-a-Next") {
		t.Error("no list: a deploy name is skipped")
	}
}
