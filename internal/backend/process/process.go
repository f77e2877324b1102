// Package process runs apps as plain processes (`command:` in the config): the same
// activation for apps not yet in a container, and for fast tests.
//
// Each app runs in a process group of its own, and Stop signals the whole group, so a
// shell wrapper and its children all go. Processes do not outlive sact: there is no engine
// to keep them and nothing to adopt them from, so when the runtime's Run ends (sact exits)
// the ones still running are stopped.
package process

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/handoff"
)

// Options configure the runtime.
type Options struct {
	Logger *slog.Logger
	// TailBytes is how much of an app's last output an Exit carries. Default 4 KiB.
	TailBytes int
}

// Runtime is a backend.Runtime for plain processes.
type Runtime struct {
	log  *slog.Logger
	tail int

	mu    sync.Mutex
	procs map[string]*proc // by app name
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process was reaped
	out  *tailBuffer
}

// New returns a process runtime.
func New(opts Options) *Runtime {
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := opts.TailBytes
	if n <= 0 {
		n = 4 << 10
	}
	return &Runtime{log: log, tail: n, procs: make(map[string]*proc)}
}

// Start runs spec.Command.
func (r *Runtime) Start(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	if len(spec.Command) == 0 {
		return nil, fmt.Errorf("app %q has no command", spec.Name)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[spec.Name]; p != nil {
		select {
		case <-p.done:
		default:
			return nil, fmt.Errorf("app %q already runs as pid %d", spec.Name, p.cmd.Process.Pid)
		}
	}
	argv := spec.Command
	if h := spec.Handoff; h != nil {
		argv = append([]string{h.Binary, "shim", "--"}, argv...)
	}
	// Not exec.CommandContext: the process must outlive the start request's context.
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Dir = spec.Dir
	cmd.Env = appEnv(os.Environ())
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		cmd.Env = append(cmd.Env, k+"="+spec.Env[k])
	}
	if h := spec.Handoff; h != nil {
		cmd.Env = append(cmd.Env, handoff.SocketEnv+"="+filepath.Join(h.Dir, backend.ShimSocket))
	}
	out := &tailBuffer{max: r.tail}
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if spec.User != "" {
		cred, err := credential(spec.User)
		if err != nil {
			return nil, fmt.Errorf("running app %q as user %q: %w", spec.Name, spec.User, err)
		}
		cmd.SysProcAttr.Credential = cred
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("running %q: %w", spec.Command[0], err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{}), out: out}
	r.procs[spec.Name] = p
	exited := make(chan backend.Exit, 1)
	go func() {
		err := cmd.Wait()
		e := backend.Exit{Code: cmd.ProcessState.ExitCode(), Reason: "exited", Logs: out.String()}
		if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.Reason = "killed by " + ws.Signal().String()
			// Signals someone sends (kill(1), systemctl), not crashes (SIGSEGV) nor the
			// OOM killer's SIGKILL.
			e.Killed = ws.Signal() == syscall.SIGTERM || ws.Signal() == syscall.SIGINT || ws.Signal() == syscall.SIGHUP
		} else if err != nil && e.Code < 0 {
			e.Reason = err.Error()
		}
		close(p.done)
		exited <- e
		close(exited)
	}()
	up := spec.Upstream
	if up.IsZero() && spec.Port != 0 {
		up = backend.Addr{Network: "tcp", Address: "127.0.0.1:" + strconv.Itoa(spec.Port)}
	}
	return &backend.Instance{ID: strconv.Itoa(cmd.Process.Pid), Upstream: up, Pid: cmd.Process.Pid, Exited: exited}, nil
}

// hostEnv are sact's own variables that describe the host's service manager: an app that
// saw NOTIFY_SOCKET could tell systemd it is sact (READY, STOPPING, watchdog pings), and
// LISTEN_* would make it take descriptors that are not its own.
var hostEnv = map[string]bool{
	"NOTIFY_SOCKET": true, "LISTEN_FDS": true, "LISTEN_PID": true, "LISTEN_FDNAMES": true,
	"LISTEN_PIDFDID": true, "WATCHDOG_PID": true, "WATCHDOG_USEC": true, "INVOCATION_ID": true,
	"MANAGERPID": true, "JOURNAL_STREAM": true, "SYSTEMD_EXEC_PID": true,
}

// appEnv is sact's environment without hostEnv: what a plain process inherits.
func appEnv(environ []string) []string {
	env := make([]string, 0, len(environ))
	for _, kv := range environ {
		if k, _, _ := strings.Cut(kv, "="); !hostEnv[k] {
			env = append(env, kv)
		}
	}
	return env
}

// credential resolves user: ("name", "uid", "name:group" or "uid:gid") when the app starts
// (not when the config is read: the account may be made later). A user without a group
// runs with its primary group, and never with sact's supplementary groups.
func credential(spec string) (*syscall.Credential, error) {
	name, group, _ := strings.Cut(spec, ":")
	var uid, gid uint64
	u, err := user.Lookup(name)
	if err != nil {
		u, err = user.LookupId(name)
	}
	switch {
	case err == nil:
		uid, _ = strconv.ParseUint(u.Uid, 10, 32)
		gid, _ = strconv.ParseUint(u.Gid, 10, 32)
	default:
		n, perr := strconv.ParseUint(name, 10, 32)
		if perr != nil {
			return nil, fmt.Errorf("no such user on this host: %w; create it or give a numeric uid", err)
		}
		uid, gid = n, n // a uid with no account: its own number as group, as docker does
	}
	if group != "" {
		if n, err := strconv.ParseUint(group, 10, 32); err == nil {
			gid = n
		} else if g, err := user.LookupGroup(group); err == nil {
			gid, _ = strconv.ParseUint(g.Gid, 10, 32)
		} else {
			return nil, fmt.Errorf("no such group on this host: %w; create it or give a numeric gid", err)
		}
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}, nil
}

// Stop sends SIGTERM to the app's process group, and SIGKILL after grace.
func (r *Runtime) Stop(ctx context.Context, spec backend.Spec, grace time.Duration) error {
	r.mu.Lock()
	p := r.procs[spec.Name]
	r.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop(ctx, grace)
}

func (p *proc) stop(ctx context.Context, grace time.Duration) error {
	pgid := p.cmd.Process.Pid
	if err := syscall.Kill(-pgid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("signalling process group %d: %w", pgid, err)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-p.done:
	case <-t.C:
	case <-ctx.Done():
	}
	// Also after the leader exited: children it left in the group go too.
	syscall.Kill(-pgid, syscall.SIGKILL)
	select {
	case <-p.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Pid returns the pid of the app's process, the one the shim runs as, or 0.
func (r *Runtime) Pid(ctx context.Context, spec backend.Spec) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if p := r.procs[spec.Name]; p != nil {
		return p.cmd.Process.Pid, nil
	}
	return 0, nil
}

// Logs returns the last n lines of the app's latest process's output (sact keeps the last
// few KiB).
func (r *Runtime) Logs(ctx context.Context, spec backend.Spec, n int) (string, error) {
	r.mu.Lock()
	p := r.procs[spec.Name]
	r.mu.Unlock()
	if p == nil {
		return "", nil
	}
	lines := strings.Split(p.out.String(), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n") + "\n", nil
}

// Running always reports nothing: plain processes are never left behind by sact.
func (r *Runtime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	return nil, nil
}

// Run waits for ctx to end, then stops every process still running.
func (r *Runtime) Run(ctx context.Context) error {
	<-ctx.Done()
	r.mu.Lock()
	procs := slices.Collect(maps.Values(r.procs))
	r.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Go(func() {
			sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			p.stop(sctx, 5*time.Second)
		})
	}
	wg.Wait()
	return nil
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if over := len(t.b) - t.max; over > 0 {
		t.b = append(t.b[:0], t.b[over:]...)
	}
	return len(p), nil
}

func (t *tailBuffer) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return strings.TrimSpace(string(t.b))
}
