package docker

import (
	"context"
	"fmt"
	"strings"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// health is what an incarnation's HEALTHCHECK last reported, from the engine's
// health_status events. Guarded by Runtime.mu.
type health struct {
	status string        // "", "starting", "healthy" or "unhealthy"
	change chan struct{} // closed, and replaced, on each status
}

func newHealth() health { return health{change: make(chan struct{})} }

func isHealth(a events.Action) bool {
	return strings.HasPrefix(string(a), string(events.ActionHealthStatus))
}

// set records the status that a health_status action ("health_status: healthy") carries.
// Called with Runtime.mu held.
func (h *health) set(a events.Action) {
	st := strings.TrimSpace(strings.TrimPrefix(strings.TrimPrefix(string(a), string(events.ActionHealthStatus)), ":"))
	if st == "" || st == h.status {
		return
	}
	h.status = st
	close(h.change)
	h.change = make(chan struct{})
}

// WaitHealthy waits for the engine's word that inst's HEALTHCHECK passed: a health_status
// event of the event stream that Run follows; it never polls. One inspect tells whether
// the container has a health check at all and catches a status reported before the call.
// An unhealthy report does not end the wait (a slow boot may fail a few checks first):
// start_timeout does.
func (r *Runtime) WaitHealthy(ctx context.Context, spec backend.Spec, inst *backend.Instance) error {
	ref := containerRef(spec)
	r.mu.Lock()
	var w *watch
	var id string
	for wid, x := range r.watches {
		if (<-chan backend.Exit)(x.exited) == inst.Exited {
			w, id = x, wid
		}
	}
	r.mu.Unlock()
	if w == nil {
		return fmt.Errorf("container %s does not run any more", ref)
	}
	ins, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("inspecting container %s for its HEALTHCHECK: %w", ref, err)
	}
	if ins.Container.State == nil || ins.Container.State.Health == nil || ins.Container.State.Health.Status == container.NoHealthcheck {
		return fmt.Errorf("%w (image %s); add one to the image, or remove ready: healthcheck", backend.ErrNoHealthcheck, spec.Image)
	}
	r.mu.Lock()
	if w.health.status == "" {
		// No event yet: the engine's own view (events after it update it).
		w.health.status = string(ins.Container.State.Health.Status)
	}
	r.mu.Unlock()
	for {
		r.mu.Lock()
		st, change := w.health.status, w.health.change
		r.mu.Unlock()
		if st == string(container.Healthy) {
			return nil
		}
		select {
		case <-change:
		case <-ctx.Done():
			return fmt.Errorf("waiting for the HEALTHCHECK of container %s to report healthy (it says %s): %w", ref, st, ctx.Err())
		}
	}
}
