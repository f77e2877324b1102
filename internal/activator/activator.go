package activator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/events"
	"github.com/sact-project/sact/internal/upstream"
)

// State is where an app is in its lifecycle.
type State int

const (
	Stopped State = iota
	Starting
	Running
	Stopping
	Pausing // being frozen after pause_after
	Paused  // frozen: memory kept, no CPU; the next connection thaws it
	Waking  // being thawed
	// Broken is never a state of the activator's own: the daemon reports it for an app
	// it cannot serve at all (its handoff cannot be set up), while it retries.
	Broken
)

func (s State) String() string {
	switch s {
	case Stopped:
		return "stopped"
	case Starting:
		return "starting"
	case Running:
		return "running"
	case Stopping:
		return "stopping"
	case Pausing:
		return "pausing"
	case Paused:
		return "paused"
	case Waking:
		return "waking"
	case Broken:
		return "broken"
	}
	return fmt.Sprintf("State(%d)", int(s))
}

// Errors returned by Acquire. They wrap the underlying cause where there is one.
var (
	// ErrQueueFull: MaxWaiting connections already wait for the app to start.
	ErrQueueFull = errors.New("too many connections waiting for the app to start")
	// ErrStartFailed: the app's last start failed; see the wrapped error.
	ErrStartFailed = errors.New("app failed to start")
	// ErrStartTimeout: the app's last start did not get ready within StartTimeout; it
	// comes wrapped in ErrStartFailed.
	ErrStartTimeout = errors.New("app not ready within its start_timeout")
	// ErrClosed: sact is shutting down.
	ErrClosed = errors.New("sact is shutting down")
)

// QueueWait is how long a start may wait for its dependencies and for the pool (a
// running slot under max_running, a token under start_concurrency) before start_timeout,
// which bounds the start itself, begins.
const QueueWait = 5 * time.Minute

// FailureReason names why Acquire failed, for the metric of failed connections: a
// short, fixed set of values.
func FailureReason(err error) string {
	switch {
	case errors.Is(err, ErrQueueFull):
		return "queue_full"
	case errors.As(err, new(*upstream.UnsafePathError)):
		return "upstream_unsafe"
	case errors.Is(err, ErrStartTimeout):
		return "start_timeout"
	case errors.Is(err, ErrStartFailed):
		return "start_failed"
	case errors.Is(err, ErrPoolFull):
		return "pool_full"
	case errors.Is(err, ErrClosed):
		return "shutting_down"
	case errors.Is(err, context.Canceled):
		return "client_gone"
	case errors.Is(err, context.DeadlineExceeded):
		return "wait_timeout"
	}
	return "other"
}

// Policy is what the activator needs to know about one app.
type Policy struct {
	Spec backend.Spec
	// Idle: stop after this long without activity. Zero means never stop on idle.
	Idle time.Duration
	// StartTimeout bounds a start from the runtime call until the upstream accepts; zero
	// means 60s.
	StartTimeout time.Duration
	// StopTimeout is the grace between SIGTERM and SIGKILL; zero means 10s.
	StopTimeout time.Duration
	// MaxWaiting bounds the connections held while the app starts; zero means 1024.
	MaxWaiting int
	// KeepWhileOpen makes any open connection, even a silent one, keep the app running.
	KeepWhileOpen bool
	// StopOnExit stops a running app when Run returns (sact exits); by default apps keep
	// running and the next sact adopts them.
	StopOnExit bool
	// PauseAfter freezes the app (the runtime must be a backend.Pauser) after this long
	// without activity; Idle still stops it. Zero never pauses.
	PauseAfter time.Duration
	// KeepRunning, if set, reports whether the app must run at a given moment (min_running,
	// keep_warm windows): then it is started if it is not, and never stopped for idleness
	// or evicted.
	KeepRunning func(time.Time) bool
	// DependencyOnly marks an app that has no clients of its own, only dependents: it stops
	// as soon as the last dependent does.
	DependencyOnly bool
	// Ready is how a start tells the app ready (ready:); the zero value waits until the
	// upstream accepts.
	Ready Readiness
	// DrainTimeout is how long a deploy lets the old incarnation's connections run on
	// before it closes them and removes it (deploy.go); zero means DrainDefault.
	DrainTimeout time.Duration
}

func (p *Policy) setDefaults() {
	if p.StartTimeout <= 0 {
		p.StartTimeout = 60 * time.Second
	}
	if p.StopTimeout <= 0 {
		p.StopTimeout = 10 * time.Second
	}
	if p.MaxWaiting <= 0 {
		p.MaxWaiting = 1024
	}
}

// Options are the knobs shared by all apps; the zero value works.
type Options struct {
	// Logger receives one line per start, stop and failure. Nil discards.
	Logger *slog.Logger
	// Dial connects to the upstream, for readiness and for Lease.Dial. Nil uses
	// upstream.Dial with the app's own BindSources as the directories it can write, so a
	// link the app plants in them is never followed.
	Dial func(ctx context.Context, network, address string) (net.Conn, error)
	// FailBackoff is how long connections fail fast after a failed start; it doubles with
	// each consecutive failure up to 16 times its value. Zero means 1s.
	FailBackoff time.Duration
	// Pool, if set, is shared by all apps and limits how many run and start at once.
	Pool *Pool
	// Observe, if set, is told of every start ("start", "start_failed") and how long it
	// took, for metrics. It is called with the app's lock held: it must be quick.
	Observe func(app, event string, took time.Duration)
	// Report, if set, is told of every start, failed start, stop, exit and pause as an
	// event (GET /api/events). It is called with the app's lock held: it must not block.
	Report func(events.Event)
	// Bypass, if set, sends the app's clients on this host past the relay to a running
	// incarnation (bypass.go). It is the one option that is the app's own.
	Bypass Bypass
}

// Wake describes what caused a start, for the log.
type Wake struct {
	Remote string // client address
	Listen string // the address the connection came in on
	Path   string // HTTP path, if known
}

// App is one app's state machine. Create it with New, run it with Run, and hand out
// upstreams with Acquire.
type App struct {
	rt backend.Runtime
	// policy is swapped whole by a reload (SetPolicy); readers take one snapshot with pol().
	policy  atomic.Pointer[Policy]
	log     *slog.Logger
	dial    func(ctx context.Context, network, address string) (net.Conn, error)
	backoff time.Duration

	adopted  chan struct{} // closed once Run has looked for an already running instance
	pool     *Pool
	observer func(app, event string, took time.Duration)
	report   func(events.Event)
	deps     []*App // started before this app, kept while it runs

	// ctx is Run's context: starts and stops derive from it, so shutdown aborts them.
	ctx context.Context
	wg  sync.WaitGroup // goroutines started by the app; Run waits for them

	mu    sync.Mutex
	state State
	since time.Time
	// done is closed when the current start or stop finishes.
	done    chan struct{}
	inst    *backend.Instance
	conns   map[*Lease]struct{}
	waiting int
	// live is cancelled when the current incarnation stops: it closes its connections.
	live       context.Context
	killLive   context.CancelFunc
	idleTimer  *time.Timer
	lastActive time.Time // last accept or close; bytes moved are on the leases
	// touched is when Touch last saw activity outside any lease, in unix nanos: atomic,
	// because the HTTP front door touches on every read and write.
	touched atomic.Int64
	// The last failed start, and how many failed in a row.
	lastErr  error
	failedAt time.Time
	failures int
	closed   bool
	// For status.
	coldStarts    int
	startFailures int
	accepted      int
	stops         map[string]int // by reason
	lastStart     time.Time
	lastStartTook time.Duration
	stopReason    string
	stopAsked     bool // the last stop was sact's (idle, manual, ...), not the app's exit
	stopKilled    bool // the last exit was a signal from outside (docker stop, kill, restart)
	refused       int
	refusedLogged time.Time
	// unsafe is the last unsafe upstream logged (an *upstream.UnsafePathError's text),
	// so that each cause is logged once, not once per readiness poll or connection.
	unsafe atomic.Pointer[string]
	// pins counts the dependents that run and need this app; pinned is whether this
	// incarnation holds a pin on each of deps.
	pins   int
	pinned []*App
	// warming is whether the keep_warm loop runs; refresh, whether a Refresh waits for the
	// app's connections to end.
	warming bool
	refresh bool
	// memory is the running incarnation's measured memory use in bytes, 0 if unknown
	// (SetMemory); atomic, as the pool reads it under its own lock.
	memory atomic.Int64
	// instHash is the Spec.Hash the running instance was started or adopted with.
	instHash string
	dep      deployState // deploys without a cold start (deploy.go)
	// src is whether a Source (Serve) tells the app's connections: srcOpen those open
	// at its last look, srcBusy those open or queued (-1: not known). changed are
	// cancelled at the next change of state (whileIn).
	src              bool
	srcOpen, srcBusy int
	// sharer is the Source, if it lets a deploy's new incarnation share its sockets.
	sharer  atomic.Pointer[Sharer]
	changed []stateWait
	// retiring: a reload took the app out; Serve never starts it again.
	retiring atomic.Bool
	// bypass routes local clients past the relay; route is the running incarnation's
	// route, routeHeld when it was held for an idle decision (zero: not held), and
	// bypassErr the last cause logged of a route that could not be made (bypass.go).
	bypass    Bypass
	route     Route
	routeHeld time.Time
	bypassErr string
	bypassed  uint64 // connects sent past the relay by routes now closed
}

// New returns an app; nothing happens until Run.
func New(rt backend.Runtime, policy Policy, opts Options) *App {
	policy.setDefaults()
	a := &App{
		rt:       rt,
		log:      opts.Logger,
		dial:     opts.Dial,
		backoff:  opts.FailBackoff,
		adopted:  make(chan struct{}),
		conns:    make(map[*Lease]struct{}),
		pool:     opts.Pool,
		observer: opts.Observe,
		report:   opts.Report,
		bypass:   opts.Bypass,
		stops:    make(map[string]int),
	}
	if a.log == nil {
		a.log = slog.New(slog.DiscardHandler)
	}
	a.policy.Store(&policy)
	a.log = a.log.With("app", policy.Spec.Name)
	if a.dial == nil {
		a.dial = func(ctx context.Context, network, address string) (net.Conn, error) {
			return upstream.Dial(ctx, network, address, upstream.NewDirs(a.pol().Spec.BindSources()))
		}
	}
	if a.backoff <= 0 {
		a.backoff = time.Second
	}
	return a
}

// SetDependencies sets the apps started before this one (depends_on). A reload may set
// them again; a running incarnation keeps the ones it pinned.
func (a *App) SetDependencies(deps []*App) {
	a.mu.Lock()
	a.deps = deps
	a.mu.Unlock()
}

// Name returns the app's name.
func (a *App) Name() string { return a.pol().Spec.Name }

func (a *App) pol() *Policy { return a.policy.Load() }

// Adopted is closed once Run has looked for an instance that already runs.
func (a *App) Adopted() <-chan struct{} { return a.adopted }

// Policy returns the app's current policy.
func (a *App) Policy() Policy { return *a.pol() }

// SetPolicy replaces the app's policy (a reload). What runs keeps running: a new Spec
// applies from the next start, which Refresh can bring forward; timings apply at once.
// The name must stay the same.
func (a *App) SetPolicy(p Policy) {
	p.setDefaults()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.policy.Store(&p)
	if a.closed || a.ctx == nil {
		return
	}
	if p.KeepRunning != nil && !a.warming {
		a.startKeepWarm()
	}
	if a.state == Running || a.state == Paused {
		a.armIdle(0) // the idle clock decides again with the new idle and pause_after
	}
}

// Refresh restarts the app with its current policy as soon as no connection is open and
// no dependent needs it: at once if it is idle, else when the last one ends. The next
// connection then starts it anew. A reload that changes an app's Spec calls it.
func (a *App) Refresh() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	if a.state == Running && a.canDeploy() {
		a.beginDeploy("config changed") // no wait for idle, no cold start
		return
	}
	a.refresh = true
	a.refreshIfIdle()
}

// RunsCurrentSpec reports whether the app runs an instance started (or adopted) with its
// current policy's Spec: a reload during its start, while it waited for the pool, needs no
// restart (issue 13).
func (a *App) RunsCurrentSpec() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return (a.state == Running || a.state == Paused) && a.instHash == a.pol().Spec.Hash
}

// refreshIfIdle stops the app for a pending Refresh if nothing holds it. Called with a.mu
// held.
func (a *App) refreshIfIdle() {
	busy := a.open() > 0
	if a.src {
		busy = len(a.conns) > 0 || a.srcBusy != 0
	}
	if !a.refresh || a.closed || busy || a.pins > 0 {
		return
	}
	switch a.state {
	case Running, Paused:
		a.beginStop("config changed", 0)
	case Stopped:
		a.refresh = false
	}
}

// Run adopts an instance that already runs, then serves until ctx ends. It returns after
// every goroutine of the app has finished, having stopped the app if StopOnExit is set.
func (a *App) Run(ctx context.Context) error {
	a.mu.Lock()
	a.ctx = ctx
	a.since = time.Now()
	a.mu.Unlock()

	adoptSpec := a.pol().Spec
	inst, err := a.lookUp(ctx, adoptSpec)
	if err != nil {
		// Not fatal: the next connection starts it, and Start finds a running container.
		a.log.Warn("cannot tell whether app already runs", "err", err)
	}
	a.mu.Lock()
	if inst != nil {
		a.log.Info("adopted running app", "container", inst.ID, "upstream", inst.Upstream.String())
		a.becomeRunning(inst)
		a.instHash = adoptSpec.Hash
	}
	a.mu.Unlock()
	close(a.adopted)
	outside, stopWatching := a.watchOutside()

	if inst != nil && len(a.deps) > 0 {
		// Adopted: its dependencies must be kept (and started, if they are not) as for a
		// start of its own.
		a.wg.Add(1)
		go func() {
			defer a.wg.Done()
			if err := a.startDeps(ctx); err != nil {
				a.log.Warn("cannot start the dependencies of an adopted app", "err", err)
			}
		}()
	}
	if a.pol().KeepRunning != nil {
		a.mu.Lock()
		a.startKeepWarm()
		a.mu.Unlock()
	}
	for done := false; !done; {
		select {
		case <-ctx.Done():
			done = true
		case ev := <-outside:
			a.outside(ctx, ev)
		}
	}
	stopWatching()

	a.mu.Lock()
	a.closed = true
	if a.idleTimer != nil {
		a.idleTimer.Stop()
	}
	a.mu.Unlock()
	a.wg.Wait()

	a.mu.Lock()
	wasPaused := a.state == Paused
	stop := a.pol().StopOnExit && (a.state == Running || wasPaused)
	if stop {
		a.killLive()
		a.setState(Stopping)
	}
	a.mu.Unlock()
	if stop {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), a.pol().StopTimeout+10*time.Second)
		defer cancel()
		if p, ok := a.rt.(backend.Pauser); ok && wasPaused {
			p.Unpause(sctx, a.pol().Spec) // a frozen process cannot act on SIGTERM
		}
		if err := a.rt.Stop(sctx, a.pol().Spec, a.pol().StopTimeout); err != nil {
			return fmt.Errorf("stopping app %q on exit: %w", a.Name(), err)
		}
		a.log.Info("stopped app", "reason", "sact exiting")
	}
	return nil
}

// Acquire returns a lease on a running instance, starting the app if it is not running and
// waiting (bounded by ctx and MaxWaiting) until it is ready. The caller must Release it.
func (a *App) Acquire(ctx context.Context, w Wake) (*Lease, error) {
	select {
	case <-a.adopted:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	a.mu.Lock()
	waited := false
	for {
		if a.closed {
			a.mu.Unlock()
			return nil, ErrClosed
		}
		switch a.state {
		case Running:
			if waited {
				a.waiting--
			}
			l := a.newLease()
			a.mu.Unlock()
			return l, nil
		case Stopped:
			if a.lastErr != nil && time.Since(a.failedAt) < a.failBackoff() {
				if waited {
					a.waiting--
				}
				err := a.lastErr
				a.mu.Unlock()
				return nil, err
			}
			a.beginStart(w, false)
		case Paused:
			a.beginWake(w)
		}
		// Starting, Stopping, Pausing or Waking: wait for the transition to finish, then
		// look again.
		if !waited {
			if a.waiting >= a.pol().MaxWaiting {
				a.refuse()
				a.mu.Unlock()
				return nil, ErrQueueFull
			}
			a.waiting++
			waited = true
		}
		done := a.done
		a.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			a.mu.Lock()
			a.waiting--
			a.mu.Unlock()
			return nil, ctx.Err()
		}
		a.mu.Lock()
	}
}

// refuse logs a refused connection, at most once a second so a flood can't flood the log.
func (a *App) refuse() {
	a.refused++
	if time.Since(a.refusedLogged) >= time.Second {
		a.log.Warn("refusing connection", "reason", "too many waiting for start",
			"max_waiting", a.pol().MaxWaiting, "refused", a.refused)
		a.refusedLogged = time.Now()
	}
}

func (a *App) failBackoff() time.Duration {
	d := a.backoff
	for i := 1; i < a.failures && d < 16*a.backoff; i++ {
		d *= 2
	}
	return d
}

// beginStart moves Stopped -> Starting. Called with a.mu held.
func (a *App) beginStart(w Wake, manual bool) {
	a.setState(Starting)
	a.since = time.Now()
	a.done = make(chan struct{})
	a.lastStart = a.since
	attrs := []any{"remote", w.Remote, "listen", w.Listen}
	if w.Path != "" {
		attrs = append(attrs, "path", w.Path)
	}
	if manual {
		attrs = []any{"reason", "manual"}
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.start(attrs)
	}()
}

func (a *App) start(wokeBy []any) {
	began := time.Now()
	a.log.Info("starting app", wokeBy...)
	// Waiting for dependencies and for the pool (a running slot, a start token) is not
	// the app's start: a storm of 250 cold starts queues for minutes, and start_timeout
	// would fail apps that never had their turn. The queue gets QueueWait of its own.
	qctx, qcancel := context.WithTimeout(a.ctx, a.pol().StartTimeout+QueueWait)
	defer qcancel()
	var inst *backend.Instance
	var spec backend.Spec
	err := a.startDeps(qctx)
	if err == nil && a.pool != nil {
		var done func()
		if done, err = a.pool.admit(qctx, a); err == nil {
			defer done()
		}
	}
	queued := time.Since(began)
	ctx, cancel := context.WithTimeout(a.ctx, a.pol().StartTimeout)
	defer cancel()
	var startCall time.Duration // the runtime's own share: what sact adds is the rest
	if err == nil {
		// The config is read after the queue: a Refresh asked for while the start waited
		// (a reload that changed the app) is done by this start, not by a restart of
		// what it starts (issue 13). One asked for from here on still restarts it.
		a.mu.Lock()
		spec = a.pol().Spec
		a.refresh = false
		a.mu.Unlock()
		t := time.Now()
		inst, err = a.rt.Start(ctx, spec)
		startCall = time.Since(t)
	}
	if err == nil {
		err = a.waitReady(ctx, inst)
		if err != nil {
			a.stopFailed(inst)
		}
	}
	took := time.Since(began)

	a.mu.Lock()
	defer a.mu.Unlock()
	a.lastStartTook = took
	if err != nil {
		if ctx.Err() != nil && a.ctx.Err() == nil && !errors.Is(err, errExited) {
			err = fmt.Errorf("%w: start_timeout %s: %w", ErrStartTimeout, a.pol().StartTimeout, err)
		}
		a.failures++
		a.startFailures++
		a.lastErr = fmt.Errorf("%w: %w", ErrStartFailed, err)
		a.observe("start_failed", took)
		a.failedAt = time.Now()
		a.setState(Stopped)
		a.since = a.failedAt
		a.stopReason = "start failed"
		a.stopAsked = false
		a.stopKilled = false
		a.releaseHolds()
		a.log.Error("app failed to start", "duration", took, "err", err, "waiting", a.waiting)
		close(a.done)
		return
	}
	a.failures = 0
	a.lastErr = nil
	a.dep.lastErr = nil // this start runs the current version
	a.coldStarts++
	a.observe("start", took)
	a.log.Info("app ready", "duration", took, "queued", queued, "runtime_start", startCall, "container", inst.ID, "upstream", inst.Upstream.String(), "waiting", a.waiting, "ready", a.pol().Ready.String())
	a.becomeRunning(inst)
	a.instHash = spec.Hash
	close(a.done)
}

var errExited = errors.New("app exited while starting")

// dialUpstream connects to up, logging an unsafe upstream once per cause.
func (a *App) dialUpstream(ctx context.Context, up backend.Addr) (net.Conn, error) {
	c, err := a.dial(ctx, up.Network, up.Address)
	var ue *upstream.UnsafePathError
	if err == nil && a.unsafe.Load() != nil {
		a.unsafe.Store(nil) // fixed: log it again if it comes back
	} else if errors.As(err, &ue) {
		msg := ue.Error()
		if last := a.unsafe.Swap(&msg); last == nil || *last != msg {
			a.log.Error("refusing unsafe upstream", "path", ue.Path, "reason", ue.Reason, "at", ue.At, "err", err)
		}
	}
	return c, err
}

// stopFailed stops an instance that started but never became ready, so that the next try
// starts from scratch instead of finding a half-alive container.
func (a *App) stopFailed(inst *backend.Instance) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.pol().StopTimeout+10*time.Second)
	defer cancel()
	if err := a.rt.Stop(ctx, a.pol().Spec, a.pol().StopTimeout); err != nil {
		a.log.Warn("cannot stop app that failed to start", "err", err)
	}
}

// becomeRunning enters Running with inst. Called with a.mu held.
func (a *App) becomeRunning(inst *backend.Instance) {
	if a.pool != nil {
		a.pool.markRunning(a)
	}
	a.inst = inst // before Running: entering it routes inst past the relay
	a.setState(Running)
	a.since = time.Now()
	a.lastActive = a.since
	a.live, a.killLive = context.WithCancel(context.WithoutCancel(a.ctx))
	a.armIdle(a.idleCheckAfter())
	live := a.live
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		a.watchExit(inst, live)
	}()
}

// watchExit notices an instance that stops without sact asking (crash, OOM, docker stop).
func (a *App) watchExit(inst *backend.Instance, live context.Context) {
	select {
	case e, ok := <-inst.Exited:
		a.mu.Lock()
		defer a.mu.Unlock()
		if a.inst != inst || (a.state != Running && a.state != Paused) {
			return // sact stopped it, or it was replaced
		}
		if !ok {
			e = backend.Exit{Code: -1, Reason: "gone"}
		}
		a.log.Warn("app exited", "reason", e.Reason, "code", e.Code, "container", inst.ID, "logs", e.Logs)
		a.stopReason = e.Reason
		a.stopAsked = false
		a.stopKilled = e.Killed
		a.countStop(e.Reason)
		a.enterStopped()
	case <-live.Done():
	case <-a.ctx.Done():
	}
}

// enterStopped ends the current incarnation. Called with a.mu held.
func (a *App) enterStopped() {
	a.setState(Stopped)
	a.since = time.Now()
	a.inst = nil
	a.refresh = false // the next start uses the current policy
	a.memory.Store(0)
	// Leases of the ended incarnation are being closed; they must not count for the next.
	a.conns = make(map[*Lease]struct{})
	if a.killLive != nil {
		a.killLive()
	}
	if a.idleTimer != nil {
		a.idleTimer.Stop()
	}
	a.stopDrain()
	a.releaseHolds()
}

// armIdle (re)arms the idle timer to fire after d. Called with a.mu held.
func (a *App) armIdle(d time.Duration) {
	if a.pol().Idle <= 0 {
		return
	}
	if a.idleTimer == nil {
		a.idleTimer = time.AfterFunc(d, a.checkIdle)
		return
	}
	a.idleTimer.Reset(d)
}

// checkIdle runs when the app may have become idle: it stops it, or re-arms the timer for
// the earliest moment it could be.
func (a *App) checkIdle() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if (a.state != Running && a.state != Paused) || a.closed {
		return
	}
	// A route held for this decision goes back unless the pause or stop goes ahead.
	proceed := false
	defer func() {
		if !proceed {
			a.resumeRoute()
		}
	}()
	now := time.Now()
	if a.pol().KeepWhileOpen && a.open() > 0 || a.pins > 0 || a.keepRunning(now) {
		a.armIdle(a.idleCheckAfter())
		return
	}
	last := a.lastActivity()
	quiet := now.Sub(last)
	if a.state == Running && a.pol().PauseAfter > 0 && a.pol().PauseAfter < a.pol().Idle {
		if quiet < a.pol().PauseAfter {
			a.armIdle(a.pol().PauseAfter - quiet)
			return
		}
		if a.unseenOpen() > 0 {
			// Connections sact cannot close (the app accepted them itself): a request on
			// one would stall in the frozen app, and nothing would thaw it (issue 12).
			// Look again a pause_after later; idle still stops it.
			if rest := a.pol().Idle - quiet; rest > a.pol().PauseAfter {
				a.armIdle(a.pol().PauseAfter)
				return
			}
		} else if _, ok := a.rt.(backend.Pauser); ok {
			if proceed = true; a.settleRoute() {
				return
			}
			a.beginPause("idle", quiet)
			return
		}
	}
	if rest := a.pol().Idle - quiet; rest > 0 {
		a.armIdle(rest)
		return
	}
	if proceed = true; a.settleRoute() {
		return
	}
	a.beginStop("idle", quiet)
}

// beginStop moves Running -> Stopping. Called with a.mu held.
func (a *App) beginStop(reason string, idleFor time.Duration) {
	inst := a.inst
	wasPaused := a.state == Paused
	a.setState(Stopping)
	a.since = time.Now()
	a.done = make(chan struct{})
	a.killLive() // closes connections still open: silent ones, or all on a manual stop
	if a.idleTimer != nil {
		a.idleTimer.Stop()
	}
	open := len(a.conns)
	a.log.Info("stopping app", "reason", reason, "container", inst.ID, "open_connections", open)
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		began := time.Now()
		ctx, cancel := context.WithTimeout(context.WithoutCancel(a.ctx), a.pol().StopTimeout+10*time.Second)
		defer cancel()
		if wasPaused {
			// A frozen process cannot act on SIGTERM: thaw it first.
			if p, ok := a.rt.(backend.Pauser); ok {
				p.Unpause(ctx, a.pol().Spec)
			}
		}
		err := a.rt.Stop(ctx, a.pol().Spec, a.pol().StopTimeout)
		a.mu.Lock()
		defer a.mu.Unlock()
		if err != nil {
			a.log.Error("cannot stop app", "reason", reason, "err", err)
		} else {
			attrs := []any{"reason", reason, "duration", time.Since(began), "container", inst.ID, "closed_connections", open}
			if reason == "idle" {
				attrs = append(attrs, "idle_for", idleFor.Round(time.Millisecond))
			}
			a.log.Info("stopped app", attrs...)
		}
		a.stopReason = reason
		a.stopAsked = true
		a.stopKilled = false
		a.countStop(reason)
		a.enterStopped()
		close(a.done)
	}()
}

// Start starts the app by hand (admin API) and waits until it is ready or failed; it skips
// the fail-fast backoff.
func (a *App) Start(ctx context.Context) error {
	select {
	case <-a.adopted:
	case <-ctx.Done():
		return ctx.Err()
	}
	a.mu.Lock()
	for {
		if a.closed {
			a.mu.Unlock()
			return ErrClosed
		}
		switch a.state {
		case Running:
			a.mu.Unlock()
			return nil
		case Stopped:
			a.lastErr = nil
			a.beginStart(Wake{}, true)
		}
		done := a.done
		a.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
		a.mu.Lock()
		if a.state == Stopped && a.lastErr != nil {
			err := a.lastErr
			a.mu.Unlock()
			return err
		}
	}
}

// Stop stops the app by hand (admin API), closing its open connections, and waits until it
// is stopped.
func (a *App) Stop(ctx context.Context) error {
	return a.StopFor(ctx, "manual")
}

// StopFor is Stop with the reason status and the log give.
func (a *App) StopFor(ctx context.Context, reason string) error {
	a.mu.Lock()
	if err := a.waitOut(ctx, Starting, Pausing, Waking); err != nil {
		return err
	}
	if a.state == Running || a.state == Paused {
		a.beginStop(reason, 0)
	}
	done := a.done
	state := a.state
	a.mu.Unlock()
	if state == Stopping {
		select {
		case <-done:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

// Status is a snapshot of an app for `sact status` and metrics.
type Status struct {
	Name          string
	State         State
	Since         time.Time
	Open          int
	Waiting       int
	LastActivity  time.Time
	ColdStarts    int
	LastStart     time.Time
	LastStartTook time.Duration
	StopReason    string
	// StopAsked is whether sact stopped it last time (idle, manual, evicted, config
	// changed...) rather than it exiting or failing on its own.
	StopAsked bool
	// StopKilled is whether its last exit came from a signal sent from outside sact
	// (docker stop, kill or restart): not a failure of the app's own.
	StopKilled bool
	LastError  string
	Refused    int
	// Pins counts the running dependents that keep this app.
	Pins int
	// Totals since sact started: failed starts, connections (leases) served, and stops
	// by reason (idle, evicted, manual, exited, oom-killed, ...).
	StartFailures int
	Accepted      int
	Stops         map[string]int
	// Memory is the running app's measured memory use in bytes; 0 if unknown or not
	// running.
	Memory int64
	// Deploys without a cold start that swapped in a new incarnation, and those that
	// failed (deploy.go); a failed one's reason is LastError while the old one serves.
	Deploys        int
	DeployFailures int
	// Node is where the running instance runs when not on this host (a swarm node's
	// address); "" otherwise.
	Node string
	// Bypassed: local clients reach the running instance past the relay (bypass.go),
	// and BypassedElsewhere: clients on other hosts too; BypassedConnects counts the
	// connections sent past it since sact started (Accepted includes them).
	Bypassed          bool
	BypassedElsewhere bool
	BypassedConnects  uint64
}

// State is where the app is now: Status without the bookkeeping, for callers on the
// request path.
func (a *App) State() State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state
}

// Status returns a snapshot of the app.
func (a *App) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	last := a.lastActivity()
	s := Status{
		Name: a.Name(), State: a.state, Since: a.since, Open: a.open(), Waiting: a.waiting,
		LastActivity: last, ColdStarts: a.coldStarts, LastStart: a.lastStart,
		LastStartTook: a.lastStartTook, StopReason: a.stopReason, StopAsked: a.stopAsked, StopKilled: a.stopKilled, Refused: a.refused,
		Pins: a.pins, StartFailures: a.startFailures, Accepted: a.accepted,
		Stops: maps.Clone(a.stops), Memory: a.memory.Load(),
	}
	if a.lastErr != nil {
		s.LastError = a.lastErr.Error()
	} else if a.dep.lastErr != nil {
		s.LastError = a.dep.lastErr.Error()
	}
	s.Deploys, s.DeployFailures = a.dep.deploys, a.dep.failures
	s.BypassedConnects = a.bypassed
	if a.route != nil {
		s.Bypassed = a.routeHeld.IsZero()
		if e, ok := a.route.(elsewhere); ok && s.Bypassed {
			s.BypassedElsewhere = e.Elsewhere()
		}
		s.BypassedConnects += a.route.Connects()
	}
	// Served too, if not by the relay: the daily activity and "no traffic for 30 days"
	// count them.
	s.Accepted += int(s.BypassedConnects)
	if a.inst != nil {
		s.Node = a.inst.Node
	}
	return s
}

// Touch records activity that no lease sees: traffic the kernel reports on the sockets of
// an app that accepts its connections itself (handoff), or bytes on the HTTP front door's
// pooled upstream connections. It is one atomic store.
func (a *App) Touch() { a.touched.Store(time.Now().UnixNano()) }

// lastActivity is when anything last happened on the app. Called with a.mu held.
func (a *App) lastActivity() time.Time {
	last := a.lastActive
	if t := time.Unix(0, a.touched.Load()); t.After(last) && a.state == Running {
		last = t
	}
	for l := range a.conns {
		if t := l.lastActive(); t.After(last) {
			last = t
		}
	}
	if t, _ := a.routeActivity(); t.After(last) {
		last = t
	}
	return last
}

// open counts the app's open connections: its leases and those its Source sees.
// Called with a.mu held.
func (a *App) open() int { return len(a.conns) + a.unseenOpen() }

// unseenOpen counts the open connections that hold no lease, as the Source saw them
// last: the app accepted them itself, and sact cannot close them. Called with a.mu held.
func (a *App) unseenOpen() int {
	if a.inst == nil {
		return 0
	}
	_, n := a.routeActivity()
	if a.src {
		n += a.srcOpen
	}
	return n
}

// newLease registers a connection on the running incarnation. Called with a.mu held.
func (a *App) newLease() *Lease {
	now := time.Now()
	l := &Lease{app: a, Upstream: a.inst.Upstream, ctx: a.live}
	l.active.Store(now.UnixNano())
	a.accepted++
	a.lastActive = now
	a.conns[l] = struct{}{}
	return l
}

// Lease is one connection's hold on a running app.
type Lease struct {
	// Upstream is where the app accepts connections.
	Upstream backend.Addr
	app      *App
	ctx      context.Context
	active   atomic.Int64 // unix nanos of the last byte moved
	released atomic.Bool
}

// Dial connects to the lease's upstream. A unix upstream is never reached through a link
// the app could have planted: that is an *upstream.UnsafePathError, logged once per
// cause; the caller counts it (FailureReason says "upstream_unsafe").
func (l *Lease) Dial(ctx context.Context) (net.Conn, error) {
	return l.app.dialUpstream(ctx, l.Upstream)
}

// Context is cancelled when the app stops; the relay closes the connection then.
func (l *Lease) Context() context.Context { return l.ctx }

// EndedWithin reports whether the lease's instance has ended, or ends within d: after a
// failed dial or request, the engine's word that the instance exited may be on its way,
// and a connection that reached a dead instance can then go to a fresh start.
func (l *Lease) EndedWithin(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.ctx.Done():
		return true
	case <-t.C:
		return false
	}
}

// Touch records that bytes moved. It is called on the relay's hot path: one atomic store.
func (l *Lease) Touch() { l.active.Store(time.Now().UnixNano()) }

func (l *Lease) lastActive() time.Time { return time.Unix(0, l.active.Load()) }

// Release ends the lease; the connection's close counts as activity. Safe to call twice.
func (l *Lease) Release() {
	if l.released.Swap(true) {
		return
	}
	a := l.app
	a.mu.Lock()
	delete(a.conns, l) // a no-op if its incarnation already ended
	a.releaseDraining(l)
	a.lastActive = time.Now()
	a.refreshIfIdle()
	a.mu.Unlock()
}
