package daemon

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/handoff"
	"github.com/sact-project/sact/internal/sockdiag"
)

// Handoff mode: the app's listeners are passed into it, and sact never accepts on them.
// While the app is stopped, sact waits for a listener to become readable (a client in the
// backlog), starts the app and steps aside; the client waits in the kernel until the app
// accepts it. While the app runs, sact asks the kernel (sock_diag) about the listeners'
// connections to keep the idle clock.

// pider is implemented by runtimes that can tell the host pid of an app's first process,
// which is the only process let in to fetch the sockets.
type pider interface {
	Pid(ctx context.Context, spec backend.Spec) (int, error)
}

// prepareShim puts a copy of the running sact binary at dir/sact for containers to mount
// as their entrypoint. A copy, not the binary itself: its path stays the same across
// upgrades and test runs, so containers need not be recreated, and a running container
// keeps the file it started with when the copy is replaced.
func prepareShim(dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", fmt.Errorf("making the handoff directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return "", fmt.Errorf("making the handoff directory private: %w", err)
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

// handoffSpec adds the shim to spec. The paths go into the hash: a container that mounts
// other paths must be recreated.
func handoffSpec(spec backend.Spec, binary, dir string) backend.Spec {
	spec.Handoff = &backend.Handoff{Binary: binary, Dir: dir}
	sum := sha256.Sum256([]byte(spec.Hash + "\x00" + binary + "\x00" + dir))
	spec.Hash = hex.EncodeToString(sum[:8])
	return spec
}

// handoffApp is one app in handoff mode.
type handoffApp struct {
	app     *config.App
	act     *activator.App
	lns     []net.Listener
	pending []*os.File // duplicates of lns, only ever polled for readability
	srv     *handoff.Server
	log     *slog.Logger
	probe   *sockdiag.Prober
}

// newHandoffApp makes the app's handoff server in dir and its pending-connection watchers.
func newHandoffApp(app *config.App, lns []net.Listener, dir string, rt backend.Runtime, spec func() backend.Spec, probe *sockdiag.Prober, log *slog.Logger) (*handoffApp, error) {
	h := &handoffApp{app: app, lns: lns, log: log.With("app", app.Name), probe: probe}
	var sockets []handoff.Socket
	for _, ln := range lns {
		sc, ok := ln.(syscall.Conn)
		if !ok {
			return nil, fmt.Errorf("listener %s cannot be handed off", ln.Addr())
		}
		sockets = append(sockets, handoff.Socket{Name: app.Name, Conn: sc})
		f, err := pendingWatcher(sc, ln.Addr().String())
		if err != nil {
			h.close()
			return nil, err
		}
		h.pending = append(h.pending, f)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		h.close()
		return nil, fmt.Errorf("making the app's handoff directory: %w", err)
	}
	authorize := func(p handoff.Peer) error {
		pr, ok := rt.(pider)
		if !ok {
			return nil
		}
		// The engine records the container's pid a moment after its process runs, and
		// the shim is quick: ask again for a while before refusing.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var pid int
		for {
			var err error
			pid, err = pr.Pid(ctx, spec())
			if err == nil && pid == p.PID {
				return nil
			}
			if ctx.Err() != nil {
				return fmt.Errorf("process %d is not app %s's first process (that is %d); only the app's own container may fetch its sockets", p.PID, app.Name, pid)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	srv, err := handoff.NewServer(filepath.Join(dir, backend.ShimSocket), sockets, handoff.Options{
		User: app.User, Authorize: authorize, Logger: log,
	})
	if err != nil {
		h.close()
		return nil, fmt.Errorf("app %q: setting up handoff: %w", app.Name, err)
	}
	h.srv = srv
	return h, nil
}

func (h *handoffApp) close() {
	for _, f := range h.pending {
		f.Close()
	}
	if h.srv != nil {
		h.srv.Close()
	}
}

// pendingWatcher duplicates a listener's fd into a file that the runtime's poller
// watches for readability. It must be made while the socket is still non-blocking (the
// shim makes it blocking for the app, and the flag is shared): that is what makes the
// file pollable.
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

// waitPending blocks until a listener has a client waiting, and returns its index.
func (h *handoffApp) waitPending(ctx context.Context) (int, error) {
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
	wake := func() {
		for _, f := range h.pending {
			f.SetReadDeadline(time.Now())
		}
	}
	stop := context.AfterFunc(ctx, wake)
	var i int
	var err error
	select {
	case i = <-got:
	case <-ctx.Done():
		err = ctx.Err()
	}
	stop()
	wake()
	wg.Wait()
	for _, f := range h.pending {
		f.SetReadDeadline(time.Time{})
	}
	return i, err
}

// rejectQueued closes the connections waiting in the listeners' backlogs, so their clients
// learn at once that the app failed rather than wait for a timeout. Only while the app
// does not run: then nobody else accepts.
func (h *handoffApp) rejectQueued() int {
	n := 0
	for _, f := range h.pending {
		rc, err := f.SyscallConn()
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

// run is the app's life in handoff mode: wait for a client, start the app, watch its
// sockets' activity while it runs, and again.
func (h *handoffApp) run(ctx context.Context) {
	go h.srv.Run(ctx)
	defer h.close()
	backoff := time.Duration(0)
	for {
		i, err := h.waitPending(ctx)
		if err != nil {
			return
		}
		listen := h.app.Listen[i].String()
		lease, err := h.act.Acquire(ctx, activator.Wake{Remote: "backlog", Listen: listen})
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			n := h.rejectQueued()
			h.log.Warn("connections refused", "listen", listen, "count", n, "reason", err)
			continue
		}
		live := lease.Context()
		lease.Release()
		began := time.Now()
		h.watch(ctx, live)
		if ctx.Err() != nil {
			return
		}
		// An app that exits soon after its start, with clients still queued, would be
		// started again at once by them: refuse them and pause, as after a failed start.
		st := h.act.Status()
		if st.StopReason != "idle" && time.Since(began) < 10*time.Second {
			backoff = min(max(2*backoff, time.Second), 16*time.Second)
			n := h.rejectQueued()
			h.log.Warn("app exited soon after its start; refusing queued connections", "reason", st.StopReason, "count", n, "retry_in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return
			}
		} else {
			backoff = 0
		}
	}
}

// watch asks the kernel about the app's sockets until live ends (the app stopped), and
// tells the activator whenever they show activity.
func (h *handoffApp) watch(ctx context.Context, live context.Context) {
	every := min(max(h.app.Idle/10, 100*time.Millisecond), time.Second)
	addrs := make([]net.Addr, len(h.lns))
	for i, ln := range h.lns {
		addrs[i] = ln.Addr()
	}
	prev := make([]sockdiag.Activity, len(addrs))
	last := time.Now()
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-live.Done():
			return
		case <-ctx.Done():
			return
		case <-t.C:
		}
		now := time.Now()
		acts, err := h.probe.Probe(ctx, addrs...)
		if err != nil {
			// Without the kernel's word, assume busy: stopping an app that serves is
			// worse than keeping an idle one a little longer.
			h.log.Warn("cannot read socket activity; counting the app as busy", "reason", err)
			h.act.Touch()
			continue
		}
		for i, a := range acts {
			p := prev[i]
			if a.Queued > 0 || a.Pending > 0 || a.ConnSet != p.ConnSet ||
				a.BytesReceived != p.BytesReceived || a.BytesSent != p.BytesSent ||
				a.LastActivity.After(last.Add(-10*time.Millisecond)) ||
				(h.app.KeepWhileOpen && a.Open > 0) {
				h.act.Touch()
			}
			prev[i] = a
		}
		last = now
	}
}
