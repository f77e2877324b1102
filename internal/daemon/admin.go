package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/events"
	"github.com/sact-project/sact/internal/listen"
	"github.com/sact-project/sact/internal/proxy"
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
	failed *prometheus.CounterVec
	broken *prometheus.GaugeVec
	// relayed counts proxied connections and their bytes by the path the relay took.
	relayed, relayedBytes *prometheus.CounterVec
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), starts: admin.StartHistogram(),
		failed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sact_connections_failed_total",
			Help: "Connections and front-door requests that were not served, by reason (queue_full, start_failed, start_timeout, pool_full, upstream_unreachable, upstream_error, upstream_unsafe, max_in_flight, app_exited, shutting_down, client_gone, bad_request, handoff_broken).",
		}, []string{"app", "reason"}),
		broken: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "sact_app_broken",
			Help: "1 while sact cannot serve the app at all (its handoff cannot be set up); it retries on its own.",
		}, []string{"app"}),
		relayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sact_relayed_connections_total",
			Help: "Proxied connections relayed, by the path their bytes took: kernel (sockmap, SACT_RELAY=kernel or auto) or splice.",
		}, []string{"app", "path"}),
		relayedBytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "sact_relayed_bytes_total",
			Help: "Bytes relayed for proxied connections that ended, by path and direction (in: client to app, out: app to client).",
		}, []string{"app", "path", "direction"}),
	}
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), m.starts, m.failed, m.broken, m.relayed, m.relayedBytes)
	return m
}

// setBroken records whether app is broken; a repaired app's series goes away.
func (m *metrics) setBroken(app string, broken bool) {
	if broken {
		m.broken.WithLabelValues(app).Set(1)
	} else {
		m.broken.DeleteLabelValues(app)
	}
}

// relay counts a relayed connection of app that ended.
func (m *metrics) relay(app string, s proxy.Stats) {
	if s.Path == "" {
		return // ended before a path was taken
	}
	m.relayed.WithLabelValues(app, s.Path).Inc()
	m.relayedBytes.WithLabelValues(app, s.Path, "in").Add(float64(s.ClientToUpstream))
	m.relayedBytes.WithLabelValues(app, s.Path, "out").Add(float64(s.UpstreamToClient))
}

// fail counts n connections of app that were not served.
func (m *metrics) fail(app, reason string, n int) {
	m.failed.WithLabelValues(app, reason).Add(float64(n))
}

func (m *metrics) observe(app, event string, took time.Duration) {
	outcome := "ok"
	if event == "start_failed" {
		outcome = "failed"
	}
	m.starts.WithLabelValues(app, outcome).Observe(took.Seconds())
}

// followLogs follows app's output across its stops and starts until ctx ends: when the
// instance stops, it waits for the app's next start and goes on from there.
func (d *daemon) followLogs(ctx context.Context, name string, tail int, w io.Writer) error {
	d.mu.Lock()
	u := d.units[name]
	d.mu.Unlock()
	if u == nil {
		return fmt.Errorf("no app named %q", name)
	}
	f, ok := u.rt.(backend.LogFollower)
	if !ok {
		return errors.New("this app's runtime cannot follow its output; sact logs without -f shows its last lines")
	}
	// Subscribed first: a start while the last follow ends is not missed.
	sub := d.events.Subscribe(0)
	defer sub.Close()
	var since time.Time
	for {
		if st := u.act.State(); st == activator.Running || st == activator.Paused || !since.IsZero() {
			// Also a stopped one the first time: its last lines, and its end.
			f.FollowLogs(ctx, u.act.Policy().Spec, tail, since, w)
		}
		if ctx.Err() != nil {
			return nil
		}
		since = time.Now()
		var begun time.Time
		for {
			e, err := sub.Next(ctx)
			if err != nil {
				return nil
			}
			if e.App == name && e.Kind == events.Deploy && e.Reason == "begun" {
				begun = e.Time
			}
			if e.App == name && e.Kind == events.Deploy && e.Reason == "ready" && !begun.IsZero() {
				// A deploy: the follow of the old container ended with its drain, long
				// after the new one began to write. A minute before the new one was
				// announced is before it was made: all of its lines.
				since = begun.Add(-time.Minute)
				break
			}
			if e.App == name && e.Kind == events.Start || e.Kind == events.Lost {
				break
			}
		}
	}
}

// startAdmin serves the admin API on its unix socket (0660) and on admin.listen if set,
// where changes and logs need the token of admin.token_file (made here when missing).
// The returned stop closes them.
func (d *daemon) startAdmin(ctx context.Context, cfg *config.Config) (func(), error) {
	log, runDir, inherited := d.log, d.runDir, d.opts.Inherited
	var token, tokenFile string
	if cfg.Admin.Listen != "" {
		// Changes and logs over HTTP need this token (admin.token_file); without a
		// token file sact can trust, admin.listen is not served at all.
		stateDir := runDir
		if d.opts.StateFile != "" {
			stateDir = filepath.Dir(d.opts.StateFile)
		}
		tokenFile = AdminTokenFile(cfg, stateDir)
		if cfg.Admin.TokenFile == "" {
			if err := os.MkdirAll(stateDir, 0o755); err != nil {
				return nil, fmt.Errorf("admin API over HTTP: making the state directory %s for its token: %w", stateDir, err)
			}
		}
		var created bool
		var warn string
		var err error
		if token, created, warn, err = adminToken(tokenFile, cfg.Admin.Group); err != nil {
			return nil, fmt.Errorf("admin API over HTTP (admin.listen): %w", err)
		}
		log.Info("admin token", "path", tokenFile, "created", created)
		if warn != "" {
			log.Warn("admin token file", "path", tokenFile, "reason", warn)
		}
	}
	opts := admin.Options{
		Token: token, TokenFile: tokenFile, Listen: cfg.Admin.Listen, Hosts: cfg.Admin.Hosts,
		Logger: log,
		Apps: func() []admin.App {
			d.mu.Lock()
			defer d.mu.Unlock()
			names := slices.Sorted(maps.Keys(d.units))
			apps := make([]admin.App, len(names))
			for i, n := range names {
				apps[i] = d.units[n].adminApp()
			}
			return apps
		},
		Pool:       d.pool.Status,
		Registry:   d.m.reg,
		Events:     d.events,
		History:    d.hist.of,
		FollowLogs: d.followLogs,
		Logs: func(ctx context.Context, name string, tail int) (string, error) {
			d.mu.Lock()
			u := d.units[name]
			d.mu.Unlock()
			if u == nil {
				return "", fmt.Errorf("no app named %q", name)
			}
			l, ok := u.rt.(backend.LogReader)
			if !ok {
				return "", errors.New("this runtime keeps no logs")
			}
			return l.Logs(ctx, u.act.Policy().Spec, tail)
		},
		Describe: func(name string) admin.Description {
			d.mu.Lock()
			u := d.units[name]
			var app *config.App
			if u != nil {
				app = u.app
			}
			d.mu.Unlock()
			if u == nil {
				return admin.Description{Kind: "removed"}
			}
			desc := admin.Description{Kind: app.Kind().Info().Describe, Hosts: app.Hosts, Idle: app.Idle.String()}
			if app.Handoff {
				desc.Kind += ", handoff"
			}
			for _, l := range app.Listen {
				desc.Listen = append(desc.Listen, l.String())
			}
			return desc
		},
	}
	if d.opts.Load != nil {
		opts.Reload = func(ctx context.Context) (admin.ReloadResult, error) {
			res, err := d.reload(ctx)
			if err != nil {
				// The CLI shows the reason too; the log is where the operator looks later.
				d.log.Error("config not reloaded; the old config keeps running", "cause", "admin API", "reason", err)
			}
			return res, err
		}
	}
	srv := admin.New(opts)

	var servers []*http.Server
	var serving sync.WaitGroup // the servers' goroutines; stop waits for them
	serve := func(ln net.Listener, overHTTP bool) {
		// admin.listen may be reachable by local users (and, on a public address, by
		// anyone): the same limits as the front door's, so that nobody can hold it
		// with slow or huge requests.
		hs := &http.Server{Handler: srv.Handler(overHTTP), ReadHeaderTimeout: 10 * time.Second,
			ReadTimeout: time.Minute, IdleTimeout: 2 * time.Minute, MaxHeaderBytes: 64 << 10}
		servers = append(servers, hs)
		serving.Go(func() {
			if err := hs.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("admin API stopped", "listen", ln.Addr().String(), "reason", err)
			}
		})
	}
	stop := func() {
		for _, hs := range servers {
			hs.Close()
		}
		serving.Wait()
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
