package importer

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	ngx "github.com/tufanbarisyildirim/gonginx/config"
)

// The ports the generated images' servers listen on, where sact relays to them.
const (
	pumaPort = 9292
	nodePort = 3000
	wsgiPort = 8000
)

// File is one file an import writes, relative to the output directory.
type File struct {
	Path string
	Data []byte
	Mode fs.FileMode
}

// Outcome says what Write did with one file.
type Outcome struct {
	Path string
	// What is "created", "updated", "unchanged", or "kept": the file was edited by hand
	// and was left alone; Diff is then what the import would have written instead
	// (also written to Path+".new").
	What string
	Diff string
}

// headerPrefix starts the first line of every generated file but REPORT.md: the digest of
// the rest tells a later import whether a person edited it.
const headerPrefix = "# sact import: "

func header(body []byte) string {
	sum := sha256.Sum256(body)
	return headerPrefix + "written by sact import; edit freely, a later import leaves an edited file alone (digest " + hex.EncodeToString(sum[:8]) + ")\n"
}

// edited reports whether a file written by an import was changed since: its header's
// digest no longer matches the rest, or it has no header at all.
func edited(data []byte) bool {
	first, rest, ok := strings.Cut(string(data), "\n")
	if !ok || !strings.HasPrefix(first, headerPrefix) {
		return true
	}
	return header([]byte(rest)) != first+"\n"
}

// Files returns every file the import writes.
func (res *Result) Files() []File {
	var out []File
	add := func(path string, mode fs.FileMode, body string) {
		b := []byte(body)
		if !generatedOnly(path) {
			b = append([]byte(header(b)), b...)
		}
		out = append(out, File{Path: path, Data: b, Mode: mode})
	}
	add("sact.yaml", 0o644, res.mainConfig())
	for _, a := range res.Apps {
		add("apps.d/"+a.Name+".yaml", 0o644, res.appConfig(a))
		if len(a.Secrets) > 0 {
			var b strings.Builder
			b.WriteString("# Variables of " + a.Name + " that look like credentials, moved out of the nginx config.\n")
			for _, k := range sortedKeys(a.Secrets) {
				fmt.Fprintf(&b, "%s=%s\n", k, dotenvQuote(a.Secrets[k]))
			}
			add("apps.d/"+a.Name+".env", 0o600, b.String())
		}
		df, ignore := res.dockerfile(a)
		add("build/"+a.Name+"/Dockerfile", 0o644, df)
		add("build/"+a.Name+"/.dockerignore", 0o644, ignore)
		bj, _ := json.MarshalIndent(res.buildSpec(a), "", "  ")
		add("build/"+a.Name+"/build.json", 0o644, string(bj)+"\n")
	}
	for _, g := range res.siteGroups() {
		add("nginx/"+g.name+".conf", 0o644, res.nginxSite(g))
	}
	add("REPORT.md", 0o644, res.Markdown())
	return out
}

// Write writes the import's files under dir. A file that an earlier import wrote and a
// person edited since is kept; the new version goes next to it as .new, and the outcome
// holds the difference.
func (res *Result) Write(dir string) ([]Outcome, error) {
	var outs []Outcome
	res.out = dir
	for _, f := range res.Files() {
		path := filepath.Join(dir, f.Path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return outs, err
		}
		o := Outcome{Path: f.Path, What: "created"}
		old, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return outs, err
		case string(old) == string(f.Data):
			o.What = "unchanged"
		case !generatedOnly(f.Path) && edited(old):
			o.What, o.Diff = "kept", diff(stripHeader(old), stripHeader(f.Data))
			path += ".new"
		default:
			o.What = "updated"
		}
		if o.What != "unchanged" {
			if err := writeFile(path, f.Data, f.Mode); err != nil {
				return outs, err
			}
		}
		outs = append(outs, o)
	}
	return outs, nil
}

// generatedOnly are the files an import always rewrites: its report, and what sact build
// reads (JSON has no comments for a header).
func generatedOnly(path string) bool {
	return strings.HasSuffix(path, ".md") || strings.HasSuffix(path, ".json")
}

func stripHeader(b []byte) string {
	s := string(b)
	if first, rest, ok := strings.Cut(s, "\n"); ok && strings.HasPrefix(first, headerPrefix) {
		return rest
	}
	return s
}

// writeFile replaces path atomically, with mode.
func writeFile(path string, data []byte, mode fs.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".sact-import-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func (res *Result) mainConfig() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# The sact config for the Passenger apps of %s. Each app is in apps.d/.\n", res.Main)
	if res.MaxPool > 0 {
		fmt.Fprintf(&b, "pool:\n  max_running: %d   # passenger_max_pool_size\n", res.MaxPool)
	}
	b.WriteString("defaults:\n")
	if res.IdleAt.File != "" {
		fmt.Fprintf(&b, "  idle: %s   # passenger_pool_idle_time, %s\n", res.Idle, res.IdleAt)
	} else {
		fmt.Fprintf(&b, "  idle: %s   # Passenger's default passenger_pool_idle_time\n", res.Idle)
	}
	b.WriteString("include:\n  - apps.d/*.yaml\n")
	return b.String()
}

func (res *Result) socket(a *App) string { return filepath.Join(res.opts.SocketDir, a.Name+".sock") }

func (res *Result) image(a *App) string { return res.opts.ImagePrefix + "/" + a.Name + ":imported" }

// mode is how sact reaches the app: "handoff" (unicorn takes sact's socket), or the
// port sact relays to.
func (a *App) port() int {
	switch {
	case a.Type == "node":
		return nodePort
	case a.Type == "python":
		return wsgiPort
	case a.Server == "unicorn":
		return 0
	}
	return pumaPort
}

func (res *Result) appConfig(a *App) string {
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f, args...) }
	w("# %s: from %s (server_name %s)", a.Name, a.At, strings.Join(a.Site.Names, " "))
	if a.BaseURI != "" {
		w(", under %s", a.BaseURI)
	}
	w("\n")
	for _, i := range a.Info {
		w("# %s\n", i)
	}
	for _, n := range a.Notes {
		w("# NEEDS A PERSON: %s\n", n)
	}
	w("apps:\n  %s:\n", a.Name)
	w("    image: %s\n", res.image(a))
	w("    listen:\n      - {address: %q, mode: \"0660\", group: %s}\n", "unix:"+res.socket(a), res.Group)
	if p := a.port(); p == 0 {
		w("    handoff: true   # unicorn takes the listening socket from sact (LISTEN_FDS)\n")
	} else {
		w("    port: %d\n", p)
	}
	if a.UID >= 0 {
		w("    user: \"%d:%d\"   # %s\n", a.UID, a.GID, a.Account)
	}
	w("    volumes:   # the code read-only, at the path it has on the host; what the app writes, writable\n")
	for _, v := range a.volumes() {
		w("      - %s\n", strconv.Quote(v))
	}
	if len(a.Env) > 0 {
		w("    env:\n")
		for _, k := range sortedKeys(a.Env) {
			w("      %s: %s\n", k, strconv.Quote(a.Env[k]))
		}
	}
	if len(a.Secrets) > 0 {
		w("    env_file: %s.env   # variables that look like credentials\n", a.Name)
	}
	if a.hasTmp() {
		w("    restart_file: %q   # touch it to restart the app, as with Passenger\n", filepath.Join(a.Dir, "tmp", "restart.txt"))
	}
	if a.MinInstances > 0 {
		w("    min_running: 1   # passenger_min_instances %d\n", a.MinInstances)
	}
	if a.StartTimeout > 0 {
		w("    start_timeout: %s   # passenger_start_timeout\n", a.StartTimeout)
	} else {
		w("    start_timeout: 90s   # Passenger's default passenger_start_timeout\n")
	}
	return b.String()
}

// volumes mounts the code read-only where it is on the host, so that capistrano's
// current symlink and its links into shared/ resolve in the container as they do on the
// host, and the directories the app writes to writable: all of shared/ for capistrano,
// else log/, tmp/ and public/system/ where they exist.
func (a *App) volumes() []string {
	if a.DeployTo != "" {
		return []string{a.DeployTo + ":" + a.DeployTo + ":ro", filepath.Join(a.DeployTo, "shared") + ":" + filepath.Join(a.DeployTo, "shared")}
	}
	vs := []string{a.Dir + ":" + a.Dir + ":ro"}
	for _, sub := range []string{"log", "tmp", "public/system"} {
		p := filepath.Join(a.Dir, sub)
		if fi, err := os.Stat(p); err == nil && fi.IsDir() {
			vs = append(vs, p+":"+p)
		}
	}
	return vs
}

// BuildSpec is what sact build needs to build an app's image: build/NAME/build.json.
type BuildSpec struct {
	App   string `json:"app"`
	Image string `json:"image"`
	// Context is the app directory the Dockerfile's COPY takes files from, through the
	// .dockerignore next to the Dockerfile.
	Context string `json:"context"`
	// Base is the default of the Dockerfile's BASE argument, like ruby:2.7, which
	// sact build --base ruby:2.7=IMAGE replaces.
	Base string `json:"base"`
}

func (res *Result) buildSpec(a *App) BuildSpec {
	return BuildSpec{App: a.Name, Image: res.image(a), Context: a.Dir, Base: a.base()}
}

func (a *App) base() string {
	switch a.Type {
	case "node":
		return "node:" + cmpOr(a.Node, "lts")
	case "python":
		return "python:" + cmpOr(a.Python, "3")
	}
	return "ruby:" + cmpOr(rubyMinor(a.Ruby), "UNKNOWN")
}

// dockerfile returns the app's Dockerfile and .dockerignore.
//
// The image holds the runtime and the app's dependencies, not its code: the code is
// mounted from the host (volumes). So a capistrano deploy keeps working as it did with
// Passenger: it makes a new release, moves current and touches tmp/restart.txt, and sact
// recreates the container, which mounts the new release. log/, tmp/ and public/system are
// links into shared/ that resolve in the container too, as the tree is mounted at the
// host's path. Only a changed Gemfile.lock (or package.json) needs `sact build` again.
func (res *Result) dockerfile(a *App) (string, string) {
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f, args...) }
	w("# The image of %s: %s and the dependencies of %s. The code is mounted from the host\n", a.Name, a.base(), a.Dir)
	w("# at the same path (see apps.d/%s.yaml): rebuild with `sact build %s` when the lockfile changes.\n", a.Name, a.Name)
	// Not under /sact: sact mounts its handoff shim there.
	w("ARG BASE=%s\nFROM ${BASE}\n", a.base())
	switch a.Type {
	case "node":
		w("WORKDIR /opt/sact-import/deps\nCOPY package*.json ./\nRUN npm ci --omit=dev || npm install --omit=dev\n")
		w("ENV NODE_PATH=/opt/sact-import/deps/node_modules PORT=%d NODE_ENV=%s\n", nodePort, a.Env["NODE_ENV"])
		w("WORKDIR %s\nEXPOSE %d\nCMD [\"node\", %q]\n", a.Dir, nodePort, a.StartupFile)
		return b.String(), "*\n!package.json\n!package-lock.json\n"
	case "python":
		w("WORKDIR /opt/sact-import/deps\nCOPY requirements.txt* ./\nRUN if [ -f requirements.txt ]; then pip install -r requirements.txt; fi && pip install gunicorn\n")
		w("WORKDIR %s\nEXPOSE %d\nCMD [\"gunicorn\", \"-b\", \"0.0.0.0:%d\", \"passenger_wsgi:application\"]\n", a.Dir, wsgiPort, wsgiPort)
		return b.String(), "*\n!requirements.txt\n"
	}
	env := cmpOr(a.Env["RACK_ENV"], "production")
	// BUNDLE_APP_CONFIG keeps the bundler settings in the image: the app's own
	// .bundle/config (capistrano's points at shared/bundle, gems built for the host's
	// Ruby) is not read.
	w("ENV BUNDLE_APP_CONFIG=/usr/local/bundle/config BUNDLE_WITHOUT=development:test RACK_ENV=%s\n", env)
	w("WORKDIR /opt/sact-import/bundle\n")
	if a.Lockfile {
		w("COPY Gemfile Gemfile.lock ./\n")
	} else {
		w("COPY Gemfile ./\n")
	}
	if a.Bundler != "" {
		w("RUN gem list -i bundler -v %s >/dev/null || gem install bundler -v %s\n", a.Bundler, a.Bundler)
	}
	w("RUN bundle check >/dev/null 2>&1 || bundle install --jobs 4\n")
	cmd := ""
	switch a.Server {
	case "unicorn":
		// unicorn takes the sockets of LISTEN_FDS; --keep-file-descriptors keeps them
		// open across bundle exec.
		cmd = fmt.Sprintf(`["bundle", "exec", "--keep-file-descriptors", "unicorn", "-E", %q, %q]`, env, a.StartupFile)
	case "puma":
		cmd = fmt.Sprintf(`["bundle", "exec", "puma", "-b", "tcp://0.0.0.0:%d", "-e", %q, %q]`, pumaPort, env, a.StartupFile)
	default:
		w("RUN gem install puma -v '< 7'   # not in the lockfile: added outside the bundle\n")
		cmd = fmt.Sprintf(`["puma", "-b", "tcp://0.0.0.0:%d", "-e", %q, %q]`, pumaPort, env, a.StartupFile)
	}
	w("WORKDIR %s\n", a.Dir)
	if p := a.port(); p > 0 {
		w("EXPOSE %d\n", p)
	}
	w("CMD %s\n", cmd)
	return b.String(), "*\n!Gemfile\n!Gemfile.lock\n!.ruby-version\n"
}

// siteGroup is the server blocks one nginx file replaces, and the apps they serve: an
// app's server blocks (one per port, say) with every app under a path of theirs.
type siteGroup struct {
	name    string
	servers []*Server
	apps    []*App
}

// siteGroups returns the nginx files to write, one per site.
func (res *Result) siteGroups() []*siteGroup {
	var groups []*siteGroup
	of := map[*Server]*siteGroup{}
	for _, a := range res.Apps {
		g := of[a.Site]
		if g == nil {
			g = &siteGroup{name: a.Name, servers: a.Sites}
			for _, s := range a.Sites {
				of[s] = g
			}
			groups = append(groups, g)
		}
		g.apps = append(g.apps, a)
	}
	return groups
}

func namedLocation(a *App) string {
	return "@sact_" + strings.NewReplacer(".", "_", "-", "_").Replace(a.Name)
}

// nginxSite returns a site's server blocks with Passenger's directives replaced: what
// exists under the document root is served by nginx, the rest goes to sact's socket.
func (res *Result) nginxSite(g *siteGroup) string {
	var b strings.Builder
	var names []string
	for _, a := range g.apps {
		names = append(names, a.Name)
	}
	fmt.Fprintf(&b, "# nginx for %s: replaces the server block(s) at %s.\n", strings.Join(names, ", "), joinPos(g.servers))
	b.WriteString("# Static files are served by nginx from the document root; the rest goes to sact.\n")
	for _, s := range g.servers {
		d := dumper{res: res, b: &b, byBlock: map[ngx.IBlock]*App{}}
		var top *App
		for _, a := range g.apps {
			if a.loc == a.Site.locations[0] {
				top = a
			} else {
				d.byBlock[a.loc.block] = a
			}
		}
		d.top = top
		fmt.Fprintf(&b, "\n# was %s\nserver {\n", s.At)
		hasRoot := false
		for _, l := range s.locations[1:] {
			if len(l.match) == 1 && l.match[0] == "/" {
				hasRoot = true
			}
		}
		d.block(s.block.GetDirectives(), 1, top)
		if top != nil && !hasRoot {
			fmt.Fprintf(&b, "    location / {\n        try_files $uri %s;\n    }\n", namedLocation(top))
		}
		for _, a := range g.apps {
			fmt.Fprintf(&b, "    location %s {\n", namedLocation(a))
			fmt.Fprintf(&b, "        proxy_pass http://unix:%s:;\n", res.socket(a))
			b.WriteString("        proxy_set_header Host $host;\n")
			b.WriteString("        proxy_set_header X-Real-IP $remote_addr;\n")
			b.WriteString("        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;\n")
			b.WriteString("        proxy_set_header X-Forwarded-Proto $scheme;\n")
			b.WriteString("        proxy_redirect off;\n")
			b.WriteString("    }\n")
		}
		b.WriteString("}\n")
	}
	return b.String()
}

func joinPos(ss []*Server) string {
	var out []string
	for _, s := range ss {
		out = append(out, s.At.String())
	}
	return strings.Join(out, ", ")
}

// dumper writes nginx directives back, Passenger's left out.
type dumper struct {
	res *Result
	b   *strings.Builder
	// top is the app of the server as a whole, nil if it has none; byBlock the apps of
	// its locations.
	top     *App
	byBlock map[ngx.IBlock]*App
}

// contentHandlers are the directives that make a location answer by itself.
var contentHandlers = []string{"proxy_pass", "fastcgi_pass", "uwsgi_pass", "scgi_pass", "grpc_pass", "return", "try_files", "memcached_pass"}

func passengerDirective(name string) bool {
	return strings.HasPrefix(name, "passenger_") || name == "rails_env" || name == "rack_env"
}

// block writes ds at depth; app is the app that requests in this block go to when no
// file matches, nil for none.
func (d *dumper) block(ds []ngx.IDirective, depth int, app *App) {
	ind := strings.Repeat("    ", depth)
	for _, x := range ds {
		name := x.GetName()
		if passengerDirective(name) {
			continue
		}
		if name == "include" {
			if inc := d.res.included[x]; inc != nil && containsPassenger(inc) {
				for _, f := range inc {
					fmt.Fprintf(d.b, "%s# from %s (included; Passenger's directives left out)\n", ind, f.file)
					d.block(f.ds, depth, app)
				}
				continue
			}
		}
		fmt.Fprintf(d.b, "%s%s", ind, name)
		for _, p := range x.GetParameters() {
			d.b.WriteString(" " + p.GetValue())
		}
		if l, ok := x.(*ngx.Location); ok && len(x.GetParameters()) == 0 {
			fmt.Fprintf(d.b, " %s %s", l.Modifier, l.Match)
		}
		blk := x.GetBlock()
		if blk == nil {
			d.b.WriteString(";\n")
			continue
		}
		d.b.WriteString(" {\n")
		sub := app
		if name == "location" {
			sub = d.locationApp(blk, app)
			if sub != nil && !slices.ContainsFunc(blk.GetDirectives(), func(y ngx.IDirective) bool { return slices.Contains(contentHandlers, y.GetName()) }) {
				fmt.Fprintf(d.b, "%s    try_files $uri %s;\n", ind, namedLocation(sub))
			}
		}
		d.block(blk.GetDirectives(), depth+1, sub)
		fmt.Fprintf(d.b, "%s}\n", ind)
	}
}

// locationApp returns the app a location's requests go to: its own, none if it turns
// Passenger off, the server's if it turns it on, else the enclosing block's.
func (d *dumper) locationApp(blk ngx.IBlock, enclosing *App) *App {
	if a := d.byBlock[blk]; a != nil {
		return a
	}
	for _, y := range blk.GetDirectives() {
		if y.GetName() == "passenger_enabled" {
			if len(y.GetParameters()) > 0 && strings.EqualFold(y.GetParameters()[0].GetValue(), "on") {
				return d.top
			}
			return nil
		}
	}
	return enclosing
}

func containsPassenger(files []includedFile) bool {
	var walk func([]ngx.IDirective) bool
	walk = func(ds []ngx.IDirective) bool {
		for _, x := range ds {
			if passengerDirective(x.GetName()) || (x.GetBlock() != nil && walk(x.GetBlock().GetDirectives())) {
				return true
			}
		}
		return false
	}
	for _, f := range files {
		if walk(f.ds) {
			return true
		}
	}
	return false
}

// dotenvQuote quotes a value for an env file when it needs it.
func dotenvQuote(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\"'#\\\n$") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`, "$", `\$`)
	return `"` + r.Replace(v) + `"`
}

// hasTmp reports whether the app has the tmp/ that restart.txt goes in.
func (a *App) hasTmp() bool {
	fi, err := os.Stat(filepath.Join(a.Dir, "tmp"))
	return err == nil && fi.IsDir()
}
