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

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
)

// Deploys of a handoff app (activator.Sharer): during a deploy the handoff server also
// lets in the first process of the new incarnation, which fetches the same sockets as
// the running one. Both then accept from the same backlogs, and the kernel gives each
// queued client to whichever process accepts first: while the new one boots, the old one
// takes them all. The new one is ready once one of its processes holds a connection
// accepted from the sockets: sock_diag names the inodes of the listeners' open
// connections, /proc/PID/fd those the new container's processes hold. It is looked at
// every takenEvery, only during a deploy.

// takenEvery is how often a deploy looks whether the new incarnation took a connection.
// A short request lives a millisecond or so in the app: a look at a few ms catches one
// of the first few dozen the new one takes. Each look is a sock_diag dump (0.2 ms) and
// the new container's fd tables.
const takenEvery = 10 * time.Millisecond

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

// Taken is activator.Share's.
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
	pid := 0
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
		inst := s.inst.Load()
		if inst == nil {
			continue
		}
		acts, inodes, err := h.probe.Sockets(ctx, addrs...)
		if err != nil {
			continue
		}
		fresh := make(map[uint32]bool)
		for i, l := range inodes {
			queued = queued || acts[i].Queued > 0
			for _, ino := range l {
				if !old[ino] {
					fresh[ino] = true
					came[ino] = true
				}
			}
		}
		if len(fresh) == 0 {
			continue
		}
		if pid == 0 {
			p, err := h.pidOf(ctx, inst)
			if err != nil || p == 0 {
				continue
			}
			pid = p
		}
		// An open connection has been accepted by one of the two: is it the new one's?
		for _, p := range descendants(pid) {
			if holdsAny(p, fresh) {
				return nil
			}
		}
	}
}

// descendants returns pid and every process below it: a container's processes, its
// first one's (orphans are reparented to it, the init of its pid namespace). Read from
// /proc/PID/task/TID/children; where the kernel has no such file, pid alone.
func descendants(pid int) []int {
	out := []int{pid}
	for i := 0; i < len(out) && len(out) < 4096; i++ {
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
				if c, err := strconv.Atoi(f); err == nil {
					out = append(out, c)
				}
			}
		}
	}
	return out
}

// holdsAny reports whether process pid holds one of the sockets inodes.
func holdsAny(pid int, inodes map[uint32]bool) bool {
	dir := fmt.Sprintf("/proc/%d/fd", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return false
	}
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		ino, ok := strings.CutPrefix(target, "socket:[")
		if !ok {
			continue
		}
		n, err := strconv.ParseUint(strings.TrimSuffix(ino, "]"), 10, 32)
		if err == nil && inodes[uint32(n)] {
			return true
		}
	}
	return false
}
