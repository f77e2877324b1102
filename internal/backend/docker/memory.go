package docker

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// maxStatsBytes bounds one stats answer (a few kB): it comes from the engine, but its
// per-device and per-network lists grow with what the container was given.
const maxStatsBytes = 1 << 20

// MemoryUsage returns the container's memory use as `docker stats` shows it: the
// cgroup's usage without its inactive page cache. It is one stats request with
// stream=false and one-shot=true, which the engine answers at once (without one-shot it
// waits a second for a second CPU sample).
func (r *Runtime) MemoryUsage(ctx context.Context, spec backend.Spec) (int64, error) {
	ref := containerRef(spec)
	res, err := r.cli.ContainerStats(ctx, ref, client.ContainerStatsOptions{Stream: false})
	if err != nil {
		return 0, fmt.Errorf("reading the stats of container %s: %w", ref, err)
	}
	defer res.Body.Close()
	var st container.StatsResponse
	if err := json.NewDecoder(io.LimitReader(res.Body, maxStatsBytes)).Decode(&st); err != nil {
		return 0, fmt.Errorf("decoding the stats of container %s: %w", ref, err)
	}
	return memoryOf(st.MemoryStats, ref)
}

// memoryOf is usage minus the inactive file cache, the docker CLI's rule: cgroup v1
// names it total_inactive_file, v2 inactive_file.
func memoryOf(m container.MemoryStats, ref string) (int64, error) {
	if m.Usage == 0 {
		return 0, fmt.Errorf("container %s reports no memory use: it does not run", ref)
	}
	use := m.Usage
	cache, ok := m.Stats["total_inactive_file"]
	if !ok {
		cache = m.Stats["inactive_file"]
	}
	if cache < use {
		use -= cache
	}
	return int64(min(use, 1<<62)), nil
}
