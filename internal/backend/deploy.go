package backend

import (
	"context"
	"time"
)

// Deployer is implemented by runtimes that can run a second incarnation of an app beside
// the one that serves, so that a new version replaces a running app without a cold start
// (issue 17): the new one starts, gets ready, takes the new connections, and the old one
// drains and goes.
//
// The activator calls these for one app one at a time, never concurrently with its Start
// or Stop of that app.
type Deployer interface {
	// StartNext creates a new incarnation from spec beside the running one and starts it.
	// It returns nil and an error for a spec it cannot run twice at once (a fixed
	// upstream both would bind, say): ErrCannotDeploy. A handoff app's two share sact's
	// listening sockets; the caller lets the new one's shim fetch them.
	StartNext(ctx context.Context, spec Spec) (*Instance, error)
	// Promote makes next, from StartNext, the app's incarnation: the one Start, Stop and
	// Running act on from now on, under the app's usual name. old keeps running.
	Promote(ctx context.Context, spec Spec, old, next *Instance) error
	// Retire stops an incarnation that no longer serves (SIGTERM, SIGKILL after grace)
	// and removes it: an old one after its drain, or a next one that never got ready.
	Retire(ctx context.Context, spec Spec, inst *Instance, grace time.Duration) error
	// Outdated says why the running inst is not what spec makes now ("its image was
	// rebuilt"), or "" if it is; and names what spec makes now (its settings and image),
	// so that a version whose deploy failed is not tried again for every image event.
	Outdated(ctx context.Context, spec Spec, inst *Instance) (why, version string, err error)
	// Tail returns inst's last log lines, for the log line that reports a failed deploy.
	Tail(ctx context.Context, inst *Instance) string
}

// InstancePider is implemented by runtimes that can tell the host pid of one
// incarnation's first process: a deploy's next one, before it has the app's name, which
// handoff lets fetch the listening sockets beside the running one.
type InstancePider interface {
	InstancePid(ctx context.Context, inst *Instance) (int, error)
}

// Watcher is implemented by runtimes that see what happens to an app outside sact: a
// container someone started by hand, an image rebuilt under the app's tag.
type Watcher interface {
	// Watch reports the app's outside events until cancel is called. Events are dropped
	// rather than queued when the receiver lags: each says only "look again".
	Watch(app string) (events <-chan WatchEvent, cancel func())
}

// WatchEvent is something that happened to an app outside sact.
type WatchEvent struct {
	Kind WatchKind
}

// WatchKind says what happened.
type WatchKind int

const (
	// Started: the app's container was started by someone else (docker start).
	Started WatchKind = iota + 1
	// ImageChanged: an image was tagged anew; the app's may be among them.
	ImageChanged
)

// ErrCannotDeploy is StartNext's error for an app whose two incarnations could not run
// side by side: the caller falls back to a restart once the app is idle.
var ErrCannotDeploy = errorString("this app cannot run two incarnations at once")

type errorString string

func (e errorString) Error() string { return string(e) }
