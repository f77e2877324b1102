// Command hostile is an app that attacks sact and the host from inside its container, for
// the hostile-app suite (internal/e2e, SECURITY.md). It serves HTTP like any app (on the
// sockets sact hands over with LISTEN_FDS, or on LISTEN), and at start it tries, from
// inside, what a compromised app would try:
//
//   - clobber its handoff directory: unlink, replace or chmod the handoff socket, write a
//     file or a symlink beside it, rewrite sact's binary mounted as the shim;
//   - flood its handoff socket with peers (FLOOD peers at once, default 500);
//   - connect to sockets it should never see: the Docker engine, containerd, sact's admin
//     socket, other apps' handoff sockets (PROBE_PATHS, comma-separated, added to a fixed list);
//   - look at what it was given: file descriptors beyond its listeners, sact's or systemd's
//     environment, network interfaces other than loopback when NO_NETWORK is set.
//
// Each attempt is one line on stdout, `hostile: attack=NAME result=blocked|SUCCEEDED|info
// detail=...`, and GET /report answers them all as JSON once they are done.
//
// The symlink swap is driven by the test, over HTTP, because it needs the app to have been
// served once first: GET /swap?to=TARGET replaces the unix socket the app listens on (LISTEN)
// with a symlink to TARGET, GET /swapdir?to=TARGET replaces the socket's directory with one.
// After either, sact must refuse to dial the link. GET /linkonstart?to=TARGET makes the
// app's next start do the same before it listens, and then never listen: a readiness poll
// that follows the link takes whatever is at TARGET for the app. (The request is kept in
// a file beside the socket's directory, link-at-start, so that it survives the restart.)
package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// shimDir is where sact mounts the handoff directory (backend/docker.ShimDir) and shim is
// sact's binary mounted as the entrypoint (backend/docker.ShimPath).
const (
	shimDir = "/run/sact-handoff"
	shim    = "/sact"
)

// Result is one attack's outcome.
type Result struct {
	Attack string `json:"attack"`
	// Result is "blocked", "SUCCEEDED" (the attack worked: a hole) or "info" (a measure,
	// judged by the test).
	Result string `json:"result"`
	Detail string `json:"detail"`
}

type report struct {
	mu      sync.Mutex
	results []Result
	done    chan struct{}
}

func (r *report) add(attack, result, detail string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.results = append(r.results, Result{attack, result, detail})
	fmt.Printf("hostile: attack=%s result=%s detail=%q\n", attack, result, detail)
}

// must records an attempt that has to fail: err == nil means it worked.
func (r *report) must(attack string, err error) {
	if err == nil {
		r.add(attack, "SUCCEEDED", "no error")
		return
	}
	r.add(attack, "blocked", err.Error())
}

func main() {
	rep := &report{done: make(chan struct{})}
	// Before anything of this program's own (the runtime's poller, its sockets) is open.
	inherited, fdErr := openFDs()
	linkAtStart()
	lns, unixPath, err := listeners()
	if err != nil {
		fmt.Fprintln(os.Stderr, "hostile:", err)
		os.Exit(1)
	}
	handedOver := os.Getenv("LISTEN_FDS") != ""
	go func() {
		defer close(rep.done)
		fds(rep, inherited, fdErr, len(lns))
		attack(rep, handedOver)
	}()

	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hostile app (pid %d)\n", os.Getpid())
	})
	mux.HandleFunc("/report", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-rep.done:
		case <-time.After(30 * time.Second):
			http.Error(w, "attacks still running", http.StatusServiceUnavailable)
			return
		}
		rep.mu.Lock()
		defer rep.mu.Unlock()
		json.NewEncoder(w).Encode(rep.results)
	})
	mux.HandleFunc("/swap", func(w http.ResponseWriter, r *http.Request) {
		swap(w, unixPath, r.URL.Query().Get("to"))
	})
	mux.HandleFunc("/swapdir", func(w http.ResponseWriter, r *http.Request) {
		swap(w, filepath.Dir(unixPath), r.URL.Query().Get("to"))
	})
	mux.HandleFunc("/linkonstart", func(w http.ResponseWriter, r *http.Request) {
		if err := os.WriteFile(markerFor(unixPath), []byte(r.URL.Query().Get("to")), 0o644); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprintln(w, "next start links its socket")
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errs := make(chan error, len(lns))
	for _, ln := range lns {
		go func() { errs <- srv.Serve(ln) }()
	}
	fmt.Fprintln(os.Stderr, "hostile:", <-errs)
	os.Exit(1)
}

// swap replaces path with a symlink to target. The listening socket stays open (it only
// loses its name), as an attacker's would.
func swap(w http.ResponseWriter, path, target string) {
	if path == "" || target == "" {
		http.Error(w, "need a unix LISTEN and ?to=", http.StatusBadRequest)
		return
	}
	tmp := path + ".swap"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	if st, err := os.Lstat(path); err == nil && st.IsDir() {
		os.Rename(path, path+".old")
	}
	if err := os.Rename(tmp, path); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	fmt.Printf("hostile: attack=symlink-swap result=info detail=%q\n", path+" -> "+target)
	fmt.Fprintf(w, "swapped %s -> %s\n", path, target)
}

// markerFor is where /linkonstart keeps its target: beside the socket's directory.
func markerFor(socket string) string {
	return filepath.Join(filepath.Dir(filepath.Dir(socket)), "link-at-start")
}

// linkAtStart carries out /linkonstart: it puts a link at the unix LISTEN path, and then
// never returns, so that the app runs without ever listening.
func linkAtStart() {
	network, path, _ := strings.Cut(os.Getenv("LISTEN"), ":")
	if network != "unix" {
		return
	}
	target, err := os.ReadFile(markerFor(path))
	if err != nil || len(target) == 0 {
		return
	}
	dir := filepath.Dir(path)
	if st, err := os.Lstat(dir); err == nil && st.Mode()&os.ModeSymlink != 0 {
		os.Remove(dir)
	}
	os.MkdirAll(dir, 0o777)
	os.Remove(path)
	if err := os.Symlink(string(target), path); err != nil {
		fmt.Fprintln(os.Stderr, "hostile: linking at start:", err)
		os.Exit(1)
	}
	fmt.Printf("hostile: attack=link-at-start result=info detail=%q\n", path+" -> "+string(target))
	for {
		time.Sleep(time.Hour)
	}
}

// listeners takes the sockets handed over with LISTEN_FDS, or listens on LISTEN.
func listeners() ([]net.Listener, string, error) {
	if n, err := strconv.Atoi(os.Getenv("LISTEN_FDS")); err == nil {
		var lns []net.Listener
		for fd := 3; fd < 3+n; fd++ {
			f := os.NewFile(uintptr(fd), "listen")
			ln, err := net.FileListener(f)
			f.Close()
			if err != nil {
				return nil, "", fmt.Errorf("LISTEN_FDS: fd %d: %w", fd, err)
			}
			lns = append(lns, ln)
		}
		return lns, "", nil
	}
	network, addr, ok := strings.Cut(os.Getenv("LISTEN"), ":")
	if !ok {
		return nil, "", fmt.Errorf("LISTEN=%q: want tcp:HOST:PORT or unix:/path", os.Getenv("LISTEN"))
	}
	var path string
	if network == "unix" {
		path = addr
		os.MkdirAll(filepath.Dir(path), 0o777)
		os.Remove(path)
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		return nil, "", err
	}
	if path != "" {
		os.Chmod(path, 0o666)
	}
	return []net.Listener{ln}, path, nil
}

func attack(rep *report, handedOver bool) {
	if handedOver {
		flood(rep)
		clobberHandoff(rep)
	}
	// The shim's binary is sact's own, shared by every handoff app: rewriting it would be
	// code execution as root on the next start of any app.
	if _, err := os.Stat(shim); err == nil {
		f, err := os.OpenFile(shim, os.O_WRONLY, 0)
		if err == nil {
			f.Close()
		}
		rep.must("shim-binary-write", err)
	}
	probe := []string{"/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
		"/run/sact/admin.sock", "/var/run/sact/admin.sock"}
	for _, p := range strings.Split(os.Getenv("PROBE_PATHS"), ",") {
		if p != "" {
			probe = append(probe, p)
		}
	}
	for _, p := range probe {
		c, err := net.DialTimeout("unix", p, time.Second)
		if err == nil {
			c.Close()
		}
		rep.must("connect "+p, err)
	}
	environment(rep)
	if os.Getenv("NO_NETWORK") != "" {
		ifs, err := net.Interfaces()
		var names []string
		for _, i := range ifs {
			names = append(names, i.Name)
		}
		if err != nil || !slices.Equal(names, []string{"lo"}) {
			rep.add("network-interfaces", "SUCCEEDED", fmt.Sprintf("%v %v", names, err))
		} else {
			rep.add("network-interfaces", "blocked", "only lo")
		}
	}
}

// clobberHandoff tries everything a process that owns its handoff directory could do to
// it, to break this app's or sact's next start, or to make sact touch a host file.
func clobberHandoff(rep *report) {
	sock := filepath.Join(shimDir, "handoff.sock")
	rep.must("handoff-write-file", os.WriteFile(filepath.Join(shimDir, "evil"), []byte("x"), 0o644))
	rep.must("handoff-symlink", os.Symlink("/etc/shadow", filepath.Join(shimDir, "link")))
	rep.must("handoff-mkdir", os.Mkdir(filepath.Join(shimDir, "dir"), 0o755))
	rep.must("handoff-chmod-dir", os.Chmod(shimDir, 0o777))
	rep.must("handoff-chmod-socket", os.Chmod(sock, 0o777))
	rep.must("handoff-chown-socket", os.Lchown(sock, 12345, 12345))
	err := os.Remove(sock)
	if err == nil {
		// Gone: put a directory in its place, as the attack on sact's next start does.
		os.Mkdir(sock, 0o755)
	}
	rep.must("handoff-replace-socket", err)
}

// flood opens many connections at once on the handoff socket and holds them, to make sact
// spend goroutines or engine calls on them.
func flood(rep *report) {
	n := 500
	if v, err := strconv.Atoi(os.Getenv("FLOOD")); err == nil {
		n = v
	}
	sock := filepath.Join(shimDir, "handoff.sock")
	var opened, answered, refused atomic.Int64
	var firstErr atomic.Value
	firstErr.Store("")
	var wg sync.WaitGroup
	start := time.Now()
	for range n {
		wg.Go(func() {
			c, err := net.DialTimeout("unixpacket", sock, 2*time.Second) // the handoff socket is SOCK_SEQPACKET
			if err != nil {
				refused.Add(1)
				firstErr.CompareAndSwap("", err.Error())
				return
			}
			defer c.Close()
			opened.Add(1)
			c.SetDeadline(time.Now().Add(3 * time.Second))
			c.Write([]byte("hello\n"))
			buf := make([]byte, 64)
			if k, _ := c.Read(buf); k > 0 {
				answered.Add(1)
			}
		})
	}
	wg.Wait()
	rep.add("handoff-flood", "info", fmt.Sprintf("peers=%d opened=%d answered=%d refused=%d took=%s first error: %s",
		n, opened.Load(), answered.Load(), refused.Load(), time.Since(start).Round(time.Millisecond), firstErr.Load()))
}

// openFDs lists the descriptors open in this process, with what they are.
func openFDs() (map[int]string, error) {
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	fds := map[int]string{}
	for _, n := range names {
		fd, _ := strconv.Atoi(n)
		if fd == int(d.Fd()) {
			continue
		}
		fds[fd], _ = os.Readlink("/proc/self/fd/" + n)
	}
	return fds, nil
}

// fds reports descriptors the app was given beyond stdio and its listeners (3 to
// 3+listeners-1): any other would be something of sact's or the host's.
func fds(rep *report, open map[int]string, err error, listeners int) {
	if err != nil {
		rep.add("inherited-fds", "info", err.Error())
		return
	}
	var extra []string
	for fd, target := range open {
		// The Go runtime's own, open before main: its poller, and the cgroup files it reads
		// for GOMAXPROCS.
		if target == "anon_inode:[eventpoll]" || target == "anon_inode:[eventfd]" || strings.HasPrefix(target, "/sys/fs/cgroup/") {
			continue
		}
		if fd >= 3+listeners {
			extra = append(extra, strconv.Itoa(fd)+" -> "+target)
		}
	}
	slices.Sort(extra)
	if len(extra) > 0 {
		rep.add("inherited-fds", "SUCCEEDED", strings.Join(extra, ", "))
	} else {
		rep.add("inherited-fds", "blocked", fmt.Sprintf("%d fds: stdio and %d listeners", len(open), listeners))
	}
}

// environment reports variables that would hand the app something of the host's: systemd's
// notify socket, pidfd ids and watchdog, or anything of sact's beyond the handoff socket.
func environment(rep *report) {
	var leaked []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		switch {
		case k == "NOTIFY_SOCKET", k == "LISTEN_PIDFDID", strings.HasPrefix(k, "WATCHDOG_"),
			k == "INVOCATION_ID", k == "JOURNAL_STREAM", k == "DOCKER_HOST",
			strings.HasPrefix(k, "SACT_") && k != "SACT_HANDOFF_SOCKET":
			leaked = append(leaked, k)
		}
	}
	if len(leaked) > 0 {
		rep.add("environment", "SUCCEEDED", strings.Join(leaked, ","))
	} else {
		rep.add("environment", "blocked", "no host variables")
	}
}
