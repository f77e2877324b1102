// Package fake is a backend.Runtime that runs nothing, for the tests of the packages
// that drive runtimes (the activator, the daemon, the front door, handoff): one fake with
// the knobs they need, instead of one per package. It keeps every app's state by name.
//
// Its instances listen nowhere: Dial answers for them (ready after BootTime, unless
// NeverReady), or Addr points every instance at a real server the test runs.
package fake

import (
	"context"
	"errors"
	"net"
	"slices"
	"sync"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// Runtime is a fake backend.Runtime and backend.Pauser. Set its knobs before the first
// call, or later through Change; the zero value starts every app at once, ready at once.
type Runtime struct {
	// StartTime is how long Start takes; StopTime, Stop (docker stop takes a while, and
	// races happen in there).
	StartTime, StopTime time.Duration
	// BootTime is how long after Start an instance answers Dial.
	BootTime time.Duration
	// StartErr fails every Start.
	StartErr error
	// ExitOnStart makes every instance exit right after Start, with this Exit.
	ExitOnStart *backend.Exit
	// NeverReady: instances never answer Dial.
	NeverReady bool
	// Addr, if set, is every instance's upstream (tcp): a server the test runs. By
	// default an instance's upstream is tcp "NAME", which only Dial answers.
	Addr string
	// Upstream, if set, gives each new instance's upstream (and overrides Addr): called
	// once per Start.
	Upstream func(spec backend.Spec) backend.Addr
	// Adopt is returned by Running for every app, as if an earlier sact left it running.
	Adopt *backend.Instance

	mu       sync.Mutex
	apps     map[string]*app
	names    map[string]string // upstream address -> app, for Dial
	starting int
	peak     int
	starts   int
	stops    int
	events   []string
	lastSpec backend.Spec
}

// app is one app's fake instance.
type app struct {
	up      bool
	readyAt time.Time
	paused  bool
	exited  chan backend.Exit
	ended   bool // exited is closed
}

func (r *Runtime) app(name string) *app {
	if r.apps == nil {
		r.apps = make(map[string]*app)
	}
	a := r.apps[name]
	if a == nil {
		a = &app{}
		r.apps[name] = a
	}
	return a
}

func (r *Runtime) log(e string) { r.events = append(r.events, e) }

// Start starts spec's app: after StartTime, and answering Dial BootTime later.
func (r *Runtime) Start(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	r.mu.Lock()
	r.starts++
	r.starting++
	r.peak = max(r.peak, r.starting)
	r.lastSpec = spec
	r.log("start " + spec.Name)
	r.mu.Unlock()
	time.Sleep(r.StartTime)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.starting--
	if r.StartErr != nil {
		return nil, r.StartErr
	}
	a := r.app(spec.Name)
	a.exited, a.ended = make(chan backend.Exit, 1), false
	if r.ExitOnStart != nil {
		a.exited <- *r.ExitOnStart
		close(a.exited)
		a.ended = true
	}
	a.up = !r.NeverReady && r.ExitOnStart == nil
	a.readyAt = time.Now().Add(r.BootTime)
	a.paused = false
	inst := &backend.Instance{ID: spec.Name, Upstream: r.upstream(spec), Exited: a.exited}
	r.named(inst, spec.Name)
	return inst, nil
}

// named remembers whose instance answers at inst's upstream.
func (r *Runtime) named(inst *backend.Instance, name string) {
	if r.names == nil {
		r.names = make(map[string]string)
	}
	r.names[inst.Upstream.Address] = name
}

func (r *Runtime) upstream(spec backend.Spec) backend.Addr {
	switch {
	case r.Upstream != nil:
		return r.Upstream(spec)
	case r.Addr != "":
		return backend.Addr{Network: "tcp", Address: r.Addr}
	}
	return backend.Addr{Network: "tcp", Address: spec.Name}
}

// Stop stops spec's app, in StopTime.
func (r *Runtime) Stop(ctx context.Context, spec backend.Spec, grace time.Duration) error {
	r.mu.Lock()
	r.stops++
	r.log("stop " + spec.Name)
	a := r.app(spec.Name)
	a.up, a.paused = false, false
	r.mu.Unlock()
	time.Sleep(r.StopTime)
	return nil
}

// Running returns Adopt: an instance already running, or nil.
func (r *Runtime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.Adopt != nil {
		a := r.app(spec.Name)
		a.up = true
		r.named(r.Adopt, spec.Name)
	}
	return r.Adopt, nil
}

// Pause freezes spec's app.
func (r *Runtime) Pause(ctx context.Context, spec backend.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("pause " + spec.Name)
	r.app(spec.Name).paused = true
	return nil
}

// Unpause thaws spec's app.
func (r *Runtime) Unpause(ctx context.Context, spec backend.Spec) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.log("unpause " + spec.Name)
	r.app(spec.Name).paused = false
	return nil
}

// Dial answers for an instance that is up and booted:
// a connection closed by the far end at once, which is all readiness needs.
func (r *Runtime) Dial(ctx context.Context, network, address string) (net.Conn, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.apps[r.names[address]]
	if a == nil || !a.up || time.Now().Before(a.readyAt) {
		return nil, errors.New("connection refused")
	}
	return Ready(ctx, network, address)
}

// Ready is a dial that always answers, for tests where the upstream does not matter.
func Ready(context.Context, string, string) (net.Conn, error) {
	c1, c2 := net.Pipe()
	c2.Close()
	return c1, nil
}

// Crash makes name's running instance exit as if killed from outside.
func (r *Runtime) Crash(name string) { r.Exit(name, backend.Exit{Code: 137, Reason: "killed"}) }

// Exit makes name's running instance exit with e; a no-op if it has none, or it exited.
func (r *Runtime) Exit(name string, e backend.Exit) {
	r.mu.Lock()
	defer r.mu.Unlock()
	a := r.app(name)
	if a.exited == nil || a.ended {
		return
	}
	a.up, a.ended = false, true
	a.exited <- e
	close(a.exited)
}

// Change changes knobs after the first call: f runs with the Runtime's lock held.
func (r *Runtime) Change(f func(*Runtime)) {
	r.mu.Lock()
	defer r.mu.Unlock()
	f(r)
}

// Counts returns how many Starts and Stops were asked for, of every app.
func (r *Runtime) Counts() (starts, stops int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.starts, r.stops
}

// Peak is the most Starts that ran at once.
func (r *Runtime) Peak() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.peak
}

// LastSpec is the spec of the last Start.
func (r *Runtime) LastSpec() backend.Spec {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.lastSpec
}

// IsPaused reports whether name is frozen.
func (r *Runtime) IsPaused(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.apps[name] != nil && r.apps[name].paused
}

// Events is what was asked, in order: "start NAME", "stop NAME", "pause NAME",
// "unpause NAME".
func (r *Runtime) Events() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.events)
}

// HealthWaiting is a Runtime with health checks (backend.HealthWaiter): its instances
// are healthy once Healthy is closed.
type HealthWaiting struct {
	*Runtime
	Healthy chan struct{}
}

// WaitHealthy returns once h.Healthy is closed.
func (h HealthWaiting) WaitHealthy(ctx context.Context, spec backend.Spec, inst *backend.Instance) error {
	select {
	case <-h.Healthy:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

var (
	_ backend.Pauser       = (*Runtime)(nil)
	_ backend.HealthWaiter = HealthWaiting{}
)

// Kind is a kind of app that runs on R, for tests of config and the daemon: an app that
// sets Key: TEXT is of it, and TEXT is its spec's Image (so a reload that changes it
// changes what the app runs). Kinds with different keys have runtimes of their own.
type Kind struct {
	Key string
	R   *Runtime
}

// Info is backend.Kind's.
func (k Kind) Info() backend.KindInfo {
	return backend.KindInfo{Name: k.Key, Describe: "fake " + k.Key, Help: "a fake app", Runs: "a fake app",
		Select: []string{k.Key}, Runtime: "fake-" + k.Key}
}

// Decode is backend.Kind's.
func (k Kind) Decode(s backend.Settings, spec *backend.Spec) { spec.Image = s.String(k.Key, nil) }

// NewRuntime is backend.Kind's: R.
func (k Kind) NewRuntime(context.Context, backend.Deps) (backend.Runtime, error) { return k.R, nil }

var _ backend.Kind = Kind{}
