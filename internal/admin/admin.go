// Package admin is sact's admin API, its Prometheus metrics and its dashboard, served on a
// unix socket (for the CLI: sact status, start, stop, logs) and optionally over HTTP.
//
// API (JSON):
//
//	GET  /api/apps               every app's status
//	GET  /api/apps/NAME          one app's
//	POST /api/apps/NAME/start    start it and wait until it is ready
//	POST /api/apps/NAME/stop     stop it, closing its connections
//	POST /api/apps/NAME/pause    freeze it (docker pause); the next connection thaws it
//	POST /api/apps/NAME/restart  stop it if it runs, start it, wait until it is ready
//	GET  /api/apps/NAME/logs     the app's last log lines (?tail=N), plain text; with
//	                             ?follow=1 it goes on with new lines as they come
//	GET  /api/apps.csv           every app as CSV; ?dead=DAYS: only those without traffic
//	                             for that many days (the dashboard's "dead projects")
//	GET  /api/events             server-sent events: starts, stops, failures, evictions,
//	                             deploys, as they happen (one JSON object per event)
//	GET  /metrics                Prometheus
//	GET  /                       the dashboard
//
//	POST /login                  over HTTP: trade the token for a dashboard session
//	POST /logout                 end the session
//
// Requests that change something must be POSTs. Over HTTP the Host is checked, changes
// must not come from another site, and changes and logs need a credential (auth.go). On
// the unix socket the file's permissions are the guard.
package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/events"
)

// App is what the admin API needs of an app's activator.
type App interface {
	Name() string
	Status() activator.Status
	Start(ctx context.Context) error
	Stop(ctx context.Context) error
	Pause(ctx context.Context) error
	// Restart stops the app if it runs and starts it; a deploy may do it without a
	// cold start.
	Restart(ctx context.Context) error
}

// History is what sact remembers of an app beyond its status: since when it knows the
// app, and its connections on each of the last days (oldest first, today last).
type History struct {
	KnownSince time.Time
	Days       []int
}

// Options wire the API to the daemon.
type Options struct {
	Logger *slog.Logger
	// Apps returns the apps, sorted by name.
	Apps func() []App
	// Pool returns the pool's state.
	Pool func() activator.PoolStatus
	// Logs returns the last tail lines of an app's output.
	Logs func(ctx context.Context, app string, tail int) (string, error)
	// Registry holds the metrics; the apps' collector is added to it.
	Registry *prometheus.Registry
	// Describe tells an app's kind ("container", "process", "..., handoff") and its
	// addresses, for the dashboard.
	Describe func(app string) Description
	// Reload reads the config again and applies it; nil means sact cannot reload.
	Reload func(ctx context.Context) (ReloadResult, error)
	// History returns an app's history, given its status. Nil: none is shown.
	History func(app string, st activator.Status) History
	// Events is the hub GET /api/events streams. Nil: the stream answers 501.
	Events *events.Hub
	// FollowLogs writes an app's last tail lines and then its new ones to w as they come,
	// until ctx ends (logs?follow=1). Nil: following is not available.
	FollowLogs func(ctx context.Context, app string, tail int, w io.Writer) error

	// Token is the credential that changes and logs over HTTP need, as "Authorization:
	// Bearer TOKEN" or as basic auth's password; the dashboard's login trades it for a
	// session. Default "": nothing over HTTP is authenticated, so only what is open
	// (status and /metrics on loopback) is served.
	Token string
	// TokenFile is where the token is kept, for messages and the login page.
	TokenFile string
	// Listen is the admin.listen address; a Host equal to it is allowed.
	Listen string
	// Hosts are more names the dashboard is served on (admin.hosts): "name" (any port) or
	// "name:port". Default none: only the listen address, the address a connection
	// arrived on, and localhost, 127.0.0.1, [::1] with the listener's port.
	Hosts []string
	// Now is the clock that expires sessions. Default time.Now.
	Now func() time.Time
}

// ReloadResult says what a reload changed.
type ReloadResult struct {
	Added     []string `json:"added"`
	Removed   []string `json:"removed"`
	Changed   []string `json:"changed"`
	Unchanged int      `json:"unchanged"`
	// Restart lists what changed but applies only when sact restarts.
	Restart []string `json:"needs_restart,omitempty"`
}

// Description is what the config says of an app, for display.
type Description struct {
	Kind   string   `json:"kind"`
	Listen []string `json:"listen,omitempty"`
	Hosts  []string `json:"hosts,omitempty"`
	Idle   string   `json:"idle"`
}

// AppStatus is one app in the API.
type AppStatus struct {
	Name          string         `json:"name"`
	State         string         `json:"state"`
	Since         time.Time      `json:"since"`
	Open          int            `json:"open_connections"`
	Waiting       int            `json:"waiting"`
	LastActivity  *time.Time     `json:"last_activity,omitempty"`
	ColdStarts    int            `json:"cold_starts"`
	LastStart     *time.Time     `json:"last_start,omitempty"`
	LastStartTook string         `json:"last_start_took,omitempty"`
	StopReason    string         `json:"stop_reason,omitempty"`
	LastError     string         `json:"last_error,omitempty"`
	Refused       int            `json:"refused"`
	StartFailures int            `json:"start_failures"`
	Connections   int            `json:"connections_total"`
	Stops         map[string]int `json:"stops,omitempty"`
	// Memory is the running app's measured memory use in bytes; 0 when unknown or not
	// running.
	Memory int64 `json:"memory_bytes"`
	// KnownSince is when sact first saw the app (kept in the state file): an app that
	// has had no traffic since is silent since then.
	KnownSince *time.Time `json:"known_since,omitempty"`
	// ActivityDays counts its connections on each of the last 90 days (UTC), today last.
	ActivityDays []int `json:"activity_days,omitempty"`
	// Deploys without a cold start, and the failed ones (their reason is LastError).
	Deploys        int `json:"deploys,omitempty"`
	DeployFailures int `json:"deploy_failures,omitempty"`
	// Node is the address of the swarm node the running app's task is on; absent for an
	// app on this host.
	Node string `json:"node,omitempty"`
	// Bypass: this host's clients reach the running app past the relay (SACT_RELAY=kernel
	// or auto); BypassConnections counts the connections they made so since sact started.
	Bypass bool `json:"bypass,omitempty"`
	// BypassElsewhere: clients on other hosts too (nftables translation).
	BypassElsewhere   bool   `json:"bypass_elsewhere,omitempty"`
	BypassConnections uint64 `json:"bypass_connections,omitempty"`
	Description
}

// PoolJSON is the pool in the API. Its keys are snake_case like every other key of
// the API; the CamelCase keys that earlier versions sent (Running, MaxRunning, ...)
// are kept for the clients that read them.
type PoolJSON struct {
	activator.PoolStatus
	RunningNow        int   `json:"running"`
	MaxRunningApps    int   `json:"max_running"`
	WaitingForSlotNow int   `json:"waiting_for_slot"`
	QueuedStarts      int   `json:"queued_starts"`
	EvictedTotal      int   `json:"evicted"`
	MemoryUsedBytes   int64 `json:"memory_used_bytes"`
	MemoryBudgetBytes int64 `json:"memory_budget_bytes"`
}

func poolJSON(p activator.PoolStatus) PoolJSON {
	return PoolJSON{PoolStatus: p, RunningNow: p.Running, MaxRunningApps: p.MaxRunning, WaitingForSlotNow: p.WaitingForSlot,
		QueuedStarts: p.Queued, EvictedTotal: p.Evicted, MemoryUsedBytes: p.MemoryUsed, MemoryBudgetBytes: p.MemoryBudget}
}

// Server is the admin HTTP handler.
type Server struct {
	opts     Options
	mux      *http.ServeMux
	log      *slog.Logger
	sessions *sessions
	streams  atomic.Int32 // open event streams and log follows

	refusals   *prometheus.CounterVec // by reason; every one, logged or not
	refusedLog logLimit
}

// New builds the handler and registers the apps' metrics in opts.Registry.
func New(opts Options) *Server {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	s := &Server{opts: opts, mux: http.NewServeMux(), log: opts.Logger,
		sessions: &sessions{now: opts.Now, m: make(map[string]time.Time)}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.refusals = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "sact_admin_requests_refused_total",
		Help: "Admin requests refused (no or wrong credential, host not allowed, cross-site), by reason."}, []string{"reason"})
	if opts.Registry != nil {
		opts.Registry.MustRegister(&collector{s: s}, s.refusals)
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(opts.Registry, promhttp.HandlerOpts{}))
	}
	s.mux.HandleFunc("GET /api/apps", s.list)
	s.mux.HandleFunc("GET /api/apps/{name}", s.one)
	s.mux.HandleFunc("POST /api/apps/{name}/start", s.start)
	s.mux.HandleFunc("POST /api/apps/{name}/stop", s.stop)
	s.mux.HandleFunc("POST /api/apps/{name}/pause", func(w http.ResponseWriter, r *http.Request) { s.change(w, r, "pause", App.Pause) })
	s.mux.HandleFunc("POST /api/apps/{name}/restart", func(w http.ResponseWriter, r *http.Request) { s.change(w, r, "restart", App.Restart) })
	s.mux.HandleFunc("GET /api/apps.csv", s.csv)
	s.mux.HandleFunc("GET /api/events", s.events)
	s.mux.HandleFunc("GET /api/apps/{name}/logs", s.logs)
	s.mux.HandleFunc("POST /api/reload", s.reload)
	s.mux.HandleFunc("POST /login", s.login)
	s.mux.HandleFunc("POST /logout", s.logout)
	s.mux.HandleFunc("GET /{$}", s.dashboard)
	return s
}

// Handler serves the API: on the unix socket (overHTTP false) as it is, over HTTP behind
// the checks of auth.go.
func (s *Server) Handler(overHTTP bool) http.Handler {
	if !overHTTP {
		return s.mux
	}
	return s.overHTTP(s.mux)
}

func (s *Server) find(name string) App {
	for _, a := range s.opts.Apps() {
		if a.Name() == name {
			return a
		}
	}
	return nil
}

func (s *Server) status(a App) AppStatus {
	st := a.Status()
	out := AppStatus{
		Name: st.Name, State: st.State.String(), Since: st.Since, Open: st.Open, Waiting: st.Waiting,
		ColdStarts: st.ColdStarts, StopReason: st.StopReason, LastError: st.LastError,
		Refused: st.Refused, StartFailures: st.StartFailures, Connections: st.Accepted, Stops: st.Stops,
		Memory: st.Memory, Node: st.Node, Bypass: st.Bypassed, BypassElsewhere: st.BypassedElsewhere, BypassConnections: st.BypassedConnects,
		Deploys: st.Deploys, DeployFailures: st.DeployFailures,
	}
	if !st.LastActivity.IsZero() {
		out.LastActivity = &st.LastActivity
	}
	if !st.LastStart.IsZero() {
		out.LastStart = &st.LastStart
		out.LastStartTook = st.LastStartTook.Round(time.Millisecond).String()
	}
	if s.opts.Describe != nil {
		out.Description = s.opts.Describe(st.Name)
	}
	if s.opts.History != nil {
		h := s.opts.History(st.Name, st)
		if !h.KnownSince.IsZero() {
			out.KnownSince = &h.KnownSince
		}
		out.ActivityDays = h.Days
	}
	return out
}

func (s *Server) list(w http.ResponseWriter, r *http.Request) {
	apps := s.opts.Apps()
	writeJSON(w, http.StatusOK, s.listing(apps))
}

// Listing is GET /api/apps.
type Listing struct {
	Apps []AppStatus `json:"apps"`
	Pool PoolJSON    `json:"pool"`
}

func (s *Server) listing(apps []App) Listing {
	out := Listing{Apps: make([]AppStatus, 0, len(apps))}
	for _, a := range apps {
		out.Apps = append(out.Apps, s.status(a))
	}
	if s.opts.Pool != nil {
		out.Pool = poolJSON(s.opts.Pool())
	}
	return out
}

func (s *Server) one(w http.ResponseWriter, r *http.Request) {
	a := s.find(r.PathValue("name"))
	if a == nil {
		s.notFound(w, r.PathValue("name"))
		return
	}
	writeJSON(w, http.StatusOK, s.status(a))
}

func (s *Server) notFound(w http.ResponseWriter, name string) {
	names := make([]string, 0)
	for _, a := range s.opts.Apps() {
		names = append(names, a.Name())
	}
	writeJSON(w, http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no app named %q; the apps are %v", name, names)})
}

func (s *Server) start(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, "start", App.Start)
}

func (s *Server) stop(w http.ResponseWriter, r *http.Request) {
	s.change(w, r, "stop", App.Stop)
}

func (s *Server) change(w http.ResponseWriter, r *http.Request, what string, do func(App, context.Context) error) {
	a := s.find(r.PathValue("name"))
	if a == nil {
		s.notFound(w, r.PathValue("name"))
		return
	}
	s.log.Info("admin request", "app", a.Name(), "action", what, "remote", r.RemoteAddr)
	if err := do(a, r.Context()); err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": fmt.Sprintf("%s %s: %v", what, a.Name(), err)})
		return
	}
	writeJSON(w, http.StatusOK, s.status(a))
}

// reload answers 200 with what changed, or 422 with why the new config was refused (the
// old one keeps running).
func (s *Server) reload(w http.ResponseWriter, r *http.Request) {
	if s.opts.Reload == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "this sact cannot reload: it was started without a config file"})
		return
	}
	s.log.Info("admin request", "action", "reload", "remote", r.RemoteAddr)
	res, err := s.opts.Reload(r.Context())
	if err != nil {
		writeJSON(w, http.StatusUnprocessableEntity, map[string]string{"error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	a := s.find(r.PathValue("name"))
	if a == nil {
		s.notFound(w, r.PathValue("name"))
		return
	}
	tail, err := strconv.Atoi(r.URL.Query().Get("tail"))
	if err != nil || tail <= 0 {
		tail = 100
	}
	if f := r.URL.Query().Get("follow"); f == "1" || f == "true" {
		s.followLogs(w, r, a.Name(), tail)
		return
	}
	if s.opts.Logs == nil {
		http.Error(w, "logs are not available", http.StatusNotImplemented)
		return
	}
	text, err := s.opts.Logs(r.Context(), a.Name(), tail)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, map[string]string{"error": err.Error()})
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	io.WriteString(w, text)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// collector reads the apps' statuses at scrape time: no bookkeeping on the hot path.
type collector struct{ s *Server }

var (
	descState = prometheus.NewDesc("sact_app_state", "1 for the state the app is in.", []string{"app", "state"}, nil)
	descCold  = prometheus.NewDesc("sact_cold_starts_total", "Starts that made the app ready.", []string{"app"}, nil)
	descFail  = prometheus.NewDesc("sact_start_failures_total", "Starts that failed.", []string{"app"}, nil)
	descOpen  = prometheus.NewDesc("sact_connections_active", "Connections (or front-door requests) open now.", []string{"app"}, nil)
	descConns = prometheus.NewDesc("sact_connections_total", "Connections (or front-door requests) served.", []string{"app"}, nil)
	descRef   = prometheus.NewDesc("sact_connections_refused_total", "Connections refused because too many waited for a start.", []string{"app"}, nil)
	descWait  = prometheus.NewDesc("sact_connections_waiting", "Connections waiting for the app to start.", []string{"app"}, nil)
	descStops = prometheus.NewDesc("sact_stops_total", "Stops, by reason (idle, evicted, manual, exited, oom-killed, ...).", []string{"app", "reason"}, nil)
	descLast  = prometheus.NewDesc("sact_last_activity_timestamp_seconds", "When the app last had a connection or moved a byte.", []string{"app"}, nil)
	descMem   = prometheus.NewDesc("sact_app_memory_bytes", "Memory the running app uses (as docker stats shows it), sampled every few seconds; absent when unknown.", []string{"app"}, nil)
	descByp   = prometheus.NewDesc("sact_bypassed_connections_total", "Connections clients made past the relay, straight to the running app (SACT_RELAY=kernel or auto).", []string{"app"}, nil)
	descPast  = prometheus.NewDesc("sact_app_bypass", "1 while the clients named reach the running app past the relay: local (this host's), elsewhere (other hosts').", []string{"app", "clients"}, nil)
	descPool  = prometheus.NewDesc("sact_pool", "The pool: running apps, max_running, starts waiting for a slot and for a start token.", []string{"what"}, nil)
)

var states = []activator.State{activator.Stopped, activator.Starting, activator.Running, activator.Stopping, activator.Pausing, activator.Paused, activator.Waking, activator.Broken}

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descCold, descFail, descOpen, descConns, descRef, descWait, descStops, descLast, descMem, descByp, descPast, descPool} {
		ch <- d
	}
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	for _, a := range c.s.opts.Apps() {
		st := a.Status()
		for _, s := range states {
			v := 0.0
			if s == st.State {
				v = 1
			}
			ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, st.Name, s.String())
		}
		ch <- prometheus.MustNewConstMetric(descCold, prometheus.CounterValue, float64(st.ColdStarts), st.Name)
		ch <- prometheus.MustNewConstMetric(descFail, prometheus.CounterValue, float64(st.StartFailures), st.Name)
		ch <- prometheus.MustNewConstMetric(descOpen, prometheus.GaugeValue, float64(st.Open), st.Name)
		ch <- prometheus.MustNewConstMetric(descConns, prometheus.CounterValue, float64(st.Accepted), st.Name)
		ch <- prometheus.MustNewConstMetric(descRef, prometheus.CounterValue, float64(st.Refused), st.Name)
		ch <- prometheus.MustNewConstMetric(descWait, prometheus.GaugeValue, float64(st.Waiting), st.Name)
		reasons := make([]string, 0, len(st.Stops))
		for r := range st.Stops {
			reasons = append(reasons, r)
		}
		slices.Sort(reasons)
		for _, r := range reasons {
			ch <- prometheus.MustNewConstMetric(descStops, prometheus.CounterValue, float64(st.Stops[r]), st.Name, r)
		}
		if st.BypassedConnects > 0 {
			ch <- prometheus.MustNewConstMetric(descByp, prometheus.CounterValue, float64(st.BypassedConnects), st.Name)
		}
		for clients, on := range map[string]bool{"local": st.Bypassed, "elsewhere": st.BypassedElsewhere} {
			if on {
				ch <- prometheus.MustNewConstMetric(descPast, prometheus.GaugeValue, 1, st.Name, clients)
			}
		}
		if st.Memory > 0 {
			ch <- prometheus.MustNewConstMetric(descMem, prometheus.GaugeValue, float64(st.Memory), st.Name)
		}
		if !st.LastActivity.IsZero() {
			ch <- prometheus.MustNewConstMetric(descLast, prometheus.GaugeValue, float64(st.LastActivity.UnixNano())/1e9, st.Name)
		}
	}
	if c.s.opts.Pool != nil {
		p := c.s.opts.Pool()
		for what, v := range map[string]int64{"running": int64(p.Running), "max_running": int64(p.MaxRunning), "waiting_for_slot": int64(p.WaitingForSlot),
			"queued_starts": int64(p.Queued), "evicted": int64(p.Evicted), "memory_used_bytes": p.MemoryUsed, "memory_budget_bytes": p.MemoryBudget} {
			ch <- prometheus.MustNewConstMetric(descPool, prometheus.GaugeValue, float64(v), what)
		}
	}
}

// StartHistogram is the start-duration histogram the daemon feeds through
// activator.Options.Observe.
func StartHistogram() *prometheus.HistogramVec {
	return prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "sact_start_duration_seconds",
		Help:    "How long starts took, from the first connection to ready (outcome ok or failed).",
		Buckets: []float64{0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 30, 60},
	}, []string{"app", "outcome"})
}
