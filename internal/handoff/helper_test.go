package handoff

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// The test binary doubles as the programs of a handoff, selected by os.Args[1] when
// SACT_TEST_HELPER=1:
//
//	shim -- CMD...   runs Shim, like `sact shim -- CMD...`
//	serve            the app: checks what it inherited, answers one client per socket
//	receive          runs receive against $SACT_HANDOFF_SOCKET and prints the outcome
const helperEnv = "SACT_TEST_HELPER"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" && len(os.Args) > 1 {
		os.Exit(helperMain(os.Args[1], os.Args[2:]))
	}
	os.Exit(m.Run())
}

func helperMain(role string, args []string) int {
	switch role {
	case "shim":
		if os.Getenv("SACT_TEST_DIRTY") == "1" {
			// Start Go's poller before the shim runs, as a careless caller would: its
			// epoll fd lands where the sockets must go.
			f, err := os.Open("/dev/null")
			if err != nil {
				fmt.Fprintln(os.Stderr, err)
				return 1
			}
			defer f.Close()
		}
		err := Shim(args, os.Environ())
		fmt.Fprintln(os.Stderr, "sact shim:", err)
		return ExitCode(err)
	case "serve":
		if err := serveMain(); err != nil {
			fmt.Fprintln(os.Stderr, "serve:", err)
			return 1
		}
		return 0
	case "receive":
		fds, names, err := receive(os.Getenv(SocketEnv), shimTimeout)
		if err != nil {
			fmt.Println("error:", err)
			return 1
		}
		fmt.Println("ok:", len(fds), strings.Join(names, ":"))
		return 0
	}
	fmt.Fprintln(os.Stderr, "unknown helper role", role)
	return 2
}

// serveMain is the app: it checks the socket activation contract, then answers one
// client on each socket with "NAME PID\n".
func serveMain() error {
	wantNames := strings.Split(os.Getenv("SACT_TEST_WANT_NAMES"), ":")
	wantFamilies := strings.Split(os.Getenv("SACT_TEST_WANT_FAMILIES"), ":")
	n := len(wantNames)
	if got := os.Getenv("LISTEN_FDS"); got != strconv.Itoa(n) {
		return fmt.Errorf("LISTEN_FDS=%q, want %d", got, n)
	}
	if got := os.Getenv("LISTEN_PID"); got != strconv.Itoa(os.Getpid()) {
		return fmt.Errorf("LISTEN_PID=%q, want our pid %d", got, os.Getpid())
	}
	if got := os.Getenv("LISTEN_FDNAMES"); got != strings.Join(wantNames, ":") {
		return fmt.Errorf("LISTEN_FDNAMES=%q, want %q", got, strings.Join(wantNames, ":"))
	}
	for _, k := range []string{"LISTEN_PIDFDID", "NOTIFY_SOCKET", SocketEnv, reexecEnv, "WATCHDOG_PID"} {
		if v, ok := os.LookupEnv(k); ok {
			return fmt.Errorf("%s=%q leaked into the app's environment", k, v)
		}
	}
	for i := range n {
		fd := 3 + i
		dom, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_DOMAIN)
		if err != nil {
			return fmt.Errorf("fd %d: %v", fd, err)
		}
		want := map[string]int{"inet": unix.AF_INET, "unix": unix.AF_UNIX}[wantFamilies[i]]
		if dom != want {
			return fmt.Errorf("fd %d: domain %d, want %s (%d)", fd, dom, wantFamilies[i], want)
		}
		if on, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN); on != 1 {
			return fmt.Errorf("fd %d is not listening", fd)
		}
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); fl&unix.FD_CLOEXEC != 0 {
			return fmt.Errorf("fd %d is close-on-exec", fd)
		}
		if fl, _ := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0); fl&unix.O_NONBLOCK != 0 {
			return fmt.Errorf("fd %d is non-blocking, systemd passes blocking sockets", fd)
		}
	}
	// Every fd the exec carried over lacks close-on-exec; whatever this process opened
	// itself (the runtime's cgroup files, the directory below) has it. So any fd above
	// the sockets without it leaked through the shim.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, _ := strconv.Atoi(e.Name())
		if fd < 3+n {
			continue
		}
		fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
		if err == nil && fl&unix.FD_CLOEXEC == 0 {
			link, _ := os.Readlink("/proc/self/fd/" + e.Name())
			return fmt.Errorf("fd %d (%s) leaked into the app", fd, link)
		}
	}

	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			ln, err := net.FileListener(os.NewFile(uintptr(3+i), wantNames[i]))
			if err != nil {
				errs[i] = err
				return
			}
			c, err := ln.Accept()
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			_, errs[i] = fmt.Fprintf(c, "%s %d\n", wantNames[i], os.Getpid())
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// helperCmd returns a command that runs the test binary bin in role.
func helperCmd(t *testing.T, bin string, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, args...)
	cmd.Env = append(slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "LISTEN_") || strings.HasPrefix(kv, "SACT_")
	}), helperEnv+"=1")
	cmd.Env = append(cmd.Env, env...)
	return cmd
}
