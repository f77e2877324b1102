package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/listen"
)

// AdminSocket is where the admin API of a sact with this config and run directory
// listens: the config's admin.socket, or, when that is the default and the run directory
// is not, the run directory's admin.sock (so that several sacts can run side by side).
func AdminSocket(cfg *config.Config, runDir string) string {
	if cfg.Admin.Socket == config.DefaultAdminSocket && runDir != "" && runDir != "/run/sact" {
		return filepath.Join(runDir, "admin.sock")
	}
	return cfg.Admin.Socket
}

// metrics is the registry and the start histogram the activators feed.
type metrics struct {
	reg    *prometheus.Registry
	starts *prometheus.HistogramVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), starts: admin.StartHistogram()}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.starts)
	return m
}

func (m *metrics) observe(app, event string, took time.Duration) {
	outcome := "ok"
	if event == "start_failed" {
		outcome = "failed"
	}
	m.starts.WithLabelValues(app, outcome).Observe(took.Seconds())
}

// logser is implemented by runtimes that can show an app's output.
type logser interface {
	Logs(ctx context.Context, spec backend.Spec, tail int) (string, error)
}

// startAdmin serves the admin API on its unix socket (0660) and on admin.listen if set.
// The returned stop closes them.
func startAdmin(ctx context.Context, cfg *config.Config, runDir string, acts map[string]*activator.App, specs map[string]backend.Spec,
	rts map[string]backend.Runtime, pool *activator.Pool, m *metrics, inherited *listen.Inherited, log *slog.Logger) (func(), error) {
	names := make([]string, 0, len(acts))
	for n := range acts {
		names = append(names, n)
	}
	slices.Sort(names)
	apps := make([]admin.App, len(names))
	for i, n := range names {
		apps[i] = acts[n]
	}
	byName := make(map[string]*config.App)
	for _, a := range cfg.Apps {
		byName[a.Name] = a
	}
	srv := admin.New(admin.Options{
		Logger:   log,
		Apps:     func() []admin.App { return apps },
		Pool:     pool.Status,
		Registry: m.reg,
		Logs: func(ctx context.Context, name string, tail int) (string, error) {
			app := byName[name]
			l, ok := rts[runtimeKind(app)].(logser)
			if !ok {
				return "", errors.New("this runtime keeps no logs")
			}
			return l.Logs(ctx, specs[name], tail)
		},
		Describe: func(name string) admin.Description {
			app := byName[name]
			d := admin.Description{Kind: "container", Hosts: app.Hosts, Idle: app.Idle.String()}
			switch {
			case len(app.Command) > 0:
				d.Kind = "process"
			case app.Container != "":
				d.Kind = "existing container"
			}
			if app.Handoff {
				d.Kind += ", handoff"
			}
			for _, l := range app.Listen {
				d.Listen = append(d.Listen, l.String())
			}
			return d
		},
	})

	var servers []*http.Server
	serve := func(ln net.Listener, overHTTP bool) {
		hs := &http.Server{Handler: srv.Handler(overHTTP), ReadHeaderTimeout: 10 * time.Second}
		servers = append(servers, hs)
		go func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin API stopped", "listen", ln.Addr().String(), "reason", err)
			}
		}()
	}
	stop := func() {
		for _, hs := range servers {
			hs.Close()
		}
	}
	sock := listen.Addr{Network: "unix", Address: AdminSocket(cfg, runDir), Mode: 0o660, Group: cfg.Admin.Group}
	if filepath.Dir(sock.Address) == filepath.Clean(runDir) || sock.Address == config.DefaultAdminSocket {
		// sact's own runtime directory (systemd's RuntimeDirectory=sact makes it too).
		if err := os.MkdirAll(filepath.Dir(sock.Address), 0o755); err != nil {
			return nil, fmt.Errorf("admin API: making %s: %w", filepath.Dir(sock.Address), err)
		}
	}
	ln := inherited.Take(sock, "admin")
	if ln == nil {
		var err error
		if ln, err = listen.Listen(ctx, sock); err != nil {
			return nil, fmt.Errorf("admin API: %w; set admin.socket to a path of its own", err)
		}
	}
	serve(ln, false)
	if cfg.Admin.Listen != "" {
		tcp := listen.Addr{Network: "tcp", Address: cfg.Admin.Listen}
		ln := inherited.Take(tcp, "admin-http")
		if ln == nil {
			var err error
			if ln, err = listen.Listen(ctx, tcp); err != nil {
				stop()
				return nil, fmt.Errorf("admin API over HTTP: %w", err)
			}
		}
		serve(ln, true)
	}
	return stop, nil
}
