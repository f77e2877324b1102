package handoff

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// DefaultSocket is where the shim looks for the handoff socket inside the container:
	// sact bind-mounts the app's handoff directory at /run/sact-handoff.
	DefaultSocket = "/run/sact-handoff/handoff.sock"
	// SocketEnv overrides DefaultSocket.
	SocketEnv = "SACT_HANDOFF_SOCKET"

	// reexecEnv marks the shim's second run; see cleanRuntimeFDs.
	reexecEnv = "SACT_HANDOFF_REEXEC"

	// defaultPath is used when the container has no PATH; it is docker's default.
	defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

	// shimTimeout bounds connecting to sact and receiving the sockets.
	shimTimeout = 10 * time.Second
)

// Exit codes of `sact shim`, the conventions of env(1), nohup(1) and `docker run`.
const (
	ExitShimFailed = 125 // the shim itself failed: no sockets, bad usage
	ExitCannotRun  = 126 // the command was found but cannot be executed
	ExitNotFound   = 127 // the command was not found
)

// ExitError is what Shim returns. The caller prints it to stderr and exits with Code.
type ExitError struct {
	Code int
	Err  error
}

func (e *ExitError) Error() string { return e.Err.Error() }
func (e *ExitError) Unwrap() error { return e.Err }

// ExitCode returns the exit status `sact shim` should end with after Shim returned err:
// 0 for nil, the code of an *ExitError, and ExitShimFailed for anything else.
func ExitCode(err error) int {
	if err == nil {
		return 0
	}
	var e *ExitError
	if errors.As(err, &e) {
		return e.Code
	}
	return ExitShimFailed
}

func shimFailed(format string, a ...any) error {
	return &ExitError{Code: ExitShimFailed, Err: fmt.Errorf(format, a...)}
}

// Shim runs inside the container as `sact shim -- CMD [ARG...]`: it receives the
// listening sockets from sact, puts them at fd 3, 4, ..., sets LISTEN_FDS, LISTEN_PID and
// LISTEN_FDNAMES, and replaces itself with CMD (found through environ's PATH, as execvp
// does, without a shell). args is CMD and its arguments; a leading "--" is skipped.
// environ is the environment to pass on, minus the variables that point at the host.
//
// Shim only returns on failure, with an *ExitError. Call it before the program opens any
// file or socket of its own: every fd above 2 that is not a passed socket is closed on
// exec. Shim uses only raw system calls, so that Go's network poller is not started; if
// it was (its epoll fd sits where the sockets must go) Shim re-executes the program once
// with those fd numbers held, at the cost of one exec.
func Shim(args []string, environ []string) error {
	if len(args) > 0 && args[0] == "--" {
		args = args[1:]
	}
	if len(args) == 0 {
		return shimFailed("no command: use sact shim -- CMD [ARG...]")
	}
	path, err := lookPath(args[0], getenv(environ, "PATH"))
	if err != nil {
		return err
	}
	if err := cleanRuntimeFDs(environ); err != nil {
		return err
	}
	sock := getenv(environ, SocketEnv)
	if sock == "" {
		sock = DefaultSocket
	}
	fds, names, shared, err := receiveShared(sock, shimTimeout)
	if err != nil {
		return &ExitError{Code: ExitShimFailed, Err: err}
	}
	if err := placeFDs(fds, !shared); err != nil {
		return &ExitError{Code: ExitShimFailed, Err: err}
	}
	env := listenEnv(environ, len(fds), names, unix.Getpid())
	err = unix.Exec(path, args, env)
	return execError(path, err)
}

func getenv(environ []string, key string) string {
	v := ""
	for _, kv := range environ {
		if k, val, ok := strings.Cut(kv, "="); ok && k == key {
			v = val // the last one wins, as with getenv(3) on a deduplicated list
		}
	}
	return v
}

// hostEnv are the variables the app must not see: they describe the host (systemd's
// socket activation and notification of sact itself) or the handoff.
var hostEnv = map[string]bool{
	"LISTEN_FDS":     true,
	"LISTEN_PID":     true,
	"LISTEN_FDNAMES": true,
	"LISTEN_PIDFDID": true,
	"NOTIFY_SOCKET":  true,
	"WATCHDOG_PID":   true,
	"WATCHDOG_USEC":  true,
	SocketEnv:        true,
	reexecEnv:        true,
}

// listenEnv returns environ without hostEnv, plus the socket activation variables.
func listenEnv(environ []string, n int, names []string, pid int) []string {
	env := make([]string, 0, len(environ)+3)
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !hostEnv[k] {
			env = append(env, kv)
		}
	}
	return append(env,
		"LISTEN_FDS="+strconv.Itoa(n),
		"LISTEN_PID="+strconv.Itoa(pid),
		"LISTEN_FDNAMES="+strings.Join(names, ":"),
	)
}

// lookPath finds file as execvp(3) does, with pathEnv instead of the process's PATH:
// a name with a slash is used as it is, otherwise each PATH entry is tried in order (an
// empty entry is the working directory). It needs no shell.
func lookPath(file, pathEnv string) (string, error) {
	if strings.Contains(file, "/") {
		if err := executable(file); err != nil {
			code := ExitCannotRun
			if errors.Is(err, os.ErrNotExist) {
				code = ExitNotFound
			}
			return "", &ExitError{Code: code, Err: fmt.Errorf("%s: %w", file, err)}
		}
		return file, nil
	}
	if pathEnv == "" {
		pathEnv = defaultPath
	}
	var denied error
	for _, dir := range filepath.SplitList(pathEnv) {
		if dir == "" {
			dir = "."
		}
		p := dir + "/" + file
		err := executable(p)
		if err == nil {
			return p, nil
		}
		if denied == nil && !errors.Is(err, os.ErrNotExist) {
			denied = fmt.Errorf("%s: %w", p, err)
		}
	}
	if denied != nil {
		return "", &ExitError{Code: ExitCannotRun, Err: denied}
	}
	return "", &ExitError{Code: ExitNotFound, Err: fmt.Errorf("%s: command not found in PATH=%s", file, pathEnv)}
}

// executable reports why path cannot be executed by us, or nil. os.Stat opens nothing,
// so it does not start the poller.
func executable(path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return os.ErrNotExist
		}
		return err
	}
	if fi.IsDir() {
		return errors.New("is a directory")
	}
	if err := unix.Faccessat(unix.AT_FDCWD, path, unix.X_OK, unix.AT_EACCESS); err != nil {
		return fmt.Errorf("not executable by this user: %w", err)
	}
	return nil
}

func execError(path string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		// The file was there a moment ago: what is missing is its interpreter (#!) or
		// its dynamic loader, which a minimal image easily lacks.
		return &ExitError{Code: ExitNotFound, Err: fmt.Errorf("exec %s: %w; if it is a script or a dynamically linked program, its interpreter or loader is missing from the image", path, err)}
	default:
		return &ExitError{Code: ExitCannotRun, Err: fmt.Errorf("exec %s: %w", path, err)}
	}
}

// receive connects to sact at path and returns the fds (close-on-exec, anywhere) and
// their names. It uses raw system calls only; see Shim.
func receive(path string, timeout time.Duration) (fds []int, names []string, err error) {
	fds, names, _, err = receiveShared(path, timeout)
	return fds, names, err
}

// receiveShared is receive, and says whether the sockets are in use by a running
// incarnation already (kindShared).
func receiveShared(path string, timeout time.Duration) (fds []int, names []string, shared bool, err error) {
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, false, fmt.Errorf("create socket: %w", err)
	}
	defer unix.Close(s)
	tv := unix.NsecToTimeval(timeout.Nanoseconds())
	// SO_SNDTIMEO also bounds connect(2) on a unix socket whose listener's queue is full.
	unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	unix.SetsockoptTimeval(s, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	if err := retryEINTR(func() error { return unix.Connect(s, &unix.SockaddrUnix{Name: path}) }); err != nil {
		return nil, nil, false, connectError(path, err)
	}
	if err := send(s, encode(kindHello, nil)); err != nil {
		return nil, nil, false, fmt.Errorf("say hello to sact: %w", err)
	}

	buf := make([]byte, maxPacket+1)
	oob := make([]byte, unix.CmsgSpace((MaxFiles+1)*4))
	var n, oobn, flags int
	err = retryEINTR(func() (err error) {
		n, oobn, flags, _, err = unix.Recvmsg(s, buf, oob, unix.MSG_CMSG_CLOEXEC)
		return err
	})
	if err != nil {
		if errors.Is(err, unix.EAGAIN) {
			return nil, nil, false, fmt.Errorf("sact did not send the sockets within %v; see sact's log", timeout)
		}
		return nil, nil, false, fmt.Errorf("receive sockets: %w", err)
	}
	fds, err = rights(oob[:oobn])
	defer func() {
		if err != nil {
			for _, fd := range fds {
				unix.Close(fd)
			}
			fds = nil
		}
	}()
	if err != nil {
		return fds, nil, false, fmt.Errorf("receive sockets: %w", err)
	}
	if n == 0 {
		return fds, nil, false, errors.New("sact closed the handoff connection without sending the sockets; see sact's log")
	}
	if flags&unix.MSG_CTRUNC != 0 || flags&unix.MSG_TRUNC != 0 {
		return fds, nil, false, fmt.Errorf("sact sent more than %d sockets or a longer message than this shim understands; the container runs another sact binary than the daemon, recreate it", MaxFiles)
	}
	kind, body, err := decode(buf[:n])
	var perr peerError
	var verr versionError
	switch {
	case errors.As(err, &perr):
		return fds, nil, false, errors.New(perr.text)
	case errors.As(err, &verr):
		return fds, nil, false, fmt.Errorf("sact speaks handoff protocol version %d but this shim speaks version %d: the container runs another sact binary than the daemon; recreate the container (docker rm -f it, sact creates it again)", verr.got, protoVersion)
	case errors.Is(err, errNotSact):
		return fds, nil, false, fmt.Errorf("%s is not a sact handoff socket (unexpected message); check %s", path, SocketEnv)
	case kind != kindFiles && kind != kindShared:
		return fds, nil, false, fmt.Errorf("receive sockets: got message kind %q", kind)
	}
	names, err = decodeNames(body)
	if err != nil {
		return fds, nil, false, fmt.Errorf("receive sockets: %w", err)
	}
	if len(names) != len(fds) {
		return fds, nil, false, fmt.Errorf("receive sockets: %d names but %d fds arrived", len(names), len(fds))
	}
	if len(fds) == 0 {
		return fds, nil, false, errors.New("sact sent no sockets")
	}
	if err := send(s, encode(kindAck, nil)); err != nil {
		return fds, nil, false, fmt.Errorf("acknowledge the sockets: %w", err)
	}
	return fds, names, kind == kindShared, nil
}

func connectError(path string, err error) error {
	switch {
	case errors.Is(err, unix.ENOENT):
		return fmt.Errorf("no handoff socket at %s: start the container through sact with `handoff: true` (sact mounts the handoff directory at %s), or set %s", path, filepath.Dir(DefaultSocket), SocketEnv)
	case errors.Is(err, unix.EACCES):
		return fmt.Errorf("connect to %s: permission denied: the container runs as uid %d, which is not the `user:` sact was given for this app; set `user:` to the numeric uid the container runs as", path, unix.Geteuid())
	case errors.Is(err, unix.ECONNREFUSED):
		return fmt.Errorf("connect to %s: nobody listens: sact is not serving this app's handoff (it stopped, or the container was started without it)", path)
	case errors.Is(err, unix.EPROTOTYPE):
		return fmt.Errorf("%s is not a sact handoff socket (wrong socket type); check %s", path, SocketEnv)
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("connect to %s: sact did not accept within %v", path, shimTimeout)
	}
	return fmt.Errorf("connect to %s: %w", path, err)
}

func send(s int, b []byte) error {
	return retryEINTR(func() error {
		_, err := unix.Write(s, b)
		return err
	})
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); !errors.Is(err, unix.EINTR) {
			return err
		}
	}
}

func rights(oob []byte) ([]int, error) {
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, err
	}
	var fds []int
	for i := range msgs {
		fs, err := unix.ParseUnixRights(&msgs[i])
		if err != nil {
			continue // not SCM_RIGHTS
		}
		fds = append(fds, fs...)
	}
	return fds, nil
}

// placeFDs moves fds to 3, 4, ... (not close-on-exec, blocking, as systemd passes them
// by default) and marks every other fd above them close-on-exec, so that after exec the
// app holds 0-2 and the sockets, nothing else.
//
// Order matters. First every socket that sits inside the target range is duplicated
// above it, so that placing one socket can never overwrite another. Then dup3 puts each
// at its place, silently closing whatever held that number. That is safe for the fds the
// Go runtime may hold there only if they are regular files (the cgroup files it reads
// for GOMAXPROCS: a failed read is ignored), never for its epoll and eventfd, which
// cleanRuntimeFDs has moved out of the way; placeFDs checks again. Marking instead of
// closing the rest keeps the runtime's own fds working until the exec.
func placeFDs(fds []int, blocking bool) error {
	end := 3 + len(fds)
	for i, fd := range fds {
		if fd >= end {
			continue
		}
		high, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, end)
		if err != nil {
			return fmt.Errorf("move received socket: %w", err)
		}
		unix.Close(fd)
		fds[i] = high
	}
	for target := 3; target < end; target++ {
		if desc, held := runtimeFD(target); held {
			return fmt.Errorf("fd %d, where a socket must go, is used by the Go runtime (%s); call the shim before opening files", target, desc)
		}
	}
	for i, fd := range fds {
		target := 3 + i
		if err := unix.Dup3(fd, target, 0); err != nil {
			return fmt.Errorf("move socket to fd %d: %w", target, err)
		}
		if !blocking {
			continue // shared with a running process: its mode is its own
		}
		fl, err := unix.FcntlInt(uintptr(target), unix.F_GETFL, 0)
		if err == nil && fl&unix.O_NONBLOCK != 0 {
			_, err = unix.FcntlInt(uintptr(target), unix.F_SETFL, fl&^unix.O_NONBLOCK)
		}
		if err != nil {
			return fmt.Errorf("make fd %d blocking: %w", target, err)
		}
	}
	return cloexecFrom(end)
}

// runtimeFD reports whether fd is open and looks like one the running Go runtime depends
// on: close-on-exec (so opened by this process, not inherited) and not a regular file.
func runtimeFD(fd int) (desc string, held bool) {
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	if err != nil || fl&unix.FD_CLOEXEC == 0 {
		return "", false
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT == unix.S_IFREG {
		return "", false
	}
	buf := make([]byte, 128)
	if n, err := unix.Readlink("/proc/self/fd/"+strconv.Itoa(fd), buf); err == nil {
		return string(buf[:n]), true
	}
	return fmt.Sprintf("mode %#o", st.Mode), true
}

// cleanRuntimeFDs makes sure that no fd the Go runtime depends on sits where the sockets
// will go (3 .. 3+MaxFiles). Normally none does: the shim never starts the poller. If the
// program started it before calling Shim, the shim re-executes itself (/proc/self/exe
// with the same arguments) after filling every free fd number in that range with a
// placeholder and letting the runtime's fds there survive the exec: the new runtime then
// opens its fds above the range, and the placeholders are overwritten or closed later.
func cleanRuntimeFDs(environ []string) error {
	dirty := -1
	for fd := 3; fd < 3+MaxFiles; fd++ {
		if _, held := runtimeFD(fd); held {
			dirty = fd
			break
		}
	}
	if dirty < 0 {
		return nil
	}
	desc, _ := runtimeFD(dirty)
	if getenv(environ, reexecEnv) != "" {
		return shimFailed("fd %d (%s) is used by the Go runtime even after re-executing; call the shim before opening files", dirty, desc)
	}
	hold, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return shimFailed("hold fd numbers for the sockets: %w", err)
	}
	for fd := 3; fd < 3+MaxFiles; fd++ {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil {
			// Open (the runtime's, or hold itself): let it survive the exec as a placeholder.
			_, err = unix.FcntlInt(uintptr(fd), unix.F_SETFD, 0)
			if err != nil {
				return shimFailed("hold fd %d: %w", fd, err)
			}
			continue
		}
		if err := unix.Dup3(hold, fd, 0); err != nil {
			return shimFailed("hold fd %d: %w", fd, err)
		}
	}
	env := append(append([]string(nil), environ...), reexecEnv+"=1")
	err = unix.Exec("/proc/self/exe", os.Args, env)
	return shimFailed("re-execute the shim to free fd %d (%s) held by the Go runtime: %w", dirty, desc, err)
}

// cloexecFrom marks every fd >= from close-on-exec.
func cloexecFrom(from int) error {
	err := unix.CloseRange(uint(from), math.MaxUint32, unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	// Before Linux 5.11: walk the open fds, or every possible one without /proc.
	last := 1 << 16
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_NOFILE, &rl) == nil && rl.Cur < uint64(last) {
		last = int(rl.Cur)
	}
	for _, fd := range openFDs(from, last) {
		if fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err == nil && fl&unix.FD_CLOEXEC == 0 {
			if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFD, fl|unix.FD_CLOEXEC); err != nil {
				return fmt.Errorf("close fd %d on exec: %w", fd, err)
			}
		}
	}
	return nil
}

// openFDs lists the fds >= from from /proc/self/fd with raw system calls, or, without
// /proc, every number from from to last.
func openFDs(from, last int) []int {
	var fds []int
	dir, err := unix.Open("/proc/self/fd", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		for fd := from; fd < last; fd++ {
			fds = append(fds, fd)
		}
		return fds
	}
	defer unix.Close(dir)
	buf := make([]byte, 8192)
	for {
		n, err := unix.Getdents(dir, buf)
		if err != nil || n <= 0 {
			break
		}
		var names []string
		_, _, names = unix.ParseDirent(buf[:n], -1, names)
		for _, name := range names {
			if fd, err := strconv.Atoi(name); err == nil && fd >= from && fd != dir {
				fds = append(fds, fd)
			}
		}
	}
	return fds
}
