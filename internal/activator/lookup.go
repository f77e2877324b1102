package activator

import (
	"context"

	"github.com/sact-project/sact/internal/backend"
)

// lookUp asks the runtime whether the app already runs, on a goroutine of its own that
// ends with the answer. Run's goroutine sleeps for as long as the app does, and a stack
// keeps what it grew to: the runtime's call (an engine request, HTTP and JSON) takes
// 16 KB or more, and the collector gives back only half of it at each cycle, never below
// four times what the goroutine uses, with an idle sact collecting every two minutes at
// most. 1000 sleeping apps kept 8 MB of stacks so.
func (a *App) lookUp(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	type answer struct {
		inst *backend.Instance
		err  error
	}
	c := make(chan answer, 1)
	go func() {
		inst, err := a.rt.Running(ctx, spec)
		c <- answer{inst, err}
	}()
	r := <-c
	return r.inst, r.err
}
