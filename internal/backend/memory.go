package backend

import "context"

// MemoryMeter is implemented by runtimes that can tell how much memory a running app uses.
// sact samples it every few seconds for running apps only: for `sact status`, the API and
// /metrics, and so that pool.memory_budget counts an app without a memory limit by what
// it uses rather than as nothing.
type MemoryMeter interface {
	// MemoryUsage returns the app's memory in use, in bytes, without the page cache the
	// kernel can drop (as `docker stats` shows it). An app that does not run is an error.
	MemoryUsage(ctx context.Context, spec Spec) (int64, error)
}
