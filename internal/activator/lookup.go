package activator

import (
	"context"

	"github.com/sact-project/sact/internal/backend"
)

// maxLookups bounds the first looks for a running instance (Runtime.Running) under way
// at once, across every app of the process. At startup every app looks at once: with
// 1000 apps, 1000 engine requests, each on its own connection with its goroutines and
// buffers, left megabytes of idle goroutines and holes in the heap and stack spans that
// a sleeping sact kept; 16 at a time look up 1000 apps sooner than all at once.
const maxLookups = 16

var lookups = make(chan struct{}, maxLookups)

// lookUp asks the runtime whether the app already runs, on a goroutine of its own that
// ends with the answer. Run's goroutine sleeps for as long as the app does, and a stack
// keeps what it grew to: the runtime's call (an engine request, HTTP and JSON) takes
// 16 KB or more, and the collector gives back only half of it at each cycle, never below
// four times what the goroutine uses, with an idle sact collecting every two minutes at
// most. 1000 sleeping apps kept 8 MB of stacks so.
func (a *App) lookUp(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	select {
	case lookups <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	type answer struct {
		inst *backend.Instance
		err  error
	}
	c := make(chan answer, 1)
	go func() {
		defer func() { <-lookups }()
		inst, err := a.rt.Running(ctx, spec)
		c <- answer{inst, err}
	}()
	r := <-c
	return r.inst, r.err
}
