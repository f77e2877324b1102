package config

import (
	"errors"
	"io/fs"
	"net"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/listen"
)

// appKeys decodes each of sact's own app settings into its field of App. Its keys, and
// the keys of the kinds (Options.Kinds), are the keys that an app, and defaults:, accept.
// Each function checks what can be checked of the value alone; checks across settings and
// apps are in validate.go.
var appKeys = map[string]func(d *decoder, path string, n *yaml.Node, a *App){
	"env":      func(d *decoder, p string, n *yaml.Node, a *App) { a.Run.Env = d.stringMap(p, n, checkEnvKey) },
	"env_file": func(d *decoder, p string, n *yaml.Node, a *App) { a.envFile = d.envFile(p, n) },

	"listen":          func(d *decoder, p string, n *yaml.Node, a *App) { a.Listen = d.listens(p, n) },
	"upstream":        func(d *decoder, p string, n *yaml.Node, a *App) { a.Upstream = d.upstream(p, n) },
	"port":            func(d *decoder, p string, n *yaml.Node, a *App) { a.Port = d.port(p, n) },
	"idle":            func(d *decoder, p string, n *yaml.Node, a *App) { a.Idle = d.duration(p, n) },
	"start_timeout":   func(d *decoder, p string, n *yaml.Node, a *App) { a.StartTimeout = d.duration(p, n) },
	"stop_timeout":    func(d *decoder, p string, n *yaml.Node, a *App) { a.StopTimeout = d.duration(p, n) },
	"max_waiting":     func(d *decoder, p string, n *yaml.Node, a *App) { a.MaxWaiting = d.atLeast(p, n, 1) },
	"keep_while_open": func(d *decoder, p string, n *yaml.Node, a *App) { a.KeepWhileOpen = d.boolean(p, n) },
	"on_exit":         func(d *decoder, p string, n *yaml.Node, a *App) { a.OnExit = d.oneOf(p, n, "keep", "stop") },
	"ready":           func(d *decoder, p string, n *yaml.Node, a *App) { a.Ready = d.ready(p, n) },

	"handoff":     func(d *decoder, p string, n *yaml.Node, a *App) { a.Handoff = d.boolean(p, n) },
	"hosts":       func(d *decoder, p string, n *yaml.Node, a *App) { a.Hosts = d.stringList(p, n, checkHost) },
	"depends_on":  func(d *decoder, p string, n *yaml.Node, a *App) { a.DependsOn = d.stringList(p, n, checkAppName) },
	"pause_after": func(d *decoder, p string, n *yaml.Node, a *App) { a.PauseAfter = d.duration(p, n) },
	"keep_warm":   func(d *decoder, p string, n *yaml.Node, a *App) { a.KeepWarm = d.stringList(p, n, checkWindow) },
	"min_running": func(d *decoder, p string, n *yaml.Node, a *App) { a.MinRunning = d.atLeast(p, n, 0) },

	"waking_page":   func(d *decoder, p string, n *yaml.Node, a *App) { a.WakingPage = d.duration(p, n) },
	"max_in_flight": func(d *decoder, p string, n *yaml.Node, a *App) { a.MaxInFlight = d.atLeast(p, n, 1) },
	"quiet":         func(d *decoder, p string, n *yaml.Node, a *App) { a.Quiet, a.quietSet = d.quiet(p, n), true },
	"restart_file":  func(d *decoder, p string, n *yaml.Node, a *App) { a.RestartFile, a.Restarted = d.restartFile(p, n) },
}

// restartFile decodes restart_file: a path whose directory exists, and the file's time.
func (d *decoder) restartFile(path string, n *yaml.Node) (string, time.Time) {
	s := d.str(path, n)
	if s == "" {
		return "", time.Time{}
	}
	if !filepath.IsAbs(s) {
		s = filepath.Join(filepath.Dir(d.fileOf(n)), s)
	}
	s = filepath.Clean(s)
	if !d.checkDir(path, n, filepath.Dir(s), false, "create it (Passenger apps have tmp/), or fix the path") {
		return "", time.Time{}
	}
	if fi, err := d.host.Stat(s); err == nil && fi.IsDir() {
		d.errorf(n, path, "%s is a directory; name a file in it, like %s", s, filepath.Join(s, "restart.txt"))
		return "", time.Time{}
	}
	return s, restartFileTime(d.host, s)
}

var quietKeys = []string{"favicon", "robots_txt", "status", "user_agents"}

// quiet decodes `quiet: false`, `quiet: true` or a mapping of the rules; what the mapping
// leaves out keeps its default.
func (d *decoder) quiet(path string, n *yaml.Node) Quiet {
	q := defaultQuiet()
	if n.Kind != yaml.MappingNode {
		q.Enabled = d.boolean(path, n)
		return q
	}
	pairs, _ := d.mapping(path, n)
	for _, kv := range pairs {
		at := join(path, kv.key)
		switch kv.key {
		case "favicon":
			q.Favicon = d.boolean(at, kv.v)
		case "robots_txt":
			if f := d.str(at, kv.v); f != "" {
				if _, err := d.host.Stat(f); err != nil {
					d.errorf(kv.v, at, "cannot read %s (%v); give the path of the robots.txt to serve", f, errText(err))
				} else {
					q.RobotsTxt = f
				}
			}
		case "user_agents":
			q.UserAgents = d.stringList(at, kv.v, nil)
		case "status":
			st, ok := d.integer(at, kv.v)
			if ok && (st < 200 || st > 599) {
				d.errorf(kv.v, at, "%d is not an HTTP status; use 503 (with Retry-After), 429, 404 or 204", st)
			} else if ok {
				q.Status = st
			}
		default:
			d.unknownKey(at, kv, quietKeys)
		}
	}
	return q
}

func defaultQuiet() Quiet {
	return Quiet{Enabled: true, Favicon: true, UserAgents: slices.Clone(DefaultQuietUserAgents), Status: 503}
}

// checked decodes a string and vets it with check.
func (d *decoder) checked(path string, n *yaml.Node, check func(string) error) string {
	s := d.str(path, n)
	if s == "" {
		return ""
	}
	if err := check(s); err != nil {
		d.errorf(n, path, "%v", err)
		return ""
	}
	return s
}

func (d *decoder) port(path string, n *yaml.Node) int {
	port, ok := d.integer(path, n)
	if ok && (port < 1 || port > 65535) {
		d.errorf(n, path, "%d is not a port; give the port the app listens on, 1 to 65535", port)
		return 0
	}
	return port
}

// dir decodes an absolute path to a directory.
func (d *decoder) dir(path string, n *yaml.Node) string {
	s := d.str(path, n)
	if s == "" {
		return ""
	}
	if !filepath.IsAbs(s) {
		d.errorf(n, path, "%s is relative; write the absolute path", quote(s))
		return ""
	}
	if fi, err := d.host.Stat(s); err != nil || !fi.IsDir() {
		d.errorf(n, path, "%s is not a directory; create it or fix the path", s)
		return ""
	}
	return s
}

// listens decodes a list of listen addresses. The result has one entry per item, zero for
// a bad one, so that indexes match the file's.
func (d *decoder) listens(path string, n *yaml.Node) []listen.Addr {
	items, ok := d.sequence(path, n, `a list of addresses, like ["unix:/run/sact/web.sock"]`)
	if !ok {
		return nil
	}
	out := make([]listen.Addr, len(items))
	for i, item := range items {
		out[i] = d.listenItem(index(path, i), item)
	}
	return out
}

var listenItemKeys = []string{"address", "group", "mode", "owner"}

// listenItem decodes "unix:/path", "tcp:host:port", "host:port", or a mapping with the
// address and, for unix sockets, the socket file's mode, owner and group.
func (d *decoder) listenItem(path string, n *yaml.Node) listen.Addr {
	if n.Kind != yaml.MappingNode {
		return d.listenAddr(path, n)
	}
	pairs, _ := d.mapping(path, n)
	var a listen.Addr
	var mode fs.FileMode
	var owner, group string
	var unixOnly []pair
	hasAddress := false
	for _, kv := range pairs {
		at := join(path, kv.key)
		switch kv.key {
		case "address":
			a, hasAddress = d.listenAddr(at, kv.v), true
		case "mode":
			mode = d.mode(at, kv.v)
			unixOnly = append(unixOnly, kv)
		case "owner":
			owner = d.account(at, kv.v, d.host.LookupUser)
			unixOnly = append(unixOnly, kv)
		case "group":
			group = d.account(at, kv.v, d.host.LookupGroup)
			unixOnly = append(unixOnly, kv)
		default:
			d.unknownKey(at, kv, listenItemKeys)
		}
	}
	switch {
	case !hasAddress:
		d.errorf(n, path, "no address; add address: unix:/path/to.sock (or tcp:host:port)")
	case a.Network == "tcp":
		for _, kv := range unixOnly {
			d.errorf(kv.k, join(path, kv.key), "applies only to unix sockets; remove it")
		}
	case a.Network == "unix":
		a.Mode, a.Owner, a.Group = mode, owner, group
	}
	return a
}

// listenAddr decodes one address to listen on, written as a string.
func (d *decoder) listenAddr(path string, n *yaml.Node) listen.Addr {
	s := d.str(path, n)
	if s == "" {
		return listen.Addr{}
	}
	a, err := parseAddr(s)
	if err != nil {
		d.errorf(n, path, "%v", err)
		return listen.Addr{}
	}
	if a.Network == "unix" {
		d.checkSocket(path, n, a.Address)
	}
	return a
}

// mode decodes a file mode written in octal, as a string ("0660") or a number (0660, 660).
func (d *decoder) mode(path string, n *yaml.Node) fs.FileMode {
	s, ok := d.scalar(path, n, `an octal mode like "0660"`)
	if !ok {
		return 0
	}
	digits := strings.TrimPrefix(strings.TrimPrefix(s.Value, "0o"), "0O")
	m, err := strconv.ParseUint(digits, 8, 32)
	switch {
	case s.ShortTag() == "!!bool" || err != nil || m > 0o777:
		d.errorf(s, path, "%s is not a file mode; write octal permission bits like \"0660\"", quote(s.Value))
		return 0
	case m == 0:
		d.errorf(s, path, "mode 0 lets no one but root connect; use \"0660\" (owner and group) or \"0666\" (anyone)")
		return 0
	}
	return fs.FileMode(m)
}

// account decodes a user or group: a name that exists on this host, or a numeric id.
func (d *decoder) account(path string, n *yaml.Node, lookup func(string) error) string {
	s := d.str(path, n)
	if s == "" {
		return ""
	}
	if _, err := strconv.ParseUint(s, 10, 32); err == nil {
		return s
	}
	var unknownUser user.UnknownUserError
	var unknownGroup user.UnknownGroupError
	if err := lookup(s); errors.As(err, &unknownUser) || errors.As(err, &unknownGroup) {
		d.errorf(n, path, "%s does not exist on this host; create it or give a numeric id", quote(s))
		return ""
	}
	return s
}

// upstream decodes where the started app listens: "unix:/path", "tcp:host:port" or
// "host:port".
func (d *decoder) upstream(path string, n *yaml.Node) backend.Addr {
	s := d.str(path, n)
	if s == "" {
		return backend.Addr{}
	}
	a, err := parseAddr(s)
	if err != nil {
		d.errorf(n, path, "%v", err)
		return backend.Addr{}
	}
	switch a.Network {
	case "tcp":
		if _, port, _ := net.SplitHostPort(a.Address); port == "0" {
			d.errorf(n, path, "port 0 is no address to connect to; give the port the app listens on")
			return backend.Addr{}
		}
	case "unix":
		d.checkDir(path, n, filepath.Dir(a.Address), false,
			"create it (it is usually the app's tmp dir, bind-mounted into the container) or fix the path")
	}
	return backend.Addr{Network: a.Network, Address: a.Address}
}

// checkSocket checks that sact can create the unix socket sock: its directory exists and
// is writable, and nothing but a stale socket is in its way.
func (d *decoder) checkSocket(path string, n *yaml.Node, sock string) {
	dir := filepath.Dir(sock)
	if dir == filepath.Dir(DefaultAdminSocket) {
		if _, err := d.host.Stat(dir); errors.Is(err, fs.ErrNotExist) {
			return // sact's run directory: sact serve makes it (after a reboot it is gone)
		}
	}
	if !d.checkDir(path, n, dir, true, "create it (mkdir -p "+dir+") or choose another path") {
		return
	}
	if fi, err := d.host.Lstat(sock); err == nil && fi.Mode().Type() != fs.ModeSocket {
		d.errorf(n, path, "%s exists and is not a socket; move it away or choose another path", sock)
	}
}

// checkDir checks that dir exists (and is writable, if writable). fix says how to make it
// exist.
func (d *decoder) checkDir(path string, n *yaml.Node, dir string, writable bool, fix string) bool {
	fi, err := d.host.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		d.errorf(n, path, "directory %s does not exist; %s", dir, fix)
	case err != nil:
		d.errorf(n, path, "cannot use directory %s: %v", dir, errText(err))
	case !fi.IsDir():
		d.errorf(n, path, "%s is not a directory; choose another path", dir)
	case writable && d.host.Writable(dir) != nil:
		d.errorf(n, path, "directory %s is not writable by sact (uid %d); make it so (chown, or systemd's RuntimeDirectory=) or choose another path", dir, d.host.UID())
	default:
		return true
	}
	return false
}
