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

// writableDirs are the host directories that some app can write: every app's bind
// sources and the handoff directories. An app's unix upstream is resolved without links
// beneath any of them, not only beneath its own: every container is hostile, and one may
// share a directory with another. The set only grows: a container that still runs with a
// volume a reload removed from its app keeps writing there.
type writableDirs struct {
	mu   sync.Mutex
	dirs atomic.Pointer[[]string]
}

// addWritable adds the directories cfg's apps can write.
func (d *daemon) addWritable(cfg *config.Config) {
	w := &d.writable
	w.mu.Lock()
	defer w.mu.Unlock()
	var dirs []string
	if old := w.dirs.Load(); old != nil {
		dirs = slices.Clone(*old)
	}
	add := func(dir string) {
		dir = filepath.Clean(dir)
		if !slices.Contains(dirs, dir) {
			dirs = append(dirs, dir)
		}
	}
	for _, app := range cfg.Apps {
		for _, dir := range (backend.Spec{Volumes: app.Volumes}).BindSources() {
			add(dir)
		}
	}
	add(filepath.Join(d.runDir, "handoff"))
	w.dirs.Store(&dirs)
}

// writableDirs returns the directories some app can write.
func (d *daemon) writableDirs() []string {
	if p := d.writable.dirs.Load(); p != nil {
		return *p
	}
	return nil
}

// dialUpstream is every app's dial of its upstream (readiness, relay, front door).
func (d *daemon) dialUpstream(ctx context.Context, network, address string) (net.Conn, error) {
	return upstream.Dial(ctx, network, address, d.writableDirs())
}
