package activator

import (
	"context"
	"slices"
	"sync/atomic"
)

// illegalTransitions counts the moves setState refused to find in the table: the tests
// hold it at zero.
var illegalTransitions atomic.Int64

// transitions are the moves between states, written once: setState refuses (and logs)
// any other, and the package doc draws them.
var transitions = map[State][]State{
	Stopped:  {Starting, Running},          // a start; or an instance adopted by Run
	Starting: {Running, Stopped},           // ready; or failed, timed out
	Running:  {Stopping, Pausing, Stopped}, // idle, evicted, manual, refresh; pause_after; exited
	Stopping: {Stopped},                    //
	Pausing:  {Paused, Running},            // frozen; or the pause failed
	Paused:   {Waking, Stopping, Stopped},  // a connection; idle, evicted...; exited
	Waking:   {Running, Paused},            // thawed; or the thaw failed (then Stopping)
}

// setState moves the app to state to. Called with a.mu held. Whoever waits for a change
// (whileIn) is told.
func (a *App) setState(to State) {
	if from := a.state; from != to && !slices.Contains(transitions[from], to) {
		// A bug of the activator's own, never the app's: say so, and go on.
		a.log.Error("illegal state transition; please report it", "from", from.String(), "to", to.String(), "reason", "not in the activator's transition table")
		illegalTransitions.Add(1)
	}
	// Clients past the relay reach only a Running incarnation: the route goes before
	// a stop or freeze, and comes back with a thaw or a failed pause.
	if from := a.state; from == Running && to != Running {
		a.closeRoute()
	} else if from != Running && to == Running {
		defer a.openRoute()
	}
	a.state = to
	for _, w := range a.changed {
		w.cancel()
	}
	a.changed = nil
}

// await waits out the app's transitions (Starting, Stopping, Pausing, Waking) and returns
// the state it settles in: Stopped, Running or Paused.
func (a *App) await(ctx context.Context) (State, error) {
	a.mu.Lock()
	if err := a.waitOut(ctx, Starting, Stopping, Pausing, Waking); err != nil {
		return 0, err
	}
	st := a.state
	a.mu.Unlock()
	return st, nil
}
