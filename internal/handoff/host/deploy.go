package host

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
)

// Deploys of a handoff app (activator.Sharer): during a deploy the handoff server also
// lets in the first process of the new incarnation, which fetches the same sockets as
// the running one. Both then accept from the same backlogs, and the kernel gives each
// queued client to whichever process accepts first: while the new one boots, the old one
// takes them all. The new one is ready once one of its processes holds a connection
// accepted from the sockets (Taken), looked for only during a deploy.

// takenEvery is how often a deploy looks into the new container's fd tables for a
// connection it accepted. A short request lives a millisecond or so in the app: a look
// every few ms catches one of the first few the new one takes. Each look is a readdir
// and a readlink per fd of each of its processes (tens of µs); a socket is judged once.
const takenEvery = 2 * time.Millisecond

// share is one deploy's new incarnation on the app's sockets.
type share struct {
	h     *App
	inst  atomic.Pointer[backend.Instance]
	ended atomic.Bool
}

// Shares is activator.Sharer's: the runtime must tell the new incarnation's pid.
func (h *App) Shares() bool { return h.pidOf != nil && h.opts.Pid != nil }

// Share is activator.Sharer's.
func (h *App) Share() activator.Share {
	s := &share{h: h}
	h.share.Store(s)
	return s
}

func (s *share) Started(inst *backend.Instance) { s.inst.Store(inst) }

func (s *share) End() {
	s.ended.Store(true)
	s.h.share.CompareAndSwap(s, nil)
	s.h.mu.Lock()
	if s.h.srv != nil {
		s.h.srv.Recheck() // a new one that failed is let in no more under its cached pid
	}
	s.h.mu.Unlock()
}

// nextPid is the handoff server's Options.Next: the new incarnation's first process,
// during a deploy.
func (h *App) nextPid(ctx context.Context) (int, bool, error) {
	s := h.share.Load()
	if s == nil || s.ended.Load() {
		return 0, false, nil
	}
	inst := s.inst.Load()
	if inst == nil {
		return 0, true, nil // being started: its shim may connect before StartNext returns
	}
	pid, err := h.pidOf(ctx, inst)
	return pid, true, err
}

// Taken is activator.Share's. It looks at the new container's fd tables every
// takenEvery for a socket it has not judged yet, and judges each once: a duplicate taken
// with pidfd_getfd is a connection accepted from the app's listeners if it is a stream
// socket that does not listen, of sact's network namespace, bound to a listener's
// address (acceptedFrom). A request lives a millisecond or so in the app, so this
// catches one of the new one's first few. Whether new connections came at all (for
// the verdict at start_timeout) is sock_diag's, every trafficEvery.
func (s *share) Taken(ctx context.Context) error {
	h := s.h
	addrs := make([]net.Addr, 0, len(h.lns))
	for i, ln := range h.lns {
		switch {
		case ln != nil:
			addrs = append(addrs, ln.Addr())
		case h.addrs != nil && h.addrs[i] != nil:
			addrs = append(addrs, h.addrs[i])
		}
	}
	// The connections open when the deploy began are the old one's: only others are
	// new, for the new one to take.
	old := make(map[uint32]bool)
	if _, inodes, err := h.probe.Sockets(ctx, addrs...); err == nil {
		for _, l := range inodes {
			for _, ino := range l {
				old[ino] = true
			}
		}
	}
	came := make(map[uint32]bool) // new connections seen, whoever took them
	queued := false               // a client was seen waiting in a backlog
	judged := make(map[string]bool)
	var procs []int
	var procsAt, trafficAt time.Time
	t := time.NewTicker(takenEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			if len(came) == 0 && !queued {
				return activator.ErrNoTraffic
			}
			return fmt.Errorf("the new incarnation took none of the new connections while it started (the old one took all %d seen): it does not accept on the sockets it was handed", len(came))
		case <-t.C:
		}
		now := time.Now()
		if now.Sub(trafficAt) >= trafficEvery {
			trafficAt = now
			if acts, inodes, err := h.probe.Sockets(ctx, addrs...); err == nil {
				for i, l := range inodes {
					queued = queued || acts[i].Queued > 0
					for _, ino := range l {
						if !old[ino] {
							came[ino] = true
						}
					}
				}
			}
		}
		inst := s.inst.Load()
		if inst == nil {
			continue
		}
		if procs == nil || now.Sub(procsAt) >= procsEvery {
			pid, err := h.pidOf(ctx, inst)
			if err != nil || pid == 0 {
				continue
			}
			procs, procsAt = descendants(pid), now
		}
		for _, p := range procs {
			if tookOne(p, addrs, judged) {
				return nil
			}
		}
	}
}

// How often Taken looks whether new connections came, and for the new container's
// processes (an app server forks its workers as it boots).
const (
	trafficEvery = 50 * time.Millisecond
	procsEvery   = 100 * time.Millisecond
)

// tookOne reports whether process pid holds a connection accepted from the listeners
// at addrs. judged holds the sockets ("pid/inode") already found not to be one.
func tookOne(pid int, addrs []net.Addr, judged map[string]bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	d, err := os.Open(dir)
	if err != nil {
		return false
	}
	// The first fds only: an app's accepted connections are among its lowest, and a
	// hostile one with a million open costs no more than this.
	ents, _ := d.ReadDir(maxFds)
	d.Close()
	var pidfd = -1
	defer func() {
		if pidfd >= 0 {
			unix.Close(pidfd)
		}
	}()
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil || !strings.HasPrefix(target, "socket:[") {
			continue
		}
		key := strconv.Itoa(pid) + "/" + target
		if judged[key] || len(judged) >= maxJudged {
			continue
		}
		n, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if pidfd < 0 {
			if pidfd, err = unix.PidfdOpen(pid, 0); err != nil {
				return false
			}
		}
		fd, err := unix.PidfdGetfd(pidfd, n, 0)
		if err != nil {
			continue // closed meanwhile: it may come again under another inode
		}
		ok := acceptedFrom(fd, addrs)
		unix.Close(fd)
		if ok {
			return true
		}
		judged[key] = true
	}
	return false
}

// acceptedFrom reports whether fd is a connection accepted from one of the listeners at
// addrs: a stream socket that does not listen, of sact's own network namespace (the
// kernel makes an accepted socket in its listener's; the container's own connections
// are in its), bound to a listener's address.
func acceptedFrom(fd int, addrs []net.Addr) bool {
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); err != nil || v != 0 {
		return false
	}
	if v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE); err != nil || v != unix.SOCK_STREAM {
		return false
	}
	if c, err := netnsCookie(fd); err == nil && c != ownNetns() {
		return false
	}
	sa, err := unix.Getsockname(fd)
	if err != nil {
		return false
	}
	for _, a := range addrs {
		switch a := a.(type) {
		case *net.UnixAddr:
			if u, ok := sa.(*unix.SockaddrUnix); ok && u.Name == a.Name {
				return true
			}
		case *net.TCPAddr:
			var ip net.IP
			var port int
			switch sa := sa.(type) {
			case *unix.SockaddrInet4:
				ip, port = net.IP(sa.Addr[:]), sa.Port
			case *unix.SockaddrInet6:
				ip, port = net.IP(sa.Addr[:]), sa.Port
			default:
				continue
			}
			if port == a.Port && (a.IP.IsUnspecified() || a.IP.Equal(ip)) {
				return true
			}
		}
	}
	return false
}

// Bounds of Taken's looks into a container that may be hostile.
const (
	maxProcs  = 256   // processes of the new container looked at
	maxFds    = 1024  // fds per process
	maxJudged = 65536 // sockets judged in one deploy
)

// descendants returns pid and every process below it: a container's processes, its
// first one's (orphans are reparented to it, the init of its pid namespace). Read from
// /proc/PID/task/TID/children; where the kernel has no such file, pid alone.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < maxProcs; i++ {
		tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", out[i]))
		if err != nil {
			continue
		}
		for _, t := range tasks {
			b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(out[i]), "task", t.Name(), "children"))
			if err != nil {
				continue
			}
			for _, f := range strings.Fields(string(b)) {
				if c, err := strconv.Atoi(f); err == nil && len(out) < maxProcs {
					out = append(out, c)
				}
			}
		}
	}
	return out
}
