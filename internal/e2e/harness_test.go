package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

var (
	sactBin   string // the built sact binary
	testImage string // the test server image, or "" without Docker
	dockerErr error  // why Docker is not usable
)

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	// The side-by-side tests (below) wait far more than they work: four at once, unless
	// the command line says otherwise. Only this package: the unit tests keep go test's
	// default of one per CPU.
	flag.Parse()
	parallelSet := false
	flag.Visit(func(f *flag.Flag) { parallelSet = parallelSet || f.Name == "test.parallel" })
	if !parallelSet {
		flag.Set("test.parallel", "4")
	}
	dir, err := os.MkdirTemp("", "sact-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	sactBin = filepath.Join(dir, "sact")
	build := exec.Command("go", "build", "-o", sactBin, "../../cmd/sact")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // static: handoff runs it inside containers
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building sact:", err)
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if out, err := exec.CommandContext(ctx, "docker", "info", "--format", "{{.ServerVersion}}").CombinedOutput(); err != nil {
		dockerErr = fmt.Errorf("docker info: %v: %s", err, bytes.TrimSpace(out))
	} else {
		testImage, dockerErr = testimage.TestServer(ctx)
	}
	return m.Run()
}

// Side by side: a test that calls t.Parallel runs beside the others once the serial ones
// are done (4 at once: runMain). It must own everything it touches (its own sact,
// run dir, ports from freeAddr, app names from uniqueName) and spend its time waiting
// (idle timeouts, steady light traffic), not working. These stay serial:
//   - a test that asserts a latency or a render time (TestBrokenAppsFailFastOthersServe,
//     TestFrontDoor*, TestGoneClientsGiveTheirSlotBack, TestHandoffPeerFlood, the
//     dashboards), which a busy machine would break;
//   - a test that makes containers or images with the run's labelSelector: every sact
//     running then would take them as its apps (labels_test, TestReadyByLabel,
//     TestImageLabelsDeclareNoApp);
//   - a test of what is one per host: the swarm, systemd in its container, the client
//     network namespace (TestIngressClientsElsewhere);
//   - a test that loads the machine itself (TestManyIdleConnections,
//     TestAdminAndTrafficHammer), or whose attack must outpace sact: TestHostileApps'
//     handoff flood must have more peers open at once than sact serves (4); beside the
//     others its 500 came slowly enough for sact to close each before the cap was
//     reached, and the log line the test waits for never came.

// parallel is t.Parallel for a test that also runs as a subtest of TestKernelPath, which
// has made it parallel already (a second call panics).
func parallel(t *testing.T) {
	if !strings.HasPrefix(t.Name(), kernelPath+"/") {
		t.Parallel()
	}
}

// needDocker skips the test without a usable engine, or fails it under required() (CI, or
// SACT_REQUIRE_DOCKER=1), so that a missing engine can never pass for green.
func needDocker(t *testing.T) {
	t.Helper()
	if dockerErr == nil {
		return
	}
	if required() {
		t.Fatalf("Docker is required (CI or SACT_REQUIRE_DOCKER=1) but not usable: %v", dockerErr)
	}
	t.Skipf("no Docker engine: %v", dockerErr)
}

// uniqueName returns an app name no other test run uses, and removes its container after
// the test.
func uniqueName(t *testing.T, base string) string {
	t.Helper()
	b := make([]byte, 3)
	rand.Read(b)
	name := "e2e-" + base + "-" + hex.EncodeToString(b)
	t.Cleanup(func() {
		// With those of a deploy cut short (activator/deploy.go).
		exec.Command("docker", "rm", "-f", "sact-"+name, "sact-"+name+"-Next", "sact-"+name+"-Old").Run()
	})
	return name
}

// freeAddr returns a loopback TCP address nobody listens on right now.
//
// The port is below the kernel's ephemeral range (32768 and up here), never handed out
// twice in a run, and checked free: a port from the ephemeral range can be taken by any
// outgoing connection (the tests open thousands) between this check and sact's bind.
func freeAddr(t *testing.T) string {
	t.Helper()
	for range 1000 {
		port := 10000 + mrand.IntN(22000)
		if _, taken := handedOut.LoadOrStore(port, true); taken {
			continue
		}
		addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
		if ln, err := net.Listen("tcp", addr); err == nil {
			ln.Close()
			return addr
		}
	}
	t.Fatal("no free port in 10000-31999")
	return ""
}

// handedOut are the ports freeAddr gave this run.
var handedOut sync.Map

// daemon is a running `sact serve`.
type daemon struct {
	t      *testing.T
	cmd    *exec.Cmd
	config string
	runDir string // its -run-dir: its own, so that tests can run side by side
	logs   *logBuffer
	done   chan struct{}
}

// startSact writes config to a file and runs `sact serve` on it until the test ends.
func startSact(t *testing.T, config string) *daemon {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sact.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return startSactFile(t, path)
}

func startSactFile(t *testing.T, path string) *daemon {
	t.Helper()
	return startSactFileEnv(t, path)
}

// startSactFileEnv is startSactFile with env added to sact's environment.
func startSactFileEnv(t *testing.T, path string, env ...string) *daemon {
	t.Helper()
	d := &daemon{t: t, config: path, logs: &logBuffer{}, done: make(chan struct{})}
	d.runDir = runDirFor(t, path)
	d.cmd = exec.Command(sactBin, "serve", "-c", path, "-log-format", "json", "-log-level", "debug", "-run-dir", d.runDir, "-state-dir", filepath.Join(d.runDir, "state"), "-labels", labelSelector)
	if strings.HasPrefix(t.Name(), kernelPath+"/") {
		env = append([]string{"SACT_RELAY=kernel"}, env...)
	}
	if len(env) > 0 {
		d.cmd.Env = append(os.Environ(), env...)
	}
	d.cmd.Stdout = d.logs
	d.cmd.Stderr = d.logs
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.cmd.Wait(); close(d.done) }()
	t.Cleanup(func() {
		d.stop()
		if t.Failed() {
			t.Logf("sact log:\n%s", d.logs.String())
		}
	})
	d.waitLog(`"msg":"serving"`, 30*time.Second)
	return d
}

// stop ends sact with SIGTERM and waits for it.
func (d *daemon) stop() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		d.t.Errorf("sact did not exit 30s after SIGTERM")
		d.cmd.Process.Kill()
		<-d.done
	}
}

// whileFrozen runs f while sact is stopped (SIGSTOP): what is served meanwhile went
// past it. sact goes on (SIGCONT) however f ends.
func (d *daemon) whileFrozen(f func() error) error {
	d.cmd.Process.Signal(syscall.SIGSTOP)
	defer d.cmd.Process.Signal(syscall.SIGCONT)
	return f()
}

// kill ends sact with SIGKILL: no cleanup of any kind.
func (d *daemon) kill() {
	d.cmd.Process.Kill()
	<-d.done
}

// waitLog waits until a log line contains every one of the substrings and returns it.
func (d *daemon) waitLog(substrs string, timeout time.Duration) map[string]any {
	d.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if rec := d.logs.find(strings.Split(substrs, "&&"), 1); rec != nil {
			return rec
		}
		select {
		case <-d.done:
			d.t.Fatalf("sact exited while waiting for log %q:\n%s", substrs, d.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("no log line with %q after %v", substrs, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// awaitCount is countLog for lines the test expects to exist: sact's stderr
// reaches the buffer through a pipe and a copying goroutine, so a line written
// just before a response can arrive just after it. It waits up to 5s for want
// lines, then returns the count so the caller can still see too many.
func (d *daemon) awaitCount(substrs string, want int) int {
	deadline := time.Now().Add(5 * time.Second)
	for {
		n := d.countLog(substrs)
		if n >= want || time.Now().After(deadline) {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// countLog counts log lines holding every &&-separated substring.
func (d *daemon) countLog(substrs string) int {
	return d.logs.count(strings.Split(substrs, "&&"))
}

type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func (l *logBuffer) lines(subs []string) []string {
	var out []string
	sc := bufio.NewScanner(strings.NewReader(l.String()))
	sc.Buffer(nil, 1<<20)
next:
	for sc.Scan() {
		for _, s := range subs {
			if !strings.Contains(sc.Text(), s) {
				continue next
			}
		}
		out = append(out, sc.Text())
	}
	return out
}

func (l *logBuffer) count(subs []string) int { return len(l.lines(subs)) }

func (l *logBuffer) find(subs []string, n int) map[string]any {
	ls := l.lines(subs)
	if len(ls) < n {
		return nil
	}
	rec := map[string]any{}
	json.Unmarshal([]byte(ls[n-1]), &rec)
	return rec
}

// httpGet does one request on a new connection to a tcp address or a unix socket path.
func httpGet(addr, path string) (string, error) {
	return httpGetTimeout(addr, path, 60*time.Second)
}

func httpGetTimeout(addr, path string, timeout time.Duration) (string, error) {
	network := "tcp"
	if strings.HasPrefix(addr, "/") {
		network = "unix"
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: timeout}
	resp, err := c.Get("http://sact" + path)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != 200 {
		return string(b), fmt.Errorf("status %s", resp.Status)
	}
	return string(b), nil
}

// containerState returns docker's state of the app's container ("running", "exited", ...)
// or "" if it does not exist.
func containerState(t *testing.T, app string) string {
	t.Helper()
	out, err := exec.Command("docker", "inspect", "-f", "{{.State.Status}}", "sact-"+app).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

func waitContainerState(t *testing.T, app, want string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := containerState(t, app)
		if got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("container sact-%s is %q after %v, want %q", app, got, timeout, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func docker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker %s: %v: %s", strings.Join(args, " "), err, out)
	}
	return strings.TrimSpace(string(out))
}

// dialTCP opens a connection that the test closes itself.
func dialTCP(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func dialOnce(addr string) (net.Conn, error) {
	return net.DialTimeout("tcp", addr, time.Second)
}

// burst makes n requests for / at once, spread over addrs, and fails the test for each one
// that errs or whose body lacks want.
func burst(t *testing.T, n int, addrs []string, want string) {
	t.Helper()
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		addr := addrs[i%len(addrs)]
		wg.Go(func() {
			body, err := httpGet(addr, "/")
			if err == nil && !strings.Contains(body, want) {
				err = fmt.Errorf("body %q, want %q", body, want)
			}
			if err != nil {
				errs <- fmt.Errorf("%s: %w", addr, err)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request %d at once: %v", n, err)
	}
}

// writeConfig writes a config file for the test and returns its path.
func writeConfig(t *testing.T, config string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "sact.yaml")
	if err := os.WriteFile(path, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

var runDirs sync.Map // config path -> run dir

// labelSelector is the -labels of every sact the tests run: unique to this run, so that no
// test's sact takes another's (or a user's) labelled containers.
var labelSelector = fmt.Sprintf("sact.enable=e2e-%d", os.Getpid())

// runDirFor returns the run directory of the sact serving the config at path: the same one
// for every restart on that config (handoff and adoption rely on it), and short, since
// unix socket paths under it must stay within 107 bytes.
func runDirFor(t *testing.T, path string) string {
	if d, ok := runDirs.Load(path); ok {
		return d.(string)
	}
	d, err := os.MkdirTemp("", "sr-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	runDirs.Store(path, d)
	return d
}
