package activator

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/upstream"
)

// unixRuntime runs nothing: its instance's upstream is a unix path the test controls.
func unixRuntime(path string) *fake.Runtime {
	return &fake.Runtime{Upstream: func(backend.Spec) backend.Addr { return backend.Addr{Network: "unix", Address: path} }}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) count(sub string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strings.Count(s.b.String(), sub)
}

func answer(t *testing.T, path, what string) *atomic.Int64 {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	var n atomic.Int64
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Write([]byte(what))
			c.Close()
		}
	}()
	return &n
}

// The default dial never follows a link in the app's directory: not to get ready, not
// for a lease; it says why once per cause, and connections fail as "upstream_unsafe".
func TestUnsafeUpstreamNotFollowed(t *testing.T) {
	dir := t.TempDir()
	secretDir := t.TempDir()
	secret := answer(t, filepath.Join(secretDir, "engine.sock"), "SECRET")
	sock := filepath.Join(dir, "app.sock")
	os.Symlink(filepath.Join(secretDir, "engine.sock"), sock)

	logs := &syncBuffer{}
	app := New(unixRuntime(sock), Policy{
		Spec:         backend.Spec{Name: "web", Volumes: []string{dir + ":/app/tmp"}},
		StartTimeout: 300 * time.Millisecond,
	}, Options{Logger: slog.New(slog.NewJSONHandler(logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error)
	go func() { done <- app.Run(ctx) }()
	defer func() { cancel(); <-done }()

	_, err := app.Acquire(ctx, Wake{})
	if got := FailureReason(err); got != "upstream_unsafe" {
		t.Errorf("Acquire: %v (reason %q); want reason upstream_unsafe", err, got)
	}
	if err == nil || !strings.Contains(err.Error(), sock) || !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("start failure %v: want it to name %s and the link", err, sock)
	}
	if n := logs.count(`"msg":"refusing unsafe upstream"`); n != 1 {
		t.Errorf("%d log lines for a readiness poll on one unsafe path, want 1:\n%s", n, logs.b.String())
	}

	// Fixed: the app's own socket serves.
	os.Remove(sock)
	answer(t, sock, "APP")
	if err := app.Start(ctx); err != nil {
		t.Fatalf("start with a real socket: %v", err)
	}
	l, err := app.Acquire(ctx, Wake{})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	c, err := l.Dial(ctx)
	if err != nil {
		t.Fatalf("lease dial of the real socket: %v", err)
	}
	if b, _ := io.ReadAll(c); string(b) != "APP" {
		t.Errorf("lease dial reached %q, want APP", b)
	}
	c.Close()

	// Swapped again while running: the lease refuses, and it is logged anew.
	tmp := sock + ".new"
	os.Symlink(filepath.Join(secretDir, "engine.sock"), tmp)
	os.Rename(tmp, sock)
	for range 3 {
		_, err = l.Dial(ctx)
		var ue *upstream.UnsafePathError
		if !errors.As(err, &ue) || ue.Reason != upstream.ReasonSymlink || ue.Path != sock {
			t.Fatalf("lease dial of a link: %v; want an *upstream.UnsafePathError for %s", err, sock)
		}
	}
	if n := logs.count(`"msg":"refusing unsafe upstream"`); n != 2 {
		t.Errorf("%d log lines, want 2: the first cause, and the same once more after it was fixed", n)
	}
	if n := secret.Load(); n != 0 {
		t.Errorf("the host socket got %d connections", n)
	}
}
