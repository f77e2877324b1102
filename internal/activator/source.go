package activator

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// Source is where the clients, the activity and the open connections of an app come from
// when it accepts its connections itself (handoff): the kernel's view of its listening
// sockets. A relayed app has none: its connections are leases, and its clients come
// through Acquire. Every decision (start, thaw, pause, stop, refresh, backoff) stays the
// App's; a Source only tells what the kernel sees.
type Source interface {
	// Pending blocks until a client waits in the backlog of one of the app's listeners,
	// and returns that listener's address. It is asked only while the app does not run:
	// stopped, or paused (frozen, holding the sockets). ctx ends when ctx of Serve does or
	// when the app's state changes; Pending then returns ctx's error.
	Pending(ctx context.Context, paused bool) (listen string, err error)
	// Refuse closes the connections waiting in the backlogs, so their clients learn at
	// once that the app cannot serve, counts them under reason (FailureReason's, or
	// "app_exited") and says how many. Only while the app does not run.
	Refuse(reason string) int
	// Watch looks at the running app's sockets until ctx ends (the incarnation stopped or
	// was paused), at once and then periodically, and reports every look. It returns only
	// once ctx has ended.
	Watch(ctx context.Context, report func(Activity))
}

// Sharer is a Source whose sockets a second incarnation can fetch beside the running
// one's, so that a handed-off app deploys without a cold start (deploy.go): both accept
// from the same backlogs while the new one boots, the old one takes every client until
// then, and once the new one has taken one the old one is told to stop.
type Sharer interface {
	// Shares reports whether it can share (the runtime tells a new incarnation's pid).
	Shares() bool
	// Share begins one deploy's sharing, before its new incarnation starts.
	Share() Share
}

// Share is one deploy's new incarnation on the app's sockets.
type Share interface {
	// Started names the new incarnation: its first process may fetch the sockets from
	// now on, beside the running one's, until End.
	Started(inst *backend.Instance)
	// Taken blocks until a process of the new incarnation holds a connection it accepted
	// from the sockets (nil), or ctx ends: then ErrNoTraffic if no new connection came
	// meanwhile (the new one had none to take, and nobody waited), else an error saying
	// it took none of them.
	Taken(ctx context.Context) error
	// End: the deploy is over; the new incarnation, if it serves, is the app's own.
	End()
}

// ErrNoTraffic is Share.Taken's when no new connection came while it waited.
var ErrNoTraffic = errors.New("no new connection came while the new incarnation started")

// Activity is one look of a Source at a running app's sockets.
type Activity struct {
	// Active: a connection came, ended or moved a byte since the last look, or the app
	// works on one (CPU), or the kernel could not be read (assume busy: stopping an app
	// that serves is worse than keeping an idle one a little longer).
	Active bool
	// Unknown: the kernel could not be read; Open and Busy are not given, and the last
	// ones stand.
	Unknown bool
	// Open counts the connections open now: they keep the app from being evicted, paused
	// or refreshed as leases do (issue 12), and show in its status.
	Open int
	// Busy counts the connections open or waiting to be accepted: a pending Refresh waits
	// for none.
	Busy int
}

// earlyExit is how soon after its start an app that exits on its own is taken as
// crashing: its queued clients are refused and it is not started again for a backoff,
// instead of being restarted by them at once.
const earlyExit = 10 * time.Second

// Serve runs the app for src until ctx ends, in place of an accept loop: it waits for a
// client in a backlog, starts or thaws the app through Acquire, follows src's looks while
// the app runs, and again. Its caller waits for it to return; Run must run meanwhile.
func (a *App) Serve(ctx context.Context, src Source) {
	select {
	case <-a.adopted:
	case <-ctx.Done():
		return
	}
	a.mu.Lock()
	a.src = true
	if sh, ok := src.(Sharer); ok && sh.Shares() {
		a.sharer.Store(&sh)
	}
	a.mu.Unlock()
	backoff := time.Duration(0)
	for {
		state, err := a.await(ctx)
		if err != nil {
			return
		}
		if a.retiring.Load() && state != Running {
			<-ctx.Done() // taken out by a reload: drained, it is stopped, never started
			return
		}
		wake := Wake{Remote: "backlog"}
		if state != Running {
			// Stopped, or frozen with the sockets: a client in the backlog starts or
			// thaws it. Someone else may start it meanwhile (admin, keep_warm, a
			// dependent): then look again.
			pctx, cancel := a.whileIn(ctx, state)
			listen, err := src.Pending(pctx, state == Paused)
			changed := pctx.Err() != nil
			cancel()
			if ctx.Err() != nil {
				return
			}
			if err != nil {
				if changed {
					continue
				}
				a.log.Error("cannot watch the app's sockets", "reason", err)
				return
			}
			wake.Listen = listen
			if a.retiring.Load() {
				continue // retired meanwhile: the client stays queued until the listeners close
			}
		}
		lease, err := a.Acquire(ctx, wake)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			reason := FailureReason(err)
			n := src.Refuse(reason)
			a.log.Warn("connections refused", "listen", wake.Listen, "count", n, "reason", err)
			continue
		}
		live := lease.Context()
		a.mu.Lock()
		a.srcBusy = -1 // not known before the first look: no refresh meanwhile
		a.mu.Unlock()
		lease.Release() // the app accepts the client itself
		began := time.Now()
		a.follow(ctx, live, src)
		if ctx.Err() != nil {
			return
		}
		if st, err := a.await(ctx); err != nil {
			return
		} else if st == Paused || st == Running {
			continue // paused, not stopped: the app keeps its sockets
		}
		// An app that exits soon after its start, with clients still queued, would be
		// started again at once by them: refuse them and pause, as after a failed start.
		st := a.Status()
		if !st.StopAsked && !st.StopKilled && time.Since(began) < earlyExit {
			backoff = min(max(2*backoff, time.Second), 16*time.Second)
			n := src.Refuse("app_exited")
			a.log.Warn("app exited soon after its start; refusing queued connections", "reason", st.StopReason, "count", n, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				return
			}
		} else {
			backoff = 0
		}
	}
}

// follow runs src's watch of the incarnation until live ends, applying its looks.
func (a *App) follow(ctx, live context.Context, src Source) {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(live, cancel)
	defer stop()
	src.Watch(wctx, a.look)
	a.mu.Lock()
	a.srcOpen, a.srcBusy = 0, -1 // not watched: nothing seen open, nothing known busy
	a.mu.Unlock()
}

// look applies one look of the Source.
func (a *App) look(act Activity) {
	if act.Active || act.Unknown {
		a.Touch()
	}
	if act.Unknown {
		return
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	a.srcOpen, a.srcBusy = max(act.Open, 0), max(act.Busy, 0)
	a.refreshIfIdle()
}

// whileIn returns a context that ends with ctx or as soon as the app leaves state.
func (a *App) whileIn(ctx context.Context, state State) (context.Context, context.CancelFunc) {
	sctx, cancel := context.WithCancel(ctx)
	a.mu.Lock()
	defer a.mu.Unlock()
	// Those of earlier waits that ended without a change (a client came, and its start
	// failed fast) go: a flood of refused clients must not grow the list.
	a.changed = slices.DeleteFunc(a.changed, func(w stateWait) bool { return w.ctx.Err() != nil })
	if a.state != state {
		cancel()
	} else {
		a.changed = append(a.changed, stateWait{sctx, cancel})
	}
	return sctx, cancel
}

// stateWait is a whileIn context, ended at the next change of state.
type stateWait struct {
	ctx    context.Context
	cancel context.CancelFunc
}

// Retire marks the app as taken out by a reload and reports whether it runs, so that its
// connections must drain before it is stopped: Serve goes on following them, and never
// starts the app again.
func (a *App) Retire() bool {
	a.retiring.Store(true)
	switch a.State() {
	case Running, Starting, Waking:
		return true
	}
	return false
}
