package cli

import (
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sact-project/sact/internal/backend/docker"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/daemon"
)

// demoConfig is written to a temp dir and served; %s are the image and the listen address.
const demoConfig = `# Written by sact demo. Serve it yourself with: sact serve -c %[1]s
apps:
  hello:
    image: %[2]s
    env: {NAME: hello, LISTEN: "tcp:0.0.0.0:8080"}
    listen: ["tcp:%[3]s"]
    port: 8080
    idle: %[4]s
    stop_timeout: 2s
`

// demo shows sact's whole point on a fresh machine: a container that does not run until the
// first request, and stops again when nobody uses it.
func demo(ctx context.Context, e *env, args []string) error {
	if len(args) == 1 && args[0] == demoAppArg {
		return demoApp(ctx)
	}
	fs := newFlags(e, "demo")
	addr := fs.String("listen", "127.0.0.1:8090", "address the demo app listens on")
	idle := fs.Duration("idle", 10*time.Second, "idle time before the demo app stops")
	once := fs.Bool("once", false, "exit after the first idle stop instead of serving until Ctrl-C")
	if err := parse(fs, args); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	fmt.Fprintln(e.stdout, "==> building the demo image offline (this sact binary as a tiny web server, docker import)")
	image, err := demoImage(ctx)
	if err != nil {
		return fmt.Errorf("building the demo image: %w", err)
	}
	dir, err := os.MkdirTemp("", "sact-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, "sact.yaml")
	text := fmt.Sprintf(demoConfig, path, image, *addr, idle.String())
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		return err
	}
	cfg, err := config.Load(path, configOptions)
	if err != nil {
		return configError(e, err)
	}
	fmt.Fprintf(e.stdout, "==> config %s:\n%s\n", path, text)

	// The log is the demo: show it, and watch it for the idle stop.
	stopped := make(chan struct{}, 1)
	log := slog.New(&watchHandler{Handler: slog.NewTextHandler(e.stderr, nil), msg: "stopped app", seen: stopped})

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ready := make(chan map[string][]net.Addr, 1)
	served := make(chan error, 1)
	go func() {
		served <- daemon.Run(ctx, cfg, daemon.Options{Logger: log, RunDir: filepath.Join(dir, "run"), Ready: func(a map[string][]net.Addr) { ready <- a }})
	}()
	var url string
	select {
	case a := <-ready:
		url = "http://" + a["hello"][0].String() + "/"
	case err := <-served:
		return err
	}

	fmt.Fprintf(e.stdout, "==> nothing runs yet (docker ps shows no sact-hello). First request, a cold start:\n")
	began := time.Now()
	body, err := get(ctx, url)
	if err != nil {
		cancel()
		<-served
		return fmt.Errorf("first request: %w", err)
	}
	fmt.Fprintf(e.stdout, "    GET %s -> %q in %v\n", url, body, time.Since(began).Round(time.Millisecond))
	began = time.Now()
	if _, err := get(ctx, url); err == nil {
		fmt.Fprintf(e.stdout, "    again, warm: %v\n", time.Since(began).Round(10*time.Microsecond))
	}
	fmt.Fprintf(e.stdout, "==> try it: curl %s\n==> after %v without requests the container stops (watch the log); the next request starts it again.\n", url, *idle)
	if !*once {
		fmt.Fprintln(e.stdout, "==> Ctrl-C to quit (the container is left created, stopped or running; `docker rm -f sact-hello` removes it)")
	}

	select {
	case <-stopped:
		if *once {
			cancel()
		}
	case err := <-served:
		return err
	}
	err = <-served
	if errors.Is(err, context.Canceled) {
		err = nil
	}
	return err
}

// demoAppArg makes `sact demo` the demo app itself: the demo image runs the sact binary
// that made it, so that the demo needs neither a registry nor sact's source.
const demoAppArg = "--be-the-demo-app"

// demoImage returns the demo image, sact-demo:HASH, made from this binary unless the
// engine has it.
func demoImage(ctx context.Context) (string, error) {
	self, err := os.Executable()
	if err != nil {
		return "", err
	}
	if f, err := elf.Open(self); err == nil {
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				return "", fmt.Errorf("the demo runs this sact binary in a container, and %s is dynamically linked; build it with CGO_ENABLED=0 (make build does)", self)
			}
		}
	}
	bin, err := os.ReadFile(self)
	if err != nil {
		return "", err
	}
	sum := sha256.Sum256(bin)
	ref := "sact-demo:" + hex.EncodeToString(sum[:6])
	err = docker.ImportImage(ctx, ref, map[string][]byte{"sact": bin}, []string{`ENTRYPOINT ["/sact", "demo", "` + demoAppArg + `"]`, "EXPOSE 8080"})
	return ref, err
}

// demoApp is the demo's web server: it answers "hello from $NAME" on $LISTEN
// (tcp:HOST:PORT) until SIGTERM.
func demoApp(ctx context.Context) error {
	name, addr := os.Getenv("NAME"), strings.TrimPrefix(os.Getenv("LISTEN"), "tcp:")
	if addr == "" {
		addr = "0.0.0.0:8080"
	}
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv := &http.Server{Addr: addr, ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "hello from %s (pid %d)\n", name, os.Getpid())
	})}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}

func get(ctx context.Context, url string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// watchHandler signals when a record with a given message passes through.
type watchHandler struct {
	slog.Handler
	msg  string
	seen chan struct{}
}

func (h *watchHandler) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		select {
		case h.seen <- struct{}{}:
		default:
		}
	}
	return h.Handler.Handle(ctx, r)
}

func (h *watchHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &watchHandler{Handler: h.Handler.WithAttrs(as), msg: h.msg, seen: h.seen}
}

func (h *watchHandler) WithGroup(name string) slog.Handler {
	return &watchHandler{Handler: h.Handler.WithGroup(name), msg: h.msg, seen: h.seen}
}
