package process

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/sact-project/sact/internal/backend"
)

// MemoryUsage returns the resident memory of the app's process (not of its children),
// from /proc/PID/statm.
func (r *Runtime) MemoryUsage(ctx context.Context, spec backend.Spec) (int64, error) {
	pid, err := r.Pid(ctx, spec)
	if err != nil {
		return 0, err
	}
	if pid == 0 {
		return 0, fmt.Errorf("app %q does not run", spec.Name)
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/statm")
	if err != nil {
		return 0, fmt.Errorf("reading the memory of app %q (pid %d): %w", spec.Name, pid, err)
	}
	return residentBytes(string(b), os.Getpagesize())
}

// residentBytes reads statm's second field, resident pages.
func residentBytes(statm string, pageSize int) (int64, error) {
	f := strings.Fields(statm)
	if len(f) < 2 {
		return 0, fmt.Errorf("unexpected /proc statm %q", statm)
	}
	pages, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || pages < 0 {
		return 0, fmt.Errorf("unexpected /proc statm %q", statm)
	}
	return pages * int64(pageSize), nil
}
