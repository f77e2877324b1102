package activator

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
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

// blockedLookupRuntime's Running waits for release, counting the calls under way.
type blockedLookupRuntime struct {
	*fake.Runtime
	release  chan struct{}
	inflight *atomic.Int32
}

func (b blockedLookupRuntime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	b.inflight.Add(1)
	defer b.inflight.Add(-1)
	<-b.release
	return b.Runtime.Running(ctx, spec)
}

// waitingForLookup counts the goroutines waiting in lookUp for their turn, as their
// stacks say.
func waitingForLookup() int {
	buf := make([]byte, 4<<20)
	n := 0
	for _, g := range strings.Split(string(buf[:runtime.Stack(buf, true)]), "\n\n") {
		if strings.Contains(g, " [select") && strings.Contains(g, "activator.(*App).lookUp(") {
			n++
		}
	}
	return n
}

// TestStartupLookupsBounded: apps starting together look for their running instance
// maxLookups at a time, not all at once: 1000 engine requests at once left megabytes of
// idle goroutines and heap holes in a sleeping sact (make bench).
func TestStartupLookupsBounded(t *testing.T) {
	const n = 100
	rt := blockedLookupRuntime{Runtime: &fake.Runtime{}, release: make(chan struct{}), inflight: new(atomic.Int32)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	apps := make([]*App, n)
	for i := range n {
		apps[i] = New(rt, Policy{Spec: backend.Spec{Name: fmt.Sprintf("s%d", i)}, Idle: time.Hour}, Options{})
		wg.Go(func() { apps[i].Run(ctx) })
	}
	deadline := time.Now().Add(10 * time.Second)
	for waitingForLookup() < n-maxLookups {
		if time.Now().After(deadline) {
			close(rt.release)
			t.Fatalf("%d lookups under way at once, %d waiting; want %d and %d", rt.inflight.Load(), waitingForLookup(), maxLookups, n-maxLookups)
		}
		time.Sleep(time.Millisecond) // polls a condition no signal tells
	}
	if got := rt.inflight.Load(); got != maxLookups {
		t.Errorf("%d lookups under way, want %d", got, maxLookups)
	}
	close(rt.release)
	for _, a := range apps {
		<-a.Adopted()
	}
}
