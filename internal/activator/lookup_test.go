package activator

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// deepLookupRuntime's Running takes a deep stack, as an engine request does.
type deepLookupRuntime struct{ *fake.Runtime }

func (d deepLookupRuntime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	deepFrames(64) // about 64 KB
	return d.Runtime.Running(ctx, spec)
}

//go:noinline
func deepFrames(n int) byte {
	var buf [1000]byte
	if n > 0 {
		buf[n] = deepFrames(n - 1)
	}
	return buf[n]
}

// TestSleepingAppsKeepNoLookupStack: the stack the first look for a running instance
// takes is not kept by the goroutine that runs a sleeping app: 1000 idle apps kept 8 MB
// of stacks grown by their engine request (make bench).
func TestSleepingAppsKeepNoLookupStack(t *testing.T) {
	const n = 200
	rt := deepLookupRuntime{&fake.Runtime{}}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	apps := make([]*App, n)
	for i := range n {
		apps[i] = New(rt, Policy{Spec: backend.Spec{Name: fmt.Sprintf("idle%d", i)}, Idle: time.Hour}, Options{})
		wg.Go(func() { apps[i].Run(ctx) })
	}
	for _, a := range apps {
		<-a.Adopted()
	}
	runtime.ReadMemStats(&after)
	// A goroutine asleep in Run needs 4 KB; one that kept the look's stack, 64 KB or more
	// (32 KB after two collections).
	if per := (int64(after.StackInuse) - int64(before.StackInuse)) / n; per > 16<<10 {
		t.Errorf("each sleeping app holds %d KB of stack", per>>10)
	}
}
