package daemon

import (
	"context"
	"net"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/upstream"
)

// writableDirs are the host directories that some app or container can write: every
// app's bind sources, the handoff directories, and what the runtimes know of every
// container's mounts (backend.HostDirs). An app's unix upstream is resolved without links
// beneath any of them, not only beneath its own: every container is hostile, and one may
// share a directory with another. The set only grows: a container that still runs with a
// volume a reload removed from its app keeps writing there.
type writableDirs struct {
	mu        sync.Mutex
	fromCfg   []string
	reporters []backend.HostDirs
	// dirs is the set made for dials, and how many directories the runtimes reported
	// when it was made: their lists only grow, so a new length means a new set.
	dirs atomic.Pointer[preparedDirs]
}

type preparedDirs struct {
	reported int
	dirs     *upstream.Dirs
}

// addWritable adds the directories cfg's apps can write, and what rts know.
func (d *daemon) addWritable(cfg *config.Config, rts map[string]backend.Runtime) {
	w := &d.writable
	w.mu.Lock()
	defer w.mu.Unlock()
	add := func(dir string) {
		dir = filepath.Clean(dir)
		if !slices.Contains(w.fromCfg, dir) {
			w.fromCfg = append(w.fromCfg, dir)
		}
	}
	for _, app := range cfg.Apps {
		for _, dir := range (backend.Spec{Volumes: app.Run.Volumes}).BindSources() {
			add(dir)
		}
	}
	add(filepath.Join(d.runDir, "handoff"))
	for _, rt := range rts {
		if hd, ok := rt.(backend.HostDirs); ok && !slices.Contains(w.reporters, hd) {
			w.reporters = append(w.reporters, hd)
		}
	}
	w.dirs.Store(nil)
}

// writableDirs returns the directories some app or container can write, as of now.
func (d *daemon) writableDirs() *upstream.Dirs {
	w := &d.writable
	reported := 0
	w.mu.Lock()
	reporters := w.reporters
	w.mu.Unlock()
	for _, r := range reporters {
		reported += len(r.WritableDirs())
	}
	if p := w.dirs.Load(); p != nil && p.reported == reported {
		return p.dirs
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	lists := [][]string{w.fromCfg}
	reported = 0
	for _, r := range w.reporters {
		l := r.WritableDirs()
		reported += len(l)
		lists = append(lists, l)
	}
	p := &preparedDirs{reported: reported, dirs: upstream.NewDirs(lists...)}
	w.dirs.Store(p)
	return p.dirs
}

// dialUpstream is every app's dial of its upstream (readiness, relay, front door).
func (d *daemon) dialUpstream(ctx context.Context, network, address string) (net.Conn, error) {
	if network != "unix" {
		var nd net.Dialer
		return nd.DialContext(ctx, network, address)
	}
	return upstream.Dial(ctx, network, address, d.writableDirs())
}
