package docker

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/moby/moby/api/types/events"

	"github.com/sact-project/sact/internal/backend"
)

// TestImageTagWakesOnlyRunningApps: an image tagged anywhere on the host (every build)
// tells the apps that run (they may have to deploy it) and no sleeping one: with 1000
// sleeping apps each tag woke 1000 goroutines (make bench's idle figures).
func TestImageTagWakesOnlyRunningApps(t *testing.T) {
	r := &Runtime{log: slog.New(slog.DiscardHandler), watches: map[string]*watch{}, known: map[string]made{}, subs: map[string][]chan backend.WatchEvent{}}
	running, stop1 := r.Watch("running")
	defer stop1()
	sleeping, stop2 := r.Watch("sleeping")
	defer stop2()
	r.watches["c1"] = &watch{app: "running"}
	r.handle(context.Background(), events.Message{Type: events.ImageEventType, Action: events.ActionTag, TimeNano: time.Now().UnixNano()})
	select {
	case ev := <-running:
		if ev.Kind != backend.ImageChanged {
			t.Errorf("the running app got %v", ev.Kind)
		}
	default:
		t.Error("the running app was not told of the new image")
	}
	select {
	case ev := <-sleeping:
		t.Errorf("a sleeping app was woken: %v", ev.Kind)
	default:
	}
}
