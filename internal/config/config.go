package config

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"maps"
	"net/netip"
	"os"
	"slices"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/listen"
)

// Config is a whole, validated config file with every default filled in.
type Config struct {
	// File is the path the config was read from.
	File string
	// Files are the other files it was made from, sorted: those that include: brought
	// in, and the apps' env_file files. Whoever may write one of them runs what sact runs.
	Files []string
	Admin Admin
	Pool  Pool
	HTTP  HTTP
	// Apps sorted by Name.
	Apps []*App
	// opts parse the apps that AddLabelApps adds.
	opts Options
}

// Admin is the admin API that the CLI (sact status, start, stop) talks to.
type Admin struct {
	// Socket is the unix socket the API listens on. Default "/run/sact/admin.sock".
	Socket string
	// Listen is an optional TCP host:port serving the dashboard, /metrics and the API over
	// HTTP. Default "": off.
	Listen string
	// Group may use the admin socket (mode 0660): a group name or gid (key group).
	// Default "": sact's own group.
	Group string
	// Hosts are further names the dashboard is served on over HTTP, "name" (any port) or
	// "name:port", like a reverse proxy's name for it (key hosts). A request whose Host
	// is neither one of them, the listen address, nor localhost, 127.0.0.1 or [::1] with
	// the listen port is refused: that is what defeats DNS rebinding. Default none.
	Hosts []string
	// TokenFile holds the credential that changes and logs over HTTP need (bearer token,
	// or basic auth password) and that the dashboard's login asks for (key token_file).
	// When missing, sact creates it with a random token: root's, mode 0640, group Group.
	// Default "": admin.token in sact's state directory (-state-dir, /var/lib/sact).
	TokenFile string
}

// Pool limits what runs on the host as a whole.
type Pool struct {
	// MaxRunning is how many apps may run at once; when one more must start, the least
	// recently used idle app is stopped to make room. Default 0: unlimited.
	MaxRunning int
	// StartConcurrency is how many apps may be starting at once; the rest queue. Default
	// runtime.NumCPU().
	StartConcurrency int
	// MemoryBudget is the sum of running apps' memory limits, in bytes, that sact keeps
	// under by stopping idle apps (key memory_budget); an app without a memory limit
	// counts by its memory use as measured while it runs. Default 0: no budget.
	MemoryBudget int64
}

// HTTP is the optional front door: apps that set Hosts are served on these addresses,
// routed by the Host header.
type HTTP struct {
	// Listen addresses. Default none: no front door. A unix socket here that sets no
	// mode gets 0660, and one that sets no group gets www-data (nginx's on Debian) if
	// that group exists, else sact's own (a warning says to set group:); both are
	// applied when it is bound, since parsing looks nothing up on the host.
	Listen []listen.Addr
	// TrustedProxies are the client addresses (CIDRs) whose X-Forwarded-For, -Proto and
	// -Host are believed and extended (key trusted_proxies); other clients' are
	// replaced. Clients on a unix socket are trusted when its mode lets no "other" user
	// connect (no bits in 0o007, as the default 0660), or when the list holds the word
	// unix (TrustUnix). Default none.
	TrustedProxies []netip.Prefix
	// TrustUnix: trusted_proxies holds "unix", so every unix socket peer is trusted,
	// whatever the socket's mode.
	TrustUnix bool
	// DefaultApp serves requests whose Host matches no app (key default_app). Default "":
	// they get 404, and nothing starts.
	DefaultApp string
	// MaxHeaderBytes limits a request's header (key max_header_bytes). Default 64k.
	MaxHeaderBytes int64
	// ReadHeaderTimeout bounds reading a request's header (key read_header_timeout), so
	// that slow clients cannot hold connections. Default 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes client keep-alive connections idle this long (key
	// idle_timeout). Default 2m.
	IdleTimeout time.Duration
}

// Quiet are the requests the front door answers itself while an app sleeps, so that
// crawlers and monitors do not wake it.
type Quiet struct {
	// Enabled turns the rules on. Default true; `quiet: false` turns them off.
	Enabled bool
	// RobotsTxt is a file served for GET /robots.txt (key robots_txt). Default "": a
	// built-in disallow-all.
	RobotsTxt string
	// Favicon answers GET /favicon.ico with 204. Default true.
	Favicon bool
	// UserAgents are case-insensitive substrings of User-Agent answered with Status and
	// Retry-After (key user_agents). Default: common uptime monitors and crawlers.
	UserAgents []string
	// Status for those user agents. Default 503.
	Status int
}

// DefaultQuietUserAgents are the user agents that never wake an app by default.
var DefaultQuietUserAgents = []string{
	"uptimerobot", "pingdom", "statuscake", "site24x7", "betteruptime", "uptime-kuma",
	"googlebot", "bingbot", "yandexbot", "baiduspider", "duckduckbot", "applebot",
	"ahrefsbot", "semrushbot", "mj12bot", "dotbot", "petalbot", "bytespider", "gptbot",
	"claudebot", "ccbot",
}

// App is one app: how to run it and when.
//
// What runs is its kind's (Kind, Run); the rest is sact's. Keys of `defaults:` that do not
// apply to an app's kind (memory for a plain process, say) are not inherited by it.
type App struct {
	// Name is the app's key under apps:; containers are named "sact-"+Name.
	Name string
	// File is the included file (include:) the app is defined in; "" for the main file.
	File string
	// Line is the line of the app's key in its file, for messages.
	Line int

	// Run is what the app's kind decoded from its settings (image:, cmd:, volumes:,
	// command:, dir:, ...: see the kinds' packages), and its environment, Run.Env:
	// defaults.env, under the variables of the app's env_file, under the app's own env;
	// the three are merged, key by key. Name, Upstream, Port and Hash are left zero here:
	// Spec fills them in.
	Run backend.Spec
	// kind is the app's kind, chosen by the keys it sets (Options.Kinds).
	kind backend.Kind
	// envFile are the variables of the app's env_file: a dotenv file, read at load time,
	// relative to the config file that names it (key env_file). Default none.
	envFile map[string]string

	// Listen is where clients connect. Default none.
	Listen []listen.Addr
	// Upstream is where the started app accepts connections. For an app whose kind runs on
	// the host's network (a command:) with Port it is set to tcp:127.0.0.1:Port. Default:
	// none.
	Upstream backend.Addr
	// Port is the port the app listens on at the container's own address (127.0.0.1 for
	// a command: app). Default 0: none.
	Port int
	// Idle is how long the app may go without a new connection and without a byte moved
	// before it is stopped. Default 15m.
	Idle time.Duration
	// StartTimeout is how long a start may take until the upstream accepts connections.
	// Default 60s.
	StartTimeout time.Duration
	// StopTimeout is the grace period between SIGTERM and SIGKILL. Default 10s.
	StopTimeout time.Duration
	// MaxWaiting is how many connections are held while the app starts (key max_waiting);
	// more are refused. Default 1024.
	MaxWaiting int
	// KeepWhileOpen keeps the app running while any connection is open, even a silent
	// one (key keep_while_open). Default false.
	KeepWhileOpen bool
	// OnExit is what happens to the running app when sact exits (key on_exit): "keep"
	// leaves it running for the next sact to adopt, "stop" stops it. Default "keep".
	OnExit string
	// Ready is how sact tells that a started app can serve (key ready:): accepts,
	// healthcheck, or an HTTP check. See Ready. Default: accepts.
	Ready Ready

	// Handoff passes the listening sockets into the app (LISTEN_FDS) instead of relaying
	// connections. Default false.
	Handoff bool
	// Hosts are the Host header values the http front door routes to this app. Default
	// none.
	Hosts []string
	// DependsOn are apps started before this one and stopped after it (key depends_on).
	// Default none.
	DependsOn []string
	// PauseAfter freezes the app after this much idle time, before Idle stops it (key
	// pause_after). Default 0: never paused.
	PauseAfter time.Duration
	// KeepWarm are weekly windows in which the app is kept running, like
	// "Mon-Fri 09:00-19:00" (key keep_warm). Default none.
	KeepWarm []string
	// MinRunning is how many instances are kept running even when idle (key
	// min_running). Default 0.
	MinRunning int

	// WakingPage, for the http front door: a browser's GET that waits this long for a
	// cold start gets a small self-refreshing "starting" page instead (key waking_page).
	// Default 0: everyone waits for the real answer.
	WakingPage time.Duration
	// MaxInFlight is how many front-door requests the app may have at once (key
	// max_in_flight); more get 503. Default 256.
	MaxInFlight int
	// RestartFile is a file whose touch restarts the app at its next request, in a new
	// container, as Passenger does with tmp/restart.txt (key restart_file): sact watches
	// its directory (inotify). An absolute path, or relative to the config file that
	// names it; its directory must exist, the file need not. Default "": none.
	RestartFile string
	// Restarted is RestartFile's modification time when the config was read (zero if
	// the file is absent). It is part of Spec().Hash, so a touch since the container was
	// made recreates it, also across restarts of sact; a watcher updates it on a touch.
	Restarted time.Time

	// Quiet are the front door's answers while the app sleeps. See Quiet.
	Quiet    Quiet
	quietSet bool
}

// Load reads and validates the config file at path. On any problem it returns a nil Config
// and an Errors holding every problem found.
func Load(path string, opts Options) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, Errors{{File: path, Msg: "cannot read the config: " + errText(err) + "; check the path given with -c"}}
	}
	return Parse(path, data, opts)
}

// errText is err's message without the path that os errors repeat.
func errText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err.Error()
	}
	return err.Error()
}

// Parse is Load on bytes already read; path is used in messages. Validation looks at the
// host only through opts.Host: the directories of unix sockets must exist, say.
func Parse(path string, data []byte, opts Options) (*Config, error) {
	p := newParser(path, opts)
	cfg := p.parse(data)
	if len(p.d.errs) > 0 {
		return nil, p.d.errs.sorted(path)
	}
	cfg.opts = opts
	return cfg, nil
}

// Kind returns the app's kind.
func (a *App) Kind() backend.Kind { return a.kind }

// Spec returns what a runtime needs to run the app. The slices and maps are copies.
func (a *App) Spec() backend.Spec {
	s := a.Run
	s.Cmd, s.Entrypoint, s.Command = slices.Clone(s.Cmd), slices.Clone(s.Entrypoint), slices.Clone(s.Command)
	s.Env, s.Labels, s.Volumes = maps.Clone(s.Env), maps.Clone(s.Labels), slices.Clone(s.Volumes)
	s.Name, s.Upstream, s.Port = a.Name, a.Upstream, a.Port
	s.Hash = a.hash()
	return s
}

// hashed is what App.hash covers: everything that shapes the container or process, so
// that a changed value means "recreate". Every field is omitempty, so adding a field here
// leaves the hash of configs that do not use it alone: an upgrade of sact must not
// recreate every container. Never rename the JSON keys, for the same reason.
type hashed struct {
	Image      string            `json:"image,omitempty"`
	Container  string            `json:"container,omitempty"`
	Cmd        []string          `json:"cmd,omitempty"`
	Entrypoint []string          `json:"entrypoint,omitempty"`
	Env        map[string]string `json:"env,omitempty"`
	Volumes    []string          `json:"volumes,omitempty"`
	User       string            `json:"user,omitempty"`
	Network    string            `json:"network,omitempty"`
	Memory     int64             `json:"memory,omitempty"`
	CPUs       float64           `json:"cpus,omitempty"`
	Labels     map[string]string `json:"labels,omitempty"`
	Command    []string          `json:"command,omitempty"`
	Dir        string            `json:"dir,omitempty"`
	Port       int               `json:"port,omitempty"`
	Upstream   string            `json:"upstream,omitempty"`
	Handoff    bool              `json:"handoff,omitempty"`
	// Restarted is the restart file's time: touching it recreates the container.
	Restarted string `json:"restarted,omitempty"`
	// Extra is a kind's own settings (Spec.Extra).
	Extra any `json:"extra,omitempty"`
}

// hash is the first 16 hex digits of the sha256 of the app's hashed settings. JSON writes
// map keys sorted, so equal settings always give equal hashes.
func (a *App) hash() string {
	r := &a.Run
	b, err := json.Marshal(hashed{
		Image: r.Image, Container: r.Container, Cmd: r.Cmd, Entrypoint: r.Entrypoint,
		Env: r.Env, Volumes: r.Volumes, User: r.User, Network: r.Network, Memory: r.Memory,
		CPUs: r.CPUs, Labels: r.Labels, Command: r.Command, Dir: r.Dir, Port: a.Port,
		Upstream: a.Upstream.String(), Handoff: a.Handoff, Restarted: a.restarted(),
		Extra: r.Extra,
	})
	if err != nil {
		panic("config: hashing app settings: " + err.Error()) // a kind's Extra must be plain data
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

// Windows returns the app's keep_warm windows, parsed.
func (a *App) Windows() []Window {
	var ws []Window
	for _, s := range a.KeepWarm {
		if w, err := ParseWindow(s); err == nil {
			ws = append(ws, w)
		}
	}
	return ws
}

// restarted is Restarted for the hash: "" when zero, so that apps without a restart file
// keep their hash.
func (a *App) restarted() string {
	if a.Restarted.IsZero() {
		return ""
	}
	return a.Restarted.UTC().Format(time.RFC3339Nano)
}

// RestartFileTime returns the modification time of path, zero if it does not exist.
func RestartFileTime(path string) time.Time { return restartFileTime(OS{}, path) }

func restartFileTime(h Host, path string) time.Time {
	fi, err := h.Stat(path)
	if err != nil {
		return time.Time{}
	}
	return fi.ModTime()
}
