package daemon

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/config"
)

// fakeHost is a daemon serving a config of image apps on the shared fake runtime, whose
// instances are all one echo server of the test's; its config is what the next reload
// reads.
type fakeHost struct {
	t      *testing.T
	dir    string
	rt     *fake.Runtime // the fake kind's
	procs  *fake.Runtime // the fakeproc kind's
	config atomic.Pointer[string]
	reload chan struct{}
	logs   *logLines
}

// appsConfig is a config of apps by name, each with its image, listening on
// dir/NAME.sock.
func appsConfig(dir, comment string, images map[string]string) string {
	var b strings.Builder
	b.WriteString(comment + "\napps:\n")
	names := make([]string, 0, len(images))
	for name := range images {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		fmt.Fprintf(&b, "  %s:\n    fake: %s\n    port: 80\n    listen: [\"unix:%s\"]\n", name, images[name], sockIn(dir, name))
	}
	return b.String()
}

// kinds are the host's kinds of app: fake (on rt) and fakeproc (on procs).
func (h *fakeHost) kinds() []backend.Kind {
	return []backend.Kind{fake.Kind{Key: "fake", R: h.rt}, fake.Kind{Key: "fakeproc", R: h.procs}}
}

func sockIn(dir, name string) string { return filepath.Join(dir, name+".sock") }

func (h *fakeHost) sock(name string) string { return sockIn(h.dir, name) }

// startFakeHost serves v1, a config whose sockets are in dir, until the test ends.
func startFakeHost(t *testing.T, dir, v1 string) *fakeHost {
	t.Helper()
	echo, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var echoing sync.WaitGroup
	t.Cleanup(func() { echo.Close(); echoing.Wait() })
	echoing.Go(func() {
		for {
			c, err := echo.Accept()
			if err != nil {
				return
			}
			echoing.Go(func() { defer c.Close(); io.Copy(c, c) })
		}
	})
	h := &fakeHost{t: t, dir: dir, rt: &fake.Runtime{Addr: echo.Addr().String()},
		procs: &fake.Runtime{Addr: echo.Addr().String()}, reload: make(chan struct{}), logs: &logLines{}}
	h.config.Store(&v1)
	load := func(context.Context) (*config.Config, error) {
		return config.Parse(filepath.Join(h.dir, "sact.yaml"), []byte(*h.config.Load()), config.Options{Kinds: h.kinds()})
	}
	cfg, err := load(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, cfg, Options{
			Logger:       slog.New(slog.NewJSONHandler(h.logs, nil)),
			RunDir:       filepath.Join(h.dir, "run"),
			DrainTimeout: 2 * time.Second,
			Load:         load,
			Reload:       h.reload,
			Ready:        func(map[string][]net.Addr) { close(ready) },
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("not serving after 10s")
	}
	return h
}

// doReload makes the daemon read v and waits for its log to say so.
func (h *fakeHost) doReload(v string) map[string]any {
	h.t.Helper()
	h.config.Store(&v)
	before := len(h.logs.find("config reloaded"))
	h.reload <- struct{}{}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if got := h.logs.find("config reloaded"); len(got) > before {
			return got[len(got)-1]
		}
		if got := h.logs.find("config not reloaded; the old config keeps running"); len(got) > 0 {
			h.t.Fatalf("reload failed: %v", got[0])
		}
	}
	h.t.Fatal("no reload logged within 10s")
	return nil
}

// echo connects to app's socket and checks one line comes back through the relay.
func (h *fakeHost) echo(name string) {
	h.t.Helper()
	c, err := net.DialTimeout("unix", h.sock(name), 5*time.Second)
	if err != nil {
		h.t.Fatalf("%s: %v", name, err)
	}
	defer c.Close()
	roundTrip(h.t, c, name)
}

func roundTrip(t *testing.T, c net.Conn, line string) {
	t.Helper()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := fmt.Fprintln(c, line); err != nil {
		t.Fatalf("writing %q: %v", line, err)
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil || got != line+"\n" {
		t.Fatalf("echo of %q: %q, %v", line, got, err)
	}
}

// stoppedFor waits for the log to say app was stopped for reason.
func (h *fakeHost) stoppedFor(app, reason string) bool {
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		for _, l := range h.logs.find("stopped app") {
			if l["app"] == app && l["reason"] == reason {
				return true
			}
		}
	}
	return false
}

// TestReloadDiff: a reload keeps an unchanged app and its open connection, restarts a
// changed one with its new image once it is idle, retires a removed one and serves an
// added one; on the shared fake runtime, without an engine.
func TestReloadDiff(t *testing.T) {
	dir := t.TempDir()
	h := startFakeHost(t, dir, appsConfig(dir, "", map[string]string{"keep": "k:1", "change": "c:1", "gone": "g:1"}))
	open, err := net.Dial("unix", h.sock("keep"))
	if err != nil {
		t.Fatal(err)
	}
	defer open.Close()
	roundTrip(t, open, "before")
	h.echo("change")
	h.echo("gone")

	// A comment moves every line: keep must still be unchanged.
	v2 := appsConfig(dir, "# edited", map[string]string{"keep": "k:1", "change": "c:2", "added": "a:1"})
	res := h.doReload(v2)
	for key, want := range map[string]string{"added": "[added]", "removed": "[gone]", "changed": "[change]", "unchanged": "1"} {
		if got := fmt.Sprint(res[key]); got != want {
			t.Errorf("reload %s: %s, want %s", key, got, want)
		}
	}
	roundTrip(t, open, "after") // kept, and its connection with it
	if !h.stoppedFor("change", "config changed") {
		t.Errorf("the changed app was not restarted with its new settings; events %v", h.rt.Events())
	}
	if !h.stoppedFor("gone", "removed from config") {
		t.Errorf("the removed app was not stopped; events %v", h.rt.Events())
	}
	h.echo("change")
	if img := h.rt.LastSpec().Image; img != "c:2" {
		t.Errorf("the changed app started with image %q, want c:2", img)
	}
	h.echo("added")
	if c, err := net.Dial("unix", h.sock("gone")); err == nil {
		c.Close()
		t.Error("the removed app's socket still accepts")
	}
	if slices.Contains(h.rt.Events(), "stop keep") {
		t.Errorf("the unchanged app was stopped: %v", h.rt.Events())
	}
}

// logLines collects JSON log lines.
type logLines struct {
	mu    sync.Mutex
	lines []map[string]any
	buf   []byte
}

func (l *logLines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.buf = append(l.buf, p...)
	for {
		i := slices.Index(l.buf, '\n')
		if i < 0 {
			break
		}
		var m map[string]any
		if json.Unmarshal(l.buf[:i], &m) == nil {
			l.lines = append(l.lines, m)
		}
		l.buf = l.buf[i+1:]
	}
	return len(p), nil
}

// find returns the lines whose msg is msg.
func (l *logLines) find(msg string) []map[string]any {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []map[string]any
	for _, m := range l.lines {
		if m["msg"] == msg {
			out = append(out, m)
		}
	}
	return out
}

// TestReloadTakesOverSockets: an app renamed on the same socket, and one whose kind
// changes (and with it its runtime), keep their listening sockets across the reload: the new
// unit takes them over from the old one, which is stopped.
func TestReloadTakesOverSockets(t *testing.T) {
	dir := t.TempDir()
	shared, kind := sockIn(dir, "shared"), sockIn(dir, "kind")
	v1 := fmt.Sprintf("apps:\n  old:\n    fake: o:1\n    port: 80\n    listen: [\"unix:%s\"]\n  kind:\n    fake: k:1\n    port: 80\n    listen: [\"unix:%s\"]\n", shared, kind)
	h := startFakeHost(t, dir, v1)
	h.echo("shared")
	h.echo("kind")

	v2 := fmt.Sprintf("apps:\n  new:\n    fake: o:1\n    port: 80\n    listen: [\"unix:%s\"]\n  kind:\n    fakeproc: k:1\n    port: 80\n    listen: [\"unix:%s\"]\n", shared, kind)
	res := h.doReload(v2)
	for key, want := range map[string]string{"added": "[new]", "removed": "[old]", "changed": "[kind]"} {
		if got := fmt.Sprint(res[key]); got != want {
			t.Errorf("reload %s: %s, want %s", key, got, want)
		}
	}
	if !h.stoppedFor("old", "removed from config") {
		t.Errorf("the renamed app's old unit was not stopped; events %v", h.rt.Events())
	}
	if !h.stoppedFor("kind", "replaced by reload") {
		t.Errorf("the replaced app's old unit was not stopped; events %v", h.rt.Events())
	}
	h.echo("shared") // served by new, on the socket old had
	h.echo("kind")   // served by the new kind's runtime, on the same socket
	if got := h.procs.Events(); !slices.Contains(got, "start kind") {
		t.Errorf("the app of the new kind was not started by its runtime: %v", got)
	}
}
