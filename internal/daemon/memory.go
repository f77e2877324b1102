package daemon

import (
	"context"
	"strings"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
)

// memoryEvery is how often the running apps' memory is sampled: one engine request per
// running app, sequentially, so 250 running apps cost about 25 requests a second.
const memoryEvery = 10 * time.Second

// memoryTimeout bounds one sample: a stuck engine must not stall the others for long.
const memoryTimeout = 5 * time.Second

// meterMemory samples the memory use of every app that runs, on runtimes that can tell
// (backend.MemoryMeter), until ctx ends: status, the API and /metrics show it, and the
// pool's memory_budget counts apps without a memory limit by it. One goroutine for all
// apps; apps that do not run cost nothing.
func (d *daemon) meterMemory(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	failed := make(map[string]bool) // apps whose last sample failed, to log once per run of failures
	var units []*unit               // reused: a new copy of 1000 units every 10s was garbage
	for {
		units = d.appendUnits(units[:0])
		for _, u := range units {
			if ctx.Err() != nil {
				return
			}
			d.sampleMemory(ctx, u, failed)
		}
		clear(units) // holds no unit a reload removes until the next sample
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (d *daemon) sampleMemory(ctx context.Context, u *unit, failed map[string]bool) {
	m, ok := u.rt.(backend.MemoryMeter)
	if !ok || !u.act.Measured() {
		return
	}
	sctx, cancel := context.WithTimeout(ctx, memoryTimeout)
	n, err := m.MemoryUsage(sctx, u.act.Policy().Spec)
	cancel()
	name := u.act.Name()
	if err != nil {
		if !failed[name] && u.act.Measured() && ctx.Err() == nil {
			d.log.Warn("cannot measure app's memory", "app", name, "reason", err)
		}
		failed[name] = true
		return
	}
	delete(failed, name)
	u.act.SetMemory(n)
}

// readiness is app's ready: as the activator takes it.
func readiness(app *config.App) activator.Readiness {
	r := activator.Readiness{Healthcheck: app.Ready.Healthcheck}
	if h := app.Ready.HTTP; h != nil {
		r.HTTP = &activator.HTTPCheck{Method: h.Method, Path: h.Path, Host: readyHost(app.Hosts), StatusMin: h.StatusMin, StatusMax: h.StatusMax}
	}
	return r
}

// readyHost is the Host header of an HTTP ready check: the app's first host that names one
// (no wildcard), without its path prefix, else localhost.
func readyHost(hosts []string) string {
	for _, h := range hosts {
		name, _, _ := strings.Cut(h, "/")
		if name != "" && !strings.HasPrefix(name, "*.") {
			return name
		}
	}
	return "localhost"
}
