// Package host is sact's side of handoff mode for one app, around the activator: its
// handoff server, the kernel's view of its sockets as the activator's Source, and taking
// its sockets back from an instance an earlier sact left running.
//
// Handoff mode: the app's listeners are passed into it, and sact never accepts on them.
// While the app is stopped, sact waits for a listener to become readable (a client in the
// backlog), starts the app and steps aside; the client waits in the kernel until the app
// accepts it. While the app runs, sact reads the kernel's count of every connection and
// byte on the listeners (bpfwatch, where the kernel allows it) and asks it (sock_diag)
// about the connections still open, to keep the idle clock; for open connections whose
// bytes it cannot see (unix) the container's CPU time tells whether the app works.
package host

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/handoff"
	"github.com/sact-project/sact/internal/listen"
	"github.com/sact-project/sact/internal/sockdiag"
	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// PrepareShim puts a copy of the running sact binary at dir/sact for containers to mount
// as their entrypoint. A copy, not the binary itself: its path stays the same across
// upgrades and test runs, so containers need not be recreated, and a running container
// keeps the file it started with when the copy is replaced.
//
// dir is root's, 0711: a plain process that runs as its own user: reaches the shim and
// its socket through this directory's path (a container, through its mounts), but nobody
// may list or change it. Each app's socket in it is 0600 and that app's uid's, and the
// Server lets in only the app's first process.
func PrepareShim(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", fmt.Errorf("making the handoff directory: %w", err)
	}
	if err := os.Chmod(dir, 0o711); err != nil {
		return "", fmt.Errorf("restricting the handoff directory: %w", err)
	}
	self, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("finding sact's own binary for the shim: %w", err)
	}
	if err := checkStatic(self); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, "sact")
	if same(self, dst) {
		return dst, nil
	}
	src, err := os.Open(self)
	if err != nil {
		return "", fmt.Errorf("reading sact's binary for the shim: %w", err)
	}
	defer src.Close()
	tmp, err := os.CreateTemp(dir, ".sact-*")
	if err != nil {
		return "", fmt.Errorf("copying sact's binary for the shim: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, src); err != nil {
		tmp.Close()
		return "", fmt.Errorf("copying sact's binary for the shim: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return "", fmt.Errorf("installing the shim binary: %w", err)
	}
	return dst, nil
}

// checkStatic refuses a dynamically linked sact: the shim runs inside images that may
// have no C library at all, or another one.
func checkStatic(path string) error {
	f, err := elf.Open(path)
	if err != nil {
		return fmt.Errorf("reading sact's binary %s: %w", path, err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("handoff runs sact's binary inside the container, and %s is dynamically linked; build it with CGO_ENABLED=0 (make build does)", path)
		}
	}
	return nil
}

// same reports whether two files have equal contents (by size and hash).
func same(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	if err != nil || fa.Size() != fb.Size() {
		return false
	}
	return fileHash(a) == fileHash(b) && fileHash(a) != ""
}

func fileHash(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return ""
	}
	return hex.EncodeToString(h.Sum(nil))
}

// Spec adds the shim to spec. The paths go into the hash: a container that mounts
// other paths must be recreated. So does the way the directory is mounted: containers
// made before it was read-only ("ro") are made anew.
func Spec(spec backend.Spec, binary, dir string) backend.Spec {
	spec.Handoff = &backend.Handoff{Binary: binary, Dir: dir}
	sum := sha256.Sum256([]byte(spec.Hash + "\x00" + binary + "\x00" + dir + "\x00ro"))
	spec.Hash = hex.EncodeToString(sum[:8])
	return spec
}

// App is one app in handoff mode. It implements activator.Source.
type App struct {
	// cfg is the app's config; a reload may replace it (never its listen addresses).
	cfg atomic.Pointer[config.App]
	act *activator.App
	// failed counts connections refused (metrics).
	failed func(app, reason string, n int)
	// setBroken reports whether the app is broken (metrics); nil does nothing.
	setBroken func(app string, broken bool)
	lns       []net.Listener
	pending   []*os.File // duplicates of lns, only ever polled for readability
	dir       string
	opts      handoff.Options
	// broken is why the handoff server cannot be set up, while it cannot; the app
	// is then reported broken and nothing else of it runs.
	broken atomic.Pointer[string]
	log    *slog.Logger
	probe  *sockdiag.Prober
	// counters are the kernel's counts of every connection and byte on the listeners
	// (bpfwatch), or nil where the kernel does not allow them: sock_diag alone then.
	counters *bpfwatch.Watcher
	// accepted counts the app's connections as the kernel counts them, since sact
	// started, for its status; exact, whether it counts all of them.
	accepted atomic.Int64
	exact    atomic.Bool
	// marks are the programs' counters of each listener (nil where they do not
	// count), from startUnit on; prevMarks what the watch read last; tried which
	// listeners WatchListeners tried.
	marks     []*bpfwatch.Handle
	prevMarks []bpfwatch.Activity
	tried     []bool
	// addrs are the listeners' addresses as WatchListeners found them, for the watch
	// of a listener that a reload has moved to another unit meanwhile.
	addrs []net.Addr

	// servers are the handoff servers' goroutines; Run waits for them.
	servers sync.WaitGroup

	// pidOf tells the host pid of one incarnation's first process (a deploy's new one),
	// nil if the runtime cannot; share is the deploy under way, if any (deploy.go).
	pidOf func(ctx context.Context, inst *backend.Instance) (int, error)
	share atomic.Pointer[share]

	mu  sync.Mutex
	srv *handoff.Server
	// srvCtx is what srv runs under, for a server made anew (setUser).
	srvCtx context.Context
}

// New readies the app's handoff for act, touching nothing yet. Its server is set up by
// Run, where a failure makes this one app broken (and retried), never the daemon. lns is
// the caller's: a reload may fill in, before Run, the listeners it moves to the app
// from another.
func New(app *config.App, lns []net.Listener, act *activator.App, opts Options) *App {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	h := &App{lns: lns, dir: opts.Dir, act: act, log: log.With("app", app.Name), probe: opts.Probe,
		counters: opts.Counters, failed: opts.Failed, setBroken: opts.SetBroken, pidOf: opts.PidOf}
	if h.failed == nil {
		h.failed = func(string, string, int) {}
	}
	h.cfg.Store(app)
	// Only the container's first process may fetch the sockets. The Server caches its
	// pid and asks the engine at most every 250ms, however many peers connect.
	// During a deploy, the new incarnation's first process too.
	h.opts = handoff.Options{User: app.Run.User, Logger: h.log, Pid: opts.Pid}
	if opts.PidOf != nil {
		h.opts.Next = h.nextPid
	}
	return h
}

// Options are what New needs besides the app.
type Options struct {
	// Dir is the app's handoff directory, where its handoff socket is made.
	Dir string
	// Pid tells the host pid of the app's first process, the only one let in to fetch
	// the sockets; nil if the runtime cannot tell it.
	Pid func(ctx context.Context) (int, error)
	// PidOf tells the host pid of one incarnation's first process: a deploy's new one,
	// let in beside the running one's (deploy.go). nil if the runtime cannot tell it:
	// the app then restarts once idle to get a new version.
	PidOf func(ctx context.Context, inst *backend.Instance) (int, error)
	// Probe asks the kernel about the sockets (sock_diag).
	Probe *sockdiag.Prober
	// Counters are the kernel's counts of every connection and byte on the listeners
	// (bpfwatch), or nil where the kernel does not allow them.
	Counters *bpfwatch.Watcher
	// Failed counts connections refused, by reason, and SetBroken tells whether the app
	// is broken (metrics). Either may be nil.
	Failed    func(app, reason string, n int)
	SetBroken func(app string, broken bool)
	Logger    *slog.Logger
}

// newServer makes the app's handoff server. Called with h.mu held. Its listeners are read only now: those a
// reload moves to this app from another are filled in when the reload commits.
func (h *App) newServer() (*handoff.Server, error) {
	app := h.conf()
	var sockets []handoff.Socket
	for i, ln := range h.lns {
		if ln == nil {
			return nil, fmt.Errorf("its listener on %s was lost in a reload; reload again or restart sact", app.Listen[i])
		}
		sc, ok := ln.(syscall.Conn)
		if !ok {
			return nil, fmt.Errorf("listener %s cannot be handed off", ln.Addr())
		}
		sockets = append(sockets, handoff.Socket{Name: app.Name, Conn: sc})
	}
	return handoff.NewServer(filepath.Join(h.dir, backend.ShimSocket), sockets, h.opts)
}

// Backoff between attempts to set up a broken app's handoff server; the daemon retries
// its other broken apps on the same schedule.
const (
	BrokenRetryFirst = time.Second
	BrokenRetryMax   = 30 * time.Second
)

// serve sets up the app's handoff server, retrying with backoff while it fails: the app
// is broken meanwhile (status, log, metric), and clients that queue up on its stopped
// listeners are refused at once. It returns false if ctx ended first.
func (h *App) serve(ctx context.Context) bool {
	name := h.conf().Name
	backoff := BrokenRetryFirst
	for {
		h.mu.Lock()
		srv, err := h.newServer()
		if err == nil {
			h.srv, h.srvCtx = srv, ctx
			h.runServer(ctx, srv)
		}
		h.mu.Unlock()
		if err == nil {
			if h.broken.Swap(nil) != nil {
				h.log.Info("app's handoff repaired; serving it again")
			}
			if h.setBroken != nil {
				h.setBroken(name, false)
			}
			return true
		}
		reason := "its handoff cannot be set up: " + err.Error()
		h.broken.Store(&reason)
		if h.setBroken != nil {
			h.setBroken(name, true)
		}
		h.log.Error("app is broken; the other apps serve on", "reason", reason, "retry_in", backoff)
		if !h.refuseFor(ctx, backoff) {
			if h.setBroken != nil {
				h.setBroken(name, false) // the app goes away: so does its series
			}
			return false
		}
		backoff = min(2*backoff, BrokenRetryMax)
	}
}

// refuseFor waits d, refusing at once the clients that queue up on the app's listeners
// while it is stopped (a running app, adopted from an earlier sact, serves them
// itself). It returns false if ctx ended.
func (h *App) refuseFor(ctx context.Context, d time.Duration) bool {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	select {
	case <-h.act.Adopted():
	case <-wctx.Done():
		return ctx.Err() == nil
	}
	for wctx.Err() == nil {
		if h.act.State() != activator.Stopped || slices.Contains(h.lns, nil) {
			<-wctx.Done()
			break
		}
		if _, err := h.waitPending(wctx); err != nil {
			break
		}
		if n := h.rejectQueued(); n > 0 {
			h.failed(h.conf().Name, "handoff_broken", n)
			h.log.Warn("connections refused", "count", n, "reason", *h.broken.Load())
		}
	}
	return ctx.Err() == nil
}

// runServer runs srv until ctx ends or it is closed, under h.servers.
func (h *App) runServer(ctx context.Context, srv *handoff.Server) {
	h.servers.Go(func() {
		if err := srv.Run(ctx); err != nil {
			h.log.Error("handoff server stopped; the app cannot get its sockets until the next reload or a restart of sact", "reason", err)
		}
	})
}

// Broken returns why the app cannot be served, or "".
func (h *App) Broken() string {
	if r := h.broken.Load(); r != nil {
		return *r
	}
	return ""
}

func (h *App) conf() *config.App { return h.cfg.Load() }

// SetConfig gives the app its new settings after a reload; never other listen addresses
// (that is a new App).
func (h *App) SetConfig(app *config.App) { h.cfg.Store(app) }

// SetUser hands the handoff socket to the app's new user: after a reload changed
// `user:`, the app restarts as that uid, and a socket that is the old uid's (0600)
// would refuse its shim until sact restarted (issue 12). A new server binds at the same
// path, then the old one closes; a container still running as the old user has its
// sockets already.
func (h *App) SetUser(user string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.opts.User == user {
		return
	}
	h.opts.User = user
	if h.srv == nil || h.srvCtx.Err() != nil {
		return // not served yet: listen makes the server for the new user
	}
	srv, err := h.newServer()
	if err != nil {
		h.log.Error("cannot hand the handoff socket to the app's new user; the app cannot get its sockets until the next reload or a restart of sact",
			"user", user, "path", filepath.Join(h.dir, backend.ShimSocket), "reason", err)
		return
	}
	h.srv.Close()
	h.srv = srv
	h.runServer(h.srvCtx, srv)
	h.log.Info("handoff socket handed to the app's new user", "user", user)
}

func (h *App) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.srv != nil {
		h.srv.Close()
	}
}

// pendingWatcher duplicates a listener's fd into a file that the runtime's poller
// watches for readability. Only while the app does not run: the socket's O_NONBLOCK flag
// is shared with the app (the shim clears it for the app's sake), and a non-blocking fd
// is what makes the file pollable.
func pendingWatcher(sc syscall.Conn, name string) (*os.File, error) {
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil, err
	}
	var nfd int
	var derr error
	if err := rc.Control(func(fd uintptr) { nfd, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0) }); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("duplicating listener %s: %w", name, derr)
	}
	if err := unix.SetNonblock(nfd, true); err != nil {
		unix.Close(nfd)
		return nil, fmt.Errorf("listener %s: %w", name, err)
	}
	f := os.NewFile(uintptr(nfd), name)
	if err := f.SetReadDeadline(time.Time{}); err != nil {
		f.Close()
		return nil, fmt.Errorf("listener %s cannot be watched (not pollable): %w", name, err)
	}
	return f, nil
}

// readable reports whether a listening socket has a connection waiting, without
// accepting it.
func readable(fd uintptr) bool {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLIN != 0
}

// waitPending blocks until a listener has a client waiting, and returns its index. The
// app must not be running.
func (h *App) waitPending(ctx context.Context) (int, error) {
	for _, ln := range h.lns {
		f, err := pendingWatcher(ln.(syscall.Conn), ln.Addr().String())
		if err != nil {
			h.closePending()
			return 0, err
		}
		h.pending = append(h.pending, f)
	}
	defer h.closePending()
	got := make(chan int, len(h.pending))
	var wg sync.WaitGroup
	for i, f := range h.pending {
		rc, err := f.SyscallConn()
		if err != nil {
			return 0, err
		}
		wg.Go(func() {
			err := rc.Read(func(fd uintptr) bool { return readable(fd) })
			if err == nil {
				got <- i
			}
		})
	}
	pending := h.pending // not h.pending in wake: the deferred closePending resets it
	wake := func() {
		for _, f := range pending {
			f.SetReadDeadline(time.Now())
		}
	}
	woke := make(chan struct{})
	stop := context.AfterFunc(ctx, func() { wake(); close(woke) })
	var i int
	var err error
	select {
	case i = <-got:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if !stop() {
		<-woke // it runs: the files must outlive it
	}
	wake()
	wg.Wait()
	return i, err
}

func (h *App) closePending() {
	for _, f := range h.pending {
		f.Close()
	}
	h.pending = nil
}

// waitPendingPaused waits for a client in the backlog of a paused app. The app holds the
// sockets, frozen, and their blocking mode is the app's business: poll(2) from a thread
// of its own, waking every 200 ms to notice the end of ctx (the activator ends it when
// the app is thawed or stopped by someone else), rather than touch the flag.
func (h *App) waitPendingPaused(ctx context.Context) (int, error) {
	fds := make([]unix.PollFd, len(h.lns))
	for i, ln := range h.lns {
		rc, err := ln.(syscall.Conn).SyscallConn()
		if err != nil {
			return 0, err
		}
		rc.Control(func(fd uintptr) { fds[i] = unix.PollFd{Fd: int32(fd), Events: unix.POLLIN} })
	}
	for ctx.Err() == nil {
		n, err := unix.Poll(fds, 200)
		if err != nil && err != unix.EINTR {
			return 0, err
		}
		for i := range fds {
			if n > 0 && fds[i].Revents&unix.POLLIN != 0 {
				return i, nil
			}
		}
	}
	return 0, ctx.Err()
}

// rejectQueued closes the connections waiting in the listeners' backlogs, so their clients
// learn at once that the app failed rather than wait for a timeout. Only while the app
// does not run: then nobody else accepts.
func (h *App) rejectQueued() int {
	n := 0
	for _, ln := range h.lns {
		rc, err := ln.(syscall.Conn).SyscallConn()
		if err != nil {
			continue
		}
		rc.Control(func(fd uintptr) {
			for readable(fd) {
				c, _, err := unix.Accept4(int(fd), unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK)
				if err != nil {
					return
				}
				unix.Close(c)
				n++
			}
		})
	}
	return n
}

// Run is the app's life in handoff mode: its handoff server, then the activator's Serve
// with the kernel's view of the app's sockets as its Source.
func (h *App) Run(ctx context.Context) {
	defer h.servers.Wait()
	defer h.Close()
	if !h.serve(ctx) {
		return
	}
	h.WatchListeners() // those a reload moved in since startUnit
	defer h.CloseMarks()
	h.act.Serve(ctx, h)
}

// Pending is activator.Source's: a client in a listener's backlog of the stopped or
// paused app.
func (h *App) Pending(ctx context.Context, paused bool) (string, error) {
	wait := h.waitPending
	if paused {
		wait = h.waitPendingPaused
	}
	i, err := wait(ctx)
	if err != nil {
		return "", err
	}
	return h.conf().Listen[i].String(), nil
}

// Refuse is activator.Source's: the clients queued on the listeners are closed and
// counted as not served.
func (h *App) Refuse(reason string) int {
	n := h.rejectQueued()
	h.failed(h.conf().Name, reason, n)
	return n
}

// Watch is activator.Source's: it asks the kernel about the app's sockets until ctx
// ends (the app stopped or paused), and reports what it sees.
func (h *App) Watch(ctx context.Context, report func(activator.Activity)) {
	every := min(max(h.conf().Idle/10, 100*time.Millisecond), time.Second)
	addrs := make([]net.Addr, len(h.lns))
	for i, ln := range h.lns {
		if ln != nil {
			addrs[i] = ln.Addr()
		} else {
			// Moved to the unit replacing this one while this one drains: the same
			// socket, at the address it had.
			addrs[i] = h.addrs[i]
		}
	}
	prev := make([]sockdiag.Activity, len(addrs))
	marks, prevMarks, cpu := h.marks, h.prevMarks, h.cpuTime(ctx)
	var prevCPU time.Duration
	if cpu != nil {
		prevCPU, _ = cpu.Read()
	}
	last := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for first := true; ; first = false {
		// The first look is at once: the open count keeps the app from being evicted
		// or paused from its first connection on.
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
		now := time.Now()
		acts, err := h.probe.Probe(ctx, addrs...)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			h.log.Warn("cannot read socket activity; counting the app as busy", "reason", err)
			report(activator.Activity{Unknown: true})
			continue
		}
		active := false
		busy, open, unseen := 0, 0, false
		for i, a := range acts {
			p := prev[i]
			if a.Queued > 0 || a.Pending > 0 || a.ConnSet != p.ConnSet ||
				a.BytesReceived != p.BytesReceived || a.BytesSent != p.BytesSent ||
				a.LastActivity.After(last.Add(-10*time.Millisecond)) ||
				(h.conf().KeepWhileOpen && a.Open > 0) {
				active = true
			}
			busy += a.Open + a.Queued + int(min(a.Pending, 1))
			prev[i] = a
			// The programs' counts: a connection or a byte since the last look, however
			// short-lived, is activity.
			if m := marks[i]; m != nil {
				c, err := m.Activity()
				if err != nil {
					active = true
					continue
				}
				pc := prevMarks[i]
				if c != pc {
					active = true
					h.accepted.Add(int64(c.Connects - pc.Connects))
				}
				prevMarks[i] = c
				if m.Network() == "tcp" {
					open += c.Open("tcp")
					continue
				}
			}
			// Bytes on this listener's open connections cannot be seen (unix, or no
			// programs): the container's CPU time says whether the app works on them.
			// A connection still in the backlog is open too: the app is about to accept
			// it (the one that woke it, at the first look), and must not be paused or
			// evicted under it.
			open += a.Open + a.Queued
			unseen = unseen || a.Open > 0
		}
		if cpu != nil {
			used, err := cpu.Read()
			if err == nil && unseen && used-prevCPU >= cpuBusy {
				active = true
			}
			prevCPU = used
		}
		report(activator.Activity{Active: active, Open: open, Busy: busy})
		last = now
	}
}

// cpuBusy is the CPU time per sampling period that counts as an app working on a
// connection whose bytes cannot be seen: an idle app uses next to none (0 µs a second
// for unicorn and the test server, measured), a request on a kept-alive connection
// 220-400 µs, on a new one 450 µs or more.
const cpuBusy = 50 * time.Microsecond

// WatchListeners starts the programs' counts for the app's listeners, before the app
// runs or sact serves: a connection that wakes the app is then counted from its
// handshake (the kernel counts no connection made before its listener was watched).
// Where they cannot count (no programs, or unix without connect_unix) the mark stays
// nil. Called again, it tries only the listeners it has not tried (those a reload
// moved in later). Not concurrently with itself, watch or CloseMarks.
func (h *App) WatchListeners() {
	if h.marks == nil {
		h.marks = make([]*bpfwatch.Handle, len(h.lns))
		h.prevMarks = make([]bpfwatch.Activity, len(h.lns))
		h.tried = make([]bool, len(h.lns))
		h.addrs = make([]net.Addr, len(h.lns))
	}
	for i, ln := range h.lns {
		if ln != nil && h.addrs[i] == nil {
			h.addrs[i] = ln.Addr()
		}
	}
	if h.counters == nil {
		return
	}
	all := true
	for i, ln := range h.lns {
		if ln != nil && !h.tried[i] {
			h.tried[i] = true
			m, err := h.counters.Watch(ln.Addr())
			if err == nil {
				h.marks[i] = m
			} else if !errors.Is(err, bpfwatch.ErrUnixUnsupported) {
				h.log.Warn("cannot count the listener's connections in the kernel; judging it from sock_diag alone", "listen", ln.Addr().String(), "reason", err)
			}
		}
		all = all && h.marks[i] != nil
	}
	h.exact.Store(all)
}

// CloseMarks ends the programs' counts for the app's listeners.
func (h *App) CloseMarks() {
	for i, m := range h.marks {
		if m != nil {
			m.Close()
			h.marks[i] = nil
		}
	}
	h.exact.Store(false)
}

// cpuTime finds the container's CPU time, the backup signal for open connections
// whose bytes cannot be seen, or nil.
func (h *App) cpuTime(ctx context.Context) *bpfwatch.CPU {
	if h.opts.Pid == nil {
		return nil
	}
	pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	pid, err := h.opts.Pid(pctx)
	if err != nil {
		return nil
	}
	cpu, err := bpfwatch.CgroupCPU(pid)
	if err != nil {
		h.log.Debug("cannot read the app's CPU time", "reason", err)
		return nil
	}
	return cpu
}

// Counts is the app's connections as the kernel counts them: accepted since sact
// started; exact when the programs count on every listener (zero where they do not
// count).
func (h *App) Counts() (accepted int, exact bool) {
	return int(h.accepted.Load()), h.exact.Load()
}

// Reclaim takes back the listening sockets of a handoff app that still runs from an
// earlier sact: they live on in the app's first process, and pidfd_getfd(2) duplicates
// them into sact, so clients never see the socket go away. Every address in addrs must
// be found, or none is taken.
func Reclaim(pid int, addrs []listen.Addr) ([]net.Listener, error) {
	pidfd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("pidfd_open(%d): %w", pid, err)
	}
	defer unix.Close(pidfd)
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return nil, err
	}
	found := make([]net.Listener, len(addrs))
	closeAll := func() {
		for _, ln := range found {
			if ln != nil {
				ln.Close()
			}
		}
	}
	for _, e := range ents {
		target, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:") {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("pidfd_getfd(%d, %d): %w", pid, n, err)
		}
		i := matchListener(fd, addrs)
		if i < 0 || found[i] != nil {
			unix.Close(fd)
			continue
		}
		f := os.NewFile(uintptr(fd), addrs[i].String())
		ln, err := listen.KeepStatusFlags(fd, func() (net.Listener, error) { return net.FileListener(f) })
		f.Close()
		if err != nil {
			closeAll()
			return nil, fmt.Errorf("taking back %s: %w", addrs[i], err)
		}
		found[i] = ln
	}
	for i, ln := range found {
		if ln == nil {
			closeAll()
			return nil, fmt.Errorf("the app holds no listening socket for %s", addrs[i])
		}
	}
	return found, nil
}

// matchListener returns the index in addrs of the listening stream socket fd, or -1.
func matchListener(fd int, addrs []listen.Addr) int {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 1 {
		return -1
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || v != unix.SOCK_STREAM {
		return -1
	}
	// A socket of the container's own network namespace can carry the same address (a
	// unix path in its own mount namespace, 127.0.0.1 on its own loopback): only sact's
	// own namespace's sockets are the app's listeners.
	if c, err := netnsCookie(fd); err == nil && c != ownNetns() {
		return -1
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return -1
	}
	for i, a := range addrs {
		switch sa := sa.(type) {
		case *unix.SockaddrUnix:
			if a.Network == "unix" && sa.Name == a.Address {
				return i
			}
		case *unix.SockaddrInet4:
			if a.Network == "tcp" && sameTCP(a.Address, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port))) {
				return i
			}
		case *unix.SockaddrInet6:
			if a.Network == "tcp" && sameTCP(a.Address, netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port))) {
				return i
			}
		}
	}
	return -1
}

// netnsCookie is the cookie of the network namespace a socket belongs to (Linux 5.14).
func netnsCookie(fd int) (uint64, error) {
	var v uint64
	n := uint32(unsafe.Sizeof(v))
	_, _, e := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_NETNS_COOKIE, uintptr(unsafe.Pointer(&v)), uintptr(unsafe.Pointer(&n)), 0)
	if e != 0 {
		return 0, e
	}
	return v, nil
}

// ownNetns is the cookie of sact's own network namespace, or 0 if the kernel has none.
var ownNetns = sync.OnceValue(func() uint64 {
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0
	}
	defer unix.Close(fd)
	c, _ := netnsCookie(fd)
	return c
})

// sameTCP reports whether the configured host:port is bound as got.
func sameTCP(configured string, got netip.AddrPort) bool {
	ta, err := net.ResolveTCPAddr("tcp", configured)
	if err != nil || ta.Port != int(got.Port()) {
		return false
	}
	want, ok := netip.AddrFromSlice(ta.IP)
	if !ok || ta.IP == nil {
		return got.Addr().IsUnspecified()
	}
	return want.Unmap() == got.Addr().Unmap() || want.IsUnspecified() && got.Addr().IsUnspecified()
}
