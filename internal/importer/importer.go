// Package importer moves a host's nginx + Passenger apps onto sact: `sact import` reads
// the nginx configuration as nginx does (following includes, or from `nginx -T`), finds
// every server or location with passenger_enabled on, looks into each app's directory
// (Ruby and Bundler versions, unicorn or puma, Rack or Rails, Node, Procfile), and writes
// a sact config (sact.yaml including apps.d/NAME.yaml), a Dockerfile per app, the nginx
// server blocks with Passenger replaced by proxy_pass to sact, and a report. It never
// touches the live nginx config or the apps' directories.
//
// The images hold the app's Ruby and its bundle, and the app's code is mounted from the
// host at the path it has there (see Dockerfile's comment in write.go for why).
package importer

import (
	"errors"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	ngx "github.com/tufanbarisyildirim/gonginx/config"
)

// Options are what Import needs besides the nginx config. The zero value works.
type Options struct {
	// SocketDir is where sact's listening socket for each app goes. Default "/run/sact".
	SocketDir string
	// ImagePrefix names the images: PREFIX/NAME:TAG. Default "sact-import".
	ImagePrefix string
}

// Result is everything an import found.
type Result struct {
	// Main is the nginx config file read; Read every file read, in order.
	Main string
	Read []string
	Apps []*App
	// Static are the server blocks without Passenger, left alone.
	Static []*Server
	// Idle is passenger_pool_idle_time (Passenger's default 300s if unset), MaxPool
	// passenger_max_pool_size (0 if unset: Passenger's default 6 is per CPU budget, not
	// a limit sact needs).
	Idle    time.Duration
	IdleAt  Pos
	MaxPool int
	// Group is the group nginx runs as (its user directive), which gets the sockets.
	Group    string
	opts     Options
	out      string // the directory Write writes to
	included map[ngx.IDirective][]includedFile
}

// App is one Passenger app.
type App struct {
	Name string
	// Site is the server block serving it; Sites all of them (the same app behind
	// server blocks with the same server_names, like one for port 80 and one for 443).
	Site  *Server
	Sites []*Server
	// At is where passenger_enabled on is.
	At Pos
	// BaseURI is the path it is served under ("" for the whole site), from
	// passenger_base_uri or its location.
	BaseURI string
	loc     *location
	// Dir is the app's directory as Passenger knew it (/srv/shop/current); Real, where
	// that points now; DeployTo the capistrano deploy_to (the parent of current/ and
	// releases/), "" for an app not deployed so.
	Dir, Real, DeployTo string
	Detected
	Env map[string]string
	// Secrets are the env vars that look like credentials: they go to an env_file.
	Secrets map[string]string
	// UID and GID the app ran as: passenger_user/group, or the owner of its startup file
	// (Passenger's default); Account names them.
	UID, GID     int
	Account      string
	MinInstances int
	PreStart     bool
	StartTimeout time.Duration
	// Notes are what a person must look at.
	Notes []string
	// Info are what was found, for the report.
	Info []string
}

// Import reads the nginx config at path and returns what it found. Problems with the
// input (the config does not parse, a root does not exist, two sites claim one app) are
// errors naming file and line; several are joined.
func Import(path string, opts Options) (*Result, error) {
	if opts.SocketDir == "" {
		opts.SocketDir = "/run/sact"
	}
	if opts.ImagePrefix == "" {
		opts.ImagePrefix = "sact-import"
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	r, err := read(abs)
	if err != nil {
		return nil, err
	}
	res := &Result{Main: r.files[0], Read: r.files, Idle: 300 * time.Second, opts: opts, Group: "www-data", included: r.included}
	if v, ok := r.http.get("user"); ok && len(v.args) > 0 {
		res.Group = v.args[0]
		if len(v.args) > 1 {
			res.Group = v.args[1]
		}
	}
	var errs []error
	if v, ok := r.http.get("passenger_pool_idle_time"); ok {
		n, err := strconv.Atoi(first(v.args))
		if err != nil || n < 0 {
			errs = append(errs, fmt.Errorf("%s: passenger_pool_idle_time %q is not a number of seconds", v.at, first(v.args)))
		} else {
			res.Idle, res.IdleAt = time.Duration(n)*time.Second, v.at
		}
	}
	if v, ok := r.http.get("passenger_max_pool_size"); ok {
		n, err := strconv.Atoi(first(v.args))
		if err != nil || n < 1 {
			errs = append(errs, fmt.Errorf("%s: passenger_max_pool_size %q is not a positive number", v.at, first(v.args)))
		} else {
			res.MaxPool = n
		}
	}
	byDir := map[string]*App{}
	for _, s := range r.servers {
		if !s.Passenger {
			res.Static = append(res.Static, s)
			continue
		}
		for _, l := range s.locations {
			app, err := newApp(s, l)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if app == nil {
				continue
			}
			if prev, ok := byDir[app.Dir]; ok {
				if prev.Site != s && slices.Equal(prev.Site.Names, s.Names) && prev.BaseURI == app.BaseURI {
					prev.Sites = append(prev.Sites, s) // the same site on another port
					continue
				}
				if prev.Site == s {
					continue // another location of the same app
				}
				errs = append(errs, fmt.Errorf("%s: two sites claim the app directory %s: this one (server_name %s) and the one at %s (server_name %s); serve it from one server block (list every name in its server_name), or give each its own passenger_app_root",
					app.At, app.Dir, strings.Join(s.Names, " "), prev.At, strings.Join(prev.Site.Names, " ")))
				continue
			}
			byDir[app.Dir] = app
			res.Apps = append(res.Apps, app)
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	nameApps(res.Apps)
	for _, a := range res.Apps {
		a.review(res)
	}
	return res, nil
}

func first(s []string) string {
	if len(s) == 0 {
		return ""
	}
	return s[0]
}

// newApp returns the app that location l of server s serves, nil if l serves none of
// its own: it has passenger off, or is part of the app at the server's level.
func newApp(s *Server, l *location) (*App, error) {
	sc := l.scope
	if !sc.on("passenger_enabled") {
		return nil, nil
	}
	top := s.locations[0]
	if l != top {
		// A location that only inherits passenger_enabled and the app root is the
		// server's app; one that sets its own root, app root or base URI is another.
		ownRoot := len(l.block.FindDirectives("root")) > 0 || len(l.block.FindDirectives("alias")) > 0 ||
			len(l.block.FindDirectives("passenger_app_root")) > 0 || len(l.block.FindDirectives("passenger_base_uri")) > 0
		if top.scope.on("passenger_enabled") && !ownRoot {
			return nil, nil
		}
	}
	a := &App{Site: s, Sites: []*Server{s}, loc: l, At: l.at}
	if v, ok := sc.get("passenger_enabled"); ok {
		a.At = v.at
	}
	if l != top {
		a.BaseURI = sc.str("passenger_base_uri")
		if a.BaseURI == "" && len(l.match) == 1 {
			a.BaseURI = strings.TrimSuffix(l.match[0], "/")
		}
	}
	switch {
	case sc.str("passenger_app_root") != "":
		v, _ := sc.get("passenger_app_root")
		a.Dir = filepath.Clean(v.args[0])
		if fi, err := os.Stat(a.Dir); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s: passenger_app_root %s does not exist (or is no directory); fix the path, or import on the host that has the app", v.at, a.Dir)
		}
	case sc.str("root") != "":
		v, _ := sc.get("root")
		root := filepath.Clean(v.args[0])
		if fi, err := os.Stat(root); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("%s: root %s does not exist (or is no directory); fix the path, or import on the host that has the app", v.at, root)
		}
		// Passenger's app root is the parent of the document root (public/).
		a.Dir = filepath.Dir(root)
	default:
		return nil, fmt.Errorf("%s: passenger_enabled on, but no root nor passenger_app_root says where the app is; add one", a.At)
	}
	a.Real = a.Dir
	if real, err := filepath.EvalSymlinks(a.Dir); err == nil {
		a.Real = real
	}
	if filepath.Base(a.Dir) == "current" {
		parent := filepath.Dir(a.Dir)
		if fi, err := os.Stat(filepath.Join(parent, "releases")); err == nil && fi.IsDir() {
			a.DeployTo = parent
		}
	}
	a.Detected = detect(a.Dir, sc.str("passenger_app_type"), sc.str("passenger_startup_file"),
		sc.str("passenger_ruby"), sc.str("passenger_nodejs"), sc.str("passenger_python"))

	a.Env = map[string]string{}
	env := cmpOr(sc.str("passenger_app_env"), sc.str("rails_env"), sc.str("rack_env"), "production")
	switch a.Type {
	case "node":
		a.Env["NODE_ENV"] = env
	case "python":
		a.Env["PYTHON_ENV"] = env
	default:
		a.Env["RACK_ENV"], a.Env["RAILS_ENV"] = env, env
	}
	for _, v := range sc.envVars {
		if len(v.args) < 2 {
			return nil, fmt.Errorf("%s: passenger_env_var needs a name and a value", v.at)
		}
		a.Env[v.args[0]] = v.args[1]
	}
	if a.BaseURI != "" && a.Type == "rails" {
		a.Env["RAILS_RELATIVE_URL_ROOT"] = a.BaseURI
	}
	if v, ok := sc.get("passenger_min_instances"); ok {
		n, err := strconv.Atoi(first(v.args))
		if err != nil || n < 0 {
			return nil, fmt.Errorf("%s: passenger_min_instances %q is not a number", v.at, first(v.args))
		}
		a.MinInstances = n
	}
	a.PreStart = sc.str("passenger_pre_start") != ""
	if v, ok := sc.get("passenger_start_timeout"); ok {
		n, err := strconv.Atoi(first(v.args))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: passenger_start_timeout %q is not a number of seconds", v.at, first(v.args))
		}
		a.StartTimeout = time.Duration(n) * time.Second
	}
	if err := a.account(sc); err != nil {
		return nil, err
	}
	return a, nil
}

func cmpOr(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

// account finds whom the app ran as: passenger_user and passenger_group, else the owner
// of its startup file, as Passenger does.
func (a *App) account(sc scope) error {
	a.UID, a.GID = -1, -1
	if fi, err := os.Stat(filepath.Join(a.Dir, a.StartupFile)); err == nil {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			a.UID, a.GID = int(st.Uid), int(st.Gid)
			a.Account = "owner of " + a.StartupFile
		}
	}
	if v, ok := sc.get("passenger_user"); ok {
		u, err := user.Lookup(first(v.args))
		if err != nil {
			return fmt.Errorf("%s: passenger_user %s: %v; create the user or fix the name", v.at, first(v.args), err)
		}
		a.UID, _ = strconv.Atoi(u.Uid)
		a.GID, _ = strconv.Atoi(u.Gid)
		a.Account = "passenger_user " + u.Username
	}
	if v, ok := sc.get("passenger_group"); ok {
		g, err := user.LookupGroup(first(v.args))
		if err != nil {
			return fmt.Errorf("%s: passenger_group %s: %v; create the group or fix the name", v.at, first(v.args), err)
		}
		a.GID, _ = strconv.Atoi(g.Gid)
	}
	return nil
}

var badName = regexp.MustCompile(`[^a-z0-9_.-]+`)

// nameApps names each app after its directory (without current/ and releases/), else
// its first server_name; a clash gets the server name, then a number.
func nameApps(apps []*App) {
	used := map[string]bool{}
	for _, a := range apps {
		base := a.Dir
		if a.DeployTo != "" {
			base = a.DeployTo
		}
		cands := []string{clean(filepath.Base(base))}
		if len(a.Site.Names) > 0 {
			cands = append(cands, clean(strings.Split(a.Site.Names[0], ".")[0]+"-"+cands[0]), clean(a.Site.Names[0]))
		}
		name := ""
		for _, c := range cands {
			if c != "" && !used[c] {
				name = c
				break
			}
		}
		for i := 2; name == ""; i++ {
			if c := cands[0] + "-" + strconv.Itoa(i); !used[c] {
				name = c
			}
		}
		used[name] = true
		a.Name = name
	}
}

func clean(s string) string {
	s = badName.ReplaceAllString(strings.ToLower(s), "-")
	s = strings.Trim(s, "-_.")
	if s == "" || s == "current" || s == "public" {
		return ""
	}
	return s
}

// review writes down what was found and what a person must look at.
func (a *App) review(res *Result) {
	info := func(f string, args ...any) { a.Info = append(a.Info, fmt.Sprintf(f, args...)) }
	note := func(f string, args ...any) { a.Notes = append(a.Notes, fmt.Sprintf(f, args...)) }
	info("%s app in %s", a.Type, a.Dir)
	if a.DeployTo != "" {
		info("deployed by capistrano into %s (current -> %s)", a.DeployTo, a.Real)
	}
	switch a.Type {
	case "rack", "rails":
		switch {
		case a.Ruby == "":
			note("no Ruby version found (no .ruby-version, no RUBY VERSION in Gemfile.lock, passenger_ruby names none); set the FROM line of its Dockerfile")
		case olderThan(a.Ruby, oldestRubyImage):
			note("Ruby %s is older than any published ruby image; build one and map it with sact build --base ruby:%s=IMAGE", a.Ruby, rubyMinor(a.Ruby))
		default:
			info("Ruby %s (from %s)", a.Ruby, a.RubyFrom)
		}
		if a.Bundler != "" {
			info("Bundler %s", a.Bundler)
		}
		if !a.Lockfile {
			note("no Gemfile.lock: the image's bundle is resolved anew at build time; commit a lockfile")
		}
		switch a.Server {
		case "unicorn":
			info("unicorn %s in Gemfile.lock: it takes its socket from sact (handoff)", a.ServerVersion)
		case "puma":
			info("puma %s in Gemfile.lock: sact relays to it on port %d", a.ServerVersion, pumaPort)
		default:
			note("neither unicorn nor puma in Gemfile.lock: the image adds puma outside the bundle; add gem \"puma\" to the Gemfile")
		}
		if a.Rails != "" {
			info("Rails %s", a.Rails)
		}
	case "node":
		if a.Node == "" {
			note("no Node version found (package.json engines.node, .nvmrc, passenger_nodejs); set the FROM line of its Dockerfile")
		} else {
			info("Node %s (from %s)", a.Node, a.NodeFrom)
		}
		note("Passenger made the app's listen() call its socket; in the container it must listen on $PORT (%d)", nodePort)
	case "python":
		note("Python (WSGI) apps get a gunicorn Dockerfile skeleton; check it")
	default:
		note("no config.ru, config/environment.rb, package.json nor passenger_wsgi.py: unknown app type; write its Dockerfile")
	}
	if a.Procfile != "" {
		info("Procfile web: %s", a.Procfile)
	}
	if !a.hasTmp() {
		note("no tmp/ in %s: create it (owned by the app's user) for tmp/restart.txt to restart the app, then add restart_file: %s", a.Dir, filepath.Join(a.Dir, "tmp", "restart.txt"))
	}
	if a.BaseURI != "" {
		note("served under %s: Passenger set SCRIPT_NAME; check that the app makes its links under %s", a.BaseURI, a.BaseURI)
	}
	if a.UID < 0 {
		note("cannot tell whom the app ran as; set user: in its file")
	} else {
		info("runs as uid %d gid %d (%s)", a.UID, a.GID, a.Account)
	}
	if a.MinInstances > 0 {
		info("passenger_min_instances %d: kept running (min_running: 1)", a.MinInstances)
	}
	if a.PreStart {
		info("passenger_pre_start: started by Passenger when nginx starts; with sact it starts at its first request (set min_running: 1 to keep it up)")
	}
	a.Secrets = map[string]string{}
	for k, v := range a.Env {
		if looksSecret(k, v) {
			a.Secrets[k] = v
			delete(a.Env, k)
		}
	}
	for _, k := range sortedKeys(a.Secrets) {
		note("env var %s looks like a secret: it was moved to apps.d/%s.env (mode 0600); it was in the nginx config, readable by many, so rotate it", k, a.Name)
	}
	if len(a.Sites) > 1 {
		var at []string
		for _, s := range a.Sites {
			at = append(at, s.At.String())
		}
		info("served by %d server blocks: %s", len(a.Sites), strings.Join(at, ", "))
	}
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
