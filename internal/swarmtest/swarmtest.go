// Package swarmtest makes a real two-node Docker Swarm on one machine for sact's tests and
// benchmarks: the host's engine is the manager, and a second dockerd, run in a network
// namespace of its own, is the worker.
//
// The worker reaches the manager, and sact reaches the worker's tasks, over a veth pair:
// 10.231.0.1/24 on the host side, 10.231.0.2/24 inside the namespace. Nothing else is
// routed: a test's traffic goes to loopback and to 10.231.0.x only.
//
// Everything is torn down when the test ends, also when it fails or panics: sact's
// services, swarm membership on both engines, the second daemon, the namespace and its
// veth, the directories. The host's engine is never left in swarm mode. Names are fixed
// (one swarm at a time per machine, under a lock), so that Start first removes what a
// crashed earlier run left behind; a swarm that is not this package's (no mark of
// Start's names the host's node) is never touched: Start fails instead.
//
// Start needs root, ip(8), nsenter(1) and dockerd(8).
package swarmtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fixed names of the swarm's pieces.
const (
	NetNS     = "sact-swarmtest"
	vethHost  = "sactsw0"
	vethNS    = "sactsw1"
	ManagerIP = "10.231.0.1"
	WorkerIP  = "10.231.0.2"
	workerBIP = "172.31.7.1/24"
	Dir       = "/tmp/sact-swarmtest" // the worker's data, exec root, socket, pidfile
	lockPath  = "/tmp/sact-swarmtest.lock"
	// markPath holds "init" while the host's engine joins a swarm of Start's making, then
	// its node ID: a later run leaves only a swarm so marked.
	markPath = "/tmp/sact-swarmtest.manager"
)

// Swarm is a running two-node swarm.
type Swarm struct {
	// WorkerHost is the worker engine's DOCKER_HOST, a unix socket on this host.
	WorkerHost string
	// WorkerNode is the worker's node ID.
	WorkerNode string
	// ManagerNode is the host engine's node ID.
	ManagerNode string

	t      T
	daemon *exec.Cmd
	exited chan struct{}
}

// Tools are the programs Start runs; Missing names those not installed.
var Tools = []string{"ip", "nsenter", "dockerd", "docker"}

// Missing returns the first of Tools not found, or "".
func Missing() string {
	for _, n := range Tools {
		if _, err := exec.LookPath(n); err != nil {
			for _, d := range []string{"/usr/sbin", "/sbin"} {
				if _, err := os.Stat(filepath.Join(d, n)); err == nil {
					goto found
				}
			}
			return n
		}
	found:
	}
	if os.Geteuid() != 0 {
		return "root"
	}
	return ""
}

// T is what Start needs of a test: testing.TB has it, and a benchmark program can too.
type T interface {
	Helper()
	Cleanup(func())
	Errorf(format string, args ...any)
	Fatalf(format string, args ...any)
}

var _ T = testing.TB(nil)

// Start makes the swarm, copies images to the worker with docker save | load, and
// registers its teardown with t.Cleanup. It fails t if the swarm cannot be made.
func Start(t T, images ...string) *Swarm {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	unlock, err := lock(ctx)
	if err != nil {
		t.Fatalf("swarmtest: %v", err)
	}
	s := &Swarm{t: t, WorkerHost: "unix://" + filepath.Join(Dir, "docker.sock"), exited: make(chan struct{})}
	// Cleanup runs even after a panic or t.Fatal in the test, and in reverse order: the
	// lock goes last.
	t.Cleanup(unlock)
	if err := s.teardown(); err != nil {
		t.Fatalf("swarmtest: removing what an earlier run left: %v", err)
	}
	t.Cleanup(func() {
		if err := s.teardown(); err != nil {
			t.Errorf("swarmtest: teardown: %v", err)
		}
	})
	if err := s.start(ctx, images); err != nil {
		t.Fatalf("swarmtest: %v", err)
	}
	return s
}

func (s *Swarm) start(ctx context.Context, images []string) error {
	steps := [][]string{
		{"ip", "netns", "add", NetNS},
		{"ip", "link", "add", vethHost, "type", "veth", "peer", "name", vethNS},
		{"ip", "link", "set", vethNS, "netns", NetNS},
		{"ip", "addr", "add", ManagerIP + "/24", "dev", vethHost},
		{"ip", "link", "set", vethHost, "up"},
		{"ip", "-n", NetNS, "addr", "add", WorkerIP + "/24", "dev", vethNS},
		{"ip", "-n", NetNS, "link", "set", vethNS, "up"},
		{"ip", "-n", NetNS, "link", "set", "lo", "up"},
	}
	for _, st := range steps {
		if _, err := run(ctx, nil, st...); err != nil {
			return err
		}
	}
	if err := os.MkdirAll(Dir, 0o700); err != nil {
		return err
	}
	empty := filepath.Join(Dir, "empty.json")
	if err := os.WriteFile(empty, []byte("{}\n"), 0o600); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(Dir, "dockerd.log"))
	if err != nil {
		return err
	}
	// nsenter, not `ip netns exec`: that remounts /sys, which hides the cgroups from
	// dockerd. An empty --config-file: the host's daemon.json would clash with the flags.
	s.daemon = exec.Command("nsenter", "--net=/var/run/netns/"+NetNS, "dockerd",
		"--config-file", empty,
		"--data-root", filepath.Join(Dir, "data"),
		"--exec-root", filepath.Join(Dir, "exec"),
		"--pidfile", filepath.Join(Dir, "dockerd.pid"),
		"-H", s.WorkerHost,
		"--bip", workerBIP,
		"--storage-driver", "vfs")
	s.daemon.Stdout, s.daemon.Stderr = logf, logf
	// No registry: without this the worker tries to pull every task's image from Docker
	// Hub first (and the namespace has no route there).
	s.daemon.Env = append(os.Environ(), "DOCKER_SERVICE_PREFER_OFFLINE_IMAGE=1")
	if err := s.daemon.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("starting the worker's dockerd: %w", err)
	}
	go func() { s.daemon.Wait(); logf.Close(); close(s.exited) }()
	if err := s.waitWorker(ctx); err != nil {
		return err
	}
	// The mark makes the swarm this package's, for the next run's cleanup.
	if err := os.WriteFile(markPath, []byte("init"), 0o600); err != nil {
		return err
	}
	if _, err := run(ctx, nil, "docker", "swarm", "init", "--advertise-addr", ManagerIP, "--listen-addr", ManagerIP+":2377"); err != nil {
		return err
	}
	token, err := run(ctx, nil, "docker", "swarm", "join-token", "-q", "worker")
	if err != nil {
		return err
	}
	if _, err := s.Worker(ctx, "swarm", "join", "--token", token, ManagerIP+":2377"); err != nil {
		return err
	}
	if s.ManagerNode, err = run(ctx, nil, "docker", "info", "--format", "{{.Swarm.NodeID}}"); err != nil {
		return err
	}
	if err := os.WriteFile(markPath, []byte(s.ManagerNode), 0o600); err != nil {
		return err
	}
	if s.WorkerNode, err = s.Worker(ctx, "info", "--format", "{{.Swarm.NodeID}}"); err != nil {
		return err
	}
	for _, img := range images {
		if err := s.CopyImage(ctx, img); err != nil {
			return err
		}
	}
	return s.waitReady(ctx)
}

// waitWorker waits for the worker's engine to answer.
func (s *Swarm) waitWorker(ctx context.Context) error {
	for {
		if _, err := s.Worker(ctx, "version", "--format", "{{.Server.Version}}"); err == nil {
			return nil
		}
		select {
		case <-s.exited:
			log, _ := os.ReadFile(filepath.Join(Dir, "dockerd.log"))
			return fmt.Errorf("the worker's dockerd exited: %s", tail(log))
		case <-ctx.Done():
			return fmt.Errorf("the worker's dockerd does not answer: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitReady waits until the manager sees the worker ready.
func (s *Swarm) waitReady(ctx context.Context) error {
	for {
		st, err := run(ctx, nil, "docker", "node", "inspect", "-f", "{{.Status.State}}", s.WorkerNode)
		if err == nil && st == "ready" {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("the worker node is %q, not ready: %v", st, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// LabelWorkerEngine labels the worker node with its engine's address (sact.engine), so
// that sact follows its containers' events.
func (s *Swarm) LabelWorkerEngine(ctx context.Context) error {
	_, err := run(ctx, nil, "docker", "node", "update", "--label-add", "sact.engine="+s.WorkerHost, s.WorkerNode)
	return err
}

// CopyImage loads the host engine's image into the worker's (docker save | docker load):
// there is no registry.
func (s *Swarm) CopyImage(ctx context.Context, image string) error {
	save := exec.CommandContext(ctx, "docker", "save", image)
	load := exec.CommandContext(ctx, "docker", "load", "-q")
	load.Env = append(os.Environ(), "DOCKER_HOST="+s.WorkerHost)
	pipe, err := save.StdoutPipe()
	if err != nil {
		return err
	}
	load.Stdin = pipe
	var serr, lerr bytes.Buffer
	save.Stderr, load.Stderr = &serr, &lerr
	if err := save.Start(); err != nil {
		return err
	}
	err = load.Run()
	if werr := save.Wait(); werr != nil {
		return fmt.Errorf("docker save %s: %v: %s", image, werr, serr.Bytes())
	}
	if err != nil {
		return fmt.Errorf("docker load %s into the worker: %v: %s", image, err, lerr.Bytes())
	}
	return nil
}

// Worker runs the docker CLI against the worker's engine.
func (s *Swarm) Worker(ctx context.Context, args ...string) (string, error) {
	return run(ctx, []string{"DOCKER_HOST=" + s.WorkerHost}, append([]string{"docker"}, args...)...)
}

// teardown removes everything Start makes, as far as it exists; it is also Start's first
// step, for what a crashed run left.
func (s *Swarm) teardown() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var errs []error
	state, err := run(ctx, nil, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}")
	if err != nil {
		return err
	}
	if state != "inactive" {
		node, _ := run(ctx, nil, "docker", "info", "--format", "{{.Swarm.NodeID}}")
		mark, _ := os.ReadFile(markPath)
		if m := string(mark); m != "init" && (m == "" || m != node) {
			return fmt.Errorf("the host's engine is in a swarm (%s) that is not this test's; leaving it alone, and not running", state)
		}
		// Services first: their tasks' containers go with them.
		if ids, err := run(ctx, nil, "docker", "service", "ls", "-q"); err == nil && ids != "" {
			if _, err := run(ctx, nil, append([]string{"docker", "service", "rm"}, strings.Fields(ids)...)...); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if s.workerUp(ctx) {
		if _, err := s.Worker(ctx, "swarm", "leave", "--force"); err != nil && !strings.Contains(err.Error(), "not part of a swarm") {
			errs = append(errs, err)
		}
	}
	if state != "inactive" {
		if _, err := run(ctx, nil, "docker", "swarm", "leave", "--force"); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, s.stopWorker())
	if _, err := os.Stat("/var/run/netns/" + NetNS); err == nil {
		if _, err := run(ctx, nil, "ip", "netns", "del", NetNS); err != nil {
			errs = append(errs, err)
		}
	}
	if _, err := net.InterfaceByName(vethHost); err == nil {
		if _, err := run(ctx, nil, "ip", "link", "del", vethHost); err != nil {
			errs = append(errs, err)
		}
	}
	errs = append(errs, removeDir(Dir))
	if st, err := run(ctx, nil, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}"); err == nil && st == "inactive" {
		os.Remove(markPath)
	}
	if st, err := run(ctx, nil, "docker", "info", "--format", "{{.Swarm.LocalNodeState}}"); err != nil || st != "inactive" {
		errs = append(errs, fmt.Errorf("the host's engine is still in swarm state %q (%v)", st, err))
	}
	return errors.Join(errs...)
}

func (s *Swarm) workerUp(ctx context.Context) bool {
	if _, err := os.Stat(filepath.Join(Dir, "docker.sock")); err != nil {
		return false
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err := s.Worker(cctx, "version", "--format", "{{.Server.Version}}")
	return err == nil
}

// stopWorker ends the worker's dockerd: the one this run started, or the one whose
// pidfile an earlier run left, if that process is still that dockerd (its command line
// names Dir).
func (s *Swarm) stopWorker() error {
	pid := 0
	if s.daemon != nil && s.daemon.Process != nil {
		pid = s.daemon.Process.Pid
	} else if b, err := os.ReadFile(filepath.Join(Dir, "dockerd.pid")); err == nil {
		pid, _ = strconv.Atoi(strings.TrimSpace(string(b)))
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if !bytes.Contains(cmd, []byte(Dir)) {
			pid = 0
		}
	}
	if pid <= 0 {
		return nil
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return nil
	}
	p.Signal(syscall.SIGTERM) // dockerd stops its containers on the way out
	deadline := time.Now().Add(30 * time.Second)
	for alive(pid, s) && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(pid, s) {
		p.Kill()
		time.Sleep(500 * time.Millisecond)
	}
	if alive(pid, s) {
		return fmt.Errorf("the worker's dockerd (pid %d) does not exit", pid)
	}
	return nil
}

func alive(pid int, s *Swarm) bool {
	if s.daemon != nil && s.daemon.Process != nil && s.daemon.Process.Pid == pid {
		select {
		case <-s.exited:
			return false
		default:
			return true
		}
	}
	return syscall.Kill(pid, 0) == nil
}

// removeDir removes the worker's directory, unmounting what its dockerd left mounted
// there (a killed dockerd leaves its exec root's mounts).
func removeDir(dir string) error {
	if _, err := os.Stat(dir); err != nil {
		return nil
	}
	if b, err := os.ReadFile("/proc/self/mounts"); err == nil {
		var ms []string
		for _, line := range strings.Split(string(b), "\n") {
			if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
				ms = append(ms, f[1])
			}
		}
		for i := len(ms) - 1; i >= 0; i-- {
			syscall.Unmount(ms[i], syscall.MNT_DETACH)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing %s: %w", dir, err)
	}
	return nil
}

func run(ctx context.Context, env []string, argv ...string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, bytes.TrimSpace(out))
	}
	return strings.TrimSpace(string(out)), nil
}

func tail(b []byte) []byte {
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return b
}

// lock takes the machine-wide lock of the swarm's fixed names.
func lock(ctx context.Context) (func(), error) {
	f, err := os.OpenFile(lockPath, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	for {
		if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err == nil {
			return func() { f.Close() }, nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, fmt.Errorf("another test holds %s: %w", lockPath, ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
}
