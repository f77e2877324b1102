package cli

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/listen"
)

// Restarting sact without systemd, the way nginx upgrades its binary: on SIGUSR2 (which
// `sact restart` sends), sact starts its own binary again with the same arguments and
// passes it every listening socket (LISTEN_FDS, as systemd would, matched by address),
// plus a pipe. The new sact binds nothing anew, adopts the running apps and, once it
// serves, says so on the pipe; only then does the old one stop accepting, let its open
// connections finish (up to the drain timeout) and exit, leaving the apps running. No
// connection is refused: both accept on the same sockets for a moment. If the new sact
// fails before it serves, the old one keeps serving and logs why.

const (
	// readyFDEnv names the new sact's end of the pipe it reports readiness on.
	readyFDEnv = "SACT_HANDOVER_READY_FD"
	// handoverTimeout is how long the old sact waits for the new one to serve.
	handoverTimeout = 2 * time.Minute
	// pidFileName, in the run dir, holds the pid of the sact that serves.
	pidFileName = "sact.pid"
)

// takeHandover is called first thing in a sact started by a handover: the sockets are
// its own (LISTEN_PID is set to its pid, which the old sact could not know), and it
// returns the function that reports readiness, or nil when this sact was not started so.
func takeHandover() func() {
	v := os.Getenv(readyFDEnv)
	if v == "" {
		return nil
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(v)
	if err != nil || fd < 3 {
		return nil
	}
	syscall.CloseOnExec(fd) // no app started by sact inherits it
	os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
	f := os.NewFile(uintptr(fd), "handover-ready")
	return func() {
		f.Write([]byte("ready\n"))
		f.Close()
	}
}

// handOver starts the new sact with this one's sockets and waits until it serves. A nil
// error means it does: the caller stops this sact.
func handOver(log *slog.Logger) error {
	if os.Getenv("NOTIFY_SOCKET") != "" {
		return errors.New("sact runs under systemd, which would lose track of a new process: use `systemctl restart sact` (sact.socket keeps the sockets)")
	}
	self, err := os.Executable()
	if err != nil {
		return fmt.Errorf("finding sact's own binary: %w", err)
	}
	files, err := listen.Files()
	if err != nil {
		return err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	r, w, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("making the readiness pipe: %w", err)
	}
	defer r.Close()
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append(files, w) // fds 3..3+n-1 are the sockets, 3+n the pipe
	cmd.Env = append(handoverEnv(os.Environ()),
		"LISTEN_FDS="+strconv.Itoa(len(files)),
		readyFDEnv+"="+strconv.Itoa(3+len(files)))
	err = cmd.Start()
	w.Close() // only the new sact holds it: its exit ends our read
	if err != nil {
		return fmt.Errorf("starting %s: %w", self, err)
	}
	log.Info("restarting: new sact started with the listening sockets", "pid", cmd.Process.Pid, "sockets", len(files))
	r.SetReadDeadline(time.Now().Add(handoverTimeout))
	buf := make([]byte, 16)
	n, err := r.Read(buf)
	if n > 0 && strings.HasPrefix(string(buf[:n]), "ready") {
		cmd.Process.Release()
		return nil
	}
	// It exited, or hangs: this sact keeps serving.
	cmd.Process.Kill()
	state := cmd.Wait()
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("the new sact (pid %d) did not serve within %v; killed it", cmd.Process.Pid, handoverTimeout)
	}
	return fmt.Errorf("the new sact (pid %d) exited before it served (%v); its log says why", cmd.Process.Pid, state)
}

// handoverEnv is env without what systemd passed this sact.
func handoverEnv(env []string) []string {
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		switch k {
		case "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES", "WATCHDOG_USEC", "WATCHDOG_PID", readyFDEnv:
			continue
		}
		out = append(out, kv)
	}
	return out
}

// underSystemd is the pid file's second line when systemd runs this sact.
const underSystemd = "systemd"

// writePidFile records that this sact serves from runDir: its pid, and on a second line
// "systemd" if systemd runs it (sact restart then says to use systemctl).
func writePidFile(runDir string) error {
	p := filepath.Join(runDir, pidFileName)
	tmp := p + ".tmp" + strconv.Itoa(os.Getpid())
	content := strconv.Itoa(os.Getpid()) + "\n"
	if os.Getenv("NOTIFY_SOCKET") != "" {
		content += underSystemd + "\n"
	}
	if err := os.WriteFile(tmp, []byte(content), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// removePidFile removes the pid file if it is still this sact's.
func removePidFile(runDir string) {
	p := filepath.Join(runDir, pidFileName)
	if pid, err := readPid(p); err == nil && pid == os.Getpid() {
		os.Remove(p)
	}
}

func readPid(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	first, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(first))
	if err != nil || pid <= 0 {
		return 0, fmt.Errorf("%s holds no pid: %q", path, b)
	}
	return pid, nil
}

// restart is `sact restart`: SIGUSR2 to the running sact, then wait until a new one serves
// and the old one has exited.
func restart(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "restart")
	af := newAdminFlags(fs) // its -run-dir is also the run dir of the sact to restart
	runDir := af.runDir
	timeout := fs.Duration("timeout", handoverTimeout+15*time.Second, "how long to wait for the new sact to serve and the old one to exit")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		// sact restart NAME: one app, through the API (issue 17).
		name := fs.Arg(0)
		if err := parse(fs, fs.Args()[1:]); err != nil {
			return err
		}
		var st admin.AppStatus
		if err := call(ctx, af, "POST", "/api/apps/"+url.PathEscape(name)+"/restart", &st); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s: %s\n", st.Name, st.State)
		return nil
	}
	path := filepath.Join(*runDir, pidFileName)
	old, err := readPid(path)
	if err != nil {
		return fmt.Errorf("no running sact found: %w (under systemd, use `systemctl restart sact`)", err)
	}
	if b, _ := os.ReadFile(path); strings.Contains(string(b), "\n"+underSystemd+"\n") {
		return fmt.Errorf("sact (pid %d) runs under systemd: use `systemctl restart sact`, which refuses no connection either (sact.socket and the fd store hold the sockets)", old)
	}
	// A stale pid file may name a process that is not sact (the pid reused after a crash):
	// SIGUSR2 would kill it.
	if !isSactServe(old) {
		return fmt.Errorf("pid %d in %s is not a running `sact serve` (a stale pid file?); start sact, or remove the file", old, path)
	}
	if err := syscall.Kill(old, syscall.SIGUSR2); err != nil {
		return fmt.Errorf("signalling sact (pid %d from %s): %w", old, path, err)
	}
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		if pid, err := readPid(path); err == nil && pid != old {
			for syscall.Kill(old, 0) == nil && time.Now().Before(deadline) {
				time.Sleep(50 * time.Millisecond) // the old one drains
			}
			if syscall.Kill(old, 0) == nil {
				return fmt.Errorf("the new sact (pid %d) serves, but the old one (pid %d) has not exited", pid, old)
			}
			fmt.Fprintf(e.stdout, "sact restarted: pid %d -> %d\n", old, pid)
			return nil
		}
		if syscall.Kill(old, 0) != nil {
			return fmt.Errorf("sact (pid %d) exited and no new sact serves; see its log", old)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("no new sact served within %v; the old one (pid %d) keeps serving, and its log says why", *timeout, old)
}

// isSactServe reports whether pid runs `sact serve`, from its command line.
func isSactServe(pid int) bool {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimRight(string(b), "\x00"), "\x00")
	return len(args) >= 2 && strings.HasPrefix(filepath.Base(args[0]), "sact") && args[1] == "serve"
}
