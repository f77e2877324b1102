package importer

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	ngx "github.com/tufanbarisyildirim/gonginx/config"
	"github.com/tufanbarisyildirim/gonginx/parser"
)

// maxIncludeDepth bounds includes of includes; nginx itself has no limit, but a config
// that nests deeper than this includes itself.
const maxIncludeDepth = 16

// maxFiles bounds the files one import reads: includes of globs that include each other
// would otherwise multiply at every level.
const maxFiles = 10000

// value is one directive's arguments, unquoted, and where it was written.
type value struct {
	args []string
	at   Pos
}

// Pos is a place in the nginx config.
type Pos struct {
	File string
	Line int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d", p.File, p.Line) }

// scope is what the directives of the enclosing blocks set: nginx inherits most settings
// from http to server to location, and so do Passenger's.
type scope struct {
	vals map[string]value
	// envVars are passenger_env_var's, in order; a block that sets any replaces the
	// enclosing block's, as nginx does for array settings.
	envVars []value
	envOwn  bool
}

func (s scope) child() scope {
	return scope{vals: mapsClone(s.vals), envVars: s.envVars}
}

func mapsClone(m map[string]value) map[string]value {
	out := make(map[string]value, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

func (s scope) get(name string) (value, bool) { v, ok := s.vals[name]; return v, ok }

func (s scope) str(name string) string {
	if v, ok := s.vals[name]; ok && len(v.args) > 0 {
		return v.args[0]
	}
	return ""
}

func (s scope) on(name string) bool { return strings.EqualFold(s.str(name), "on") }

// inherited are the directives the walk keeps in scopes: Passenger's, and those of nginx
// that say where an app is.
func inherited(name string) bool {
	return strings.HasPrefix(name, "passenger_") || name == "rails_env" || name == "rack_env" ||
		name == "root" || name == "server_name" || name == "user"
}

// Server is one server block.
type Server struct {
	At    Pos // of its first directive: the parser knows only where a block ends
	Names []string
	// Listen are its listen directives' arguments.
	Listen [][]string
	// Passenger: some part of it has passenger_enabled on.
	Passenger bool
	block     ngx.IBlock
	scope     scope
	locations []*location
}

// location is a location block of a server, or the server itself (match "").
type location struct {
	match []string
	at    Pos
	scope scope
	block ngx.IBlock
}

// reader walks an nginx config, following includes as nginx does.
type reader struct {
	root string // the directory relative includes are taken from: the main file's
	// virtual are the files of an `nginx -T` dump, by path; nil when reading the disk.
	virtual map[string]string
	order   []string // the dump's files in order; the first is the main one
	files   []string
	servers []*Server
	http    scope // what the http block sets
	// included are the files each include directive brought in, by its place.
	included map[ngx.IDirective][]includedFile
	errs     []error
}

// read parses path and every file it includes.
func read(path string) (*reader, error) {
	r := &reader{root: filepath.Dir(path)}
	ds, err := r.parse(path)
	if err != nil {
		return nil, err
	}
	r.walk(ds, scope{vals: map[string]value{}}, nil, nil, path, 0)
	if len(r.errs) > 0 {
		return nil, errors.Join(r.errs...)
	}
	return r, nil
}

// parse parses one file, without following its includes: walk does, so that it knows
// the file of every directive.
func (r *reader) parse(path string) ([]ngx.IDirective, error) {
	data, ok := r.virtual[path]
	if !ok {
		b, err := readSmall(path)
		if err != nil {
			return nil, fmt.Errorf("%s: cannot read the nginx config: %w", path, errText(err))
		}
		data = string(b)
		if r.virtual == nil && len(r.files) == 0 && isDump(data) {
			r.virtual, r.order = splitDump(data)
			if len(r.virtual) == 0 {
				return nil, fmt.Errorf("%s: looks like the output of nginx -T but holds no \"# configuration file\" section", path)
			}
			path = r.order[0]
			r.root = filepath.Dir(path)
			data = r.virtual[path]
		}
	}
	if len(r.files) >= maxFiles {
		return nil, fmt.Errorf("%s: more than %d files read; do includes include each other?", path, maxFiles)
	}
	r.files = append(r.files, path)
	// The parser accepts a stray "}" at the end; nginx does not.
	if line, what := unbalanced(data); line > 0 {
		return nil, fmt.Errorf("%s:%d: unbalanced braces: %s; check it with nginx -t", path, line, what)
	}
	cfg, err := parser.NewStringParser(data, parser.WithSkipValidDirectivesErr()).Parse()
	if err != nil {
		return nil, fmt.Errorf("%s: the nginx config does not parse: %v; check it with nginx -t", path, err)
	}
	return cfg.GetDirectives(), nil
}

// unbalanced returns the line where braces stop balancing, skipping comments and quotes:
// of a "}" that closes nothing, or of the "{" of the outermost block left open; 0 if
// they balance.
func unbalanced(s string) (int, string) {
	var open []int
	line, quote := 1, byte(0)
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '\n':
			line++
		case quote != 0:
			if c == '\\' {
				i++
			} else if c == quote {
				quote = 0
			}
		case c == '"' || c == '\'':
			quote = c
		case c == '#':
			for i < len(s) && s[i] != '\n' {
				i++
			}
			i--
		case c == '{':
			open = append(open, line)
		case c == '}':
			if len(open) == 0 {
				return line, "this } closes no block"
			}
			open = open[:len(open)-1]
		}
	}
	if len(open) > 0 {
		return open[0], "the block opened here is never closed"
	}
	return 0, ""
}

func errText(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// walk visits directives in their scope: srv is the enclosing server block, loc its
// location (nil at server level).
func (r *reader) walk(ds []ngx.IDirective, sc scope, srv *Server, loc *location, file string, depth int) scope {
	for _, d := range ds {
		name := d.GetName()
		at := Pos{file, d.GetLine()}
		args := params(d)
		switch {
		case name == "include":
			if len(args) == 0 {
				continue
			}
			sc = r.include(d, args[0], at, sc, srv, loc, depth)
		case name == "http" && d.GetBlock() != nil:
			r.http = r.walk(d.GetBlock().GetDirectives(), sc.child(), nil, nil, file, depth)
		case name == "server" && d.GetBlock() != nil && srv == nil:
			s := &Server{block: d.GetBlock()}
			s.At = firstPos(d.GetBlock(), file, at)
			top := &location{at: s.At, block: d.GetBlock()}
			s.locations = append(s.locations, top)
			top.scope = r.walk(d.GetBlock().GetDirectives(), sc.child(), s, top, file, depth)
			s.scope = top.scope
			if v, ok := s.scope.get("server_name"); ok {
				s.Names = v.args
			}
			for _, l := range s.locations {
				if l.scope.on("passenger_enabled") {
					s.Passenger = true
				}
			}
			r.servers = append(r.servers, s)
		case name == "location" && d.GetBlock() != nil && srv != nil:
			l := &location{match: args, at: firstPos(d.GetBlock(), file, at), block: d.GetBlock()}
			srv.locations = append(srv.locations, l)
			l.scope = r.walk(d.GetBlock().GetDirectives(), sc.child(), srv, l, file, depth)
		case name == "listen" && srv != nil && loc == srv.locations[0]:
			srv.Listen = append(srv.Listen, args)
		case name == "passenger_env_var":
			if !sc.envOwn {
				sc.envVars, sc.envOwn = nil, true
			}
			sc.envVars = append(sc.envVars, value{args: args, at: at})
		case inherited(name):
			sc.vals[name] = value{args: args, at: at}
		}
	}
	return sc
}

// include walks the files that pattern names, in the including block's scope.
func (r *reader) include(d ngx.IDirective, pattern string, at Pos, sc scope, srv *Server, loc *location, depth int) scope {
	if depth >= maxIncludeDepth {
		r.errs = append(r.errs, fmt.Errorf("%s: includes nested more than %d deep; does a file include itself?", at, maxIncludeDepth))
		return sc
	}
	if !filepath.IsAbs(pattern) {
		pattern = filepath.Join(r.root, pattern)
	}
	matches, err := r.glob(pattern)
	if err != nil {
		r.errs = append(r.errs, fmt.Errorf("%s: include %s: %v", at, pattern, err))
		return sc
	}
	if len(matches) == 0 && !strings.ContainsAny(pattern, "*?[") {
		r.errs = append(r.errs, fmt.Errorf("%s: include %s: no such file; nginx would refuse this config too (check with nginx -t)", at, pattern))
		return sc
	}
	for _, m := range matches {
		if strings.ContainsAny(pattern, "*?[") && strings.HasPrefix(filepath.Base(m), ".") {
			continue
		}
		if fi, err := os.Stat(m); r.virtual == nil && err == nil && fi.IsDir() {
			continue
		}
		ds, err := r.parse(m)
		if err != nil {
			r.errs = append(r.errs, err)
			continue
		}
		if r.included == nil {
			r.included = map[ngx.IDirective][]includedFile{}
		}
		r.included[d] = append(r.included[d], includedFile{m, ds})
		sc = r.walk(ds, sc, srv, loc, m, depth+1)
	}
	return sc
}

// firstPos is where a block's first directive is, or at if it is empty.
func firstPos(b ngx.IBlock, file string, at Pos) Pos {
	best := 0
	for _, d := range b.GetDirectives() {
		if l := d.GetLine(); l > 0 && (best == 0 || l < best) {
			best = l
		}
	}
	if best == 0 {
		return at
	}
	return Pos{file, best}
}

// params returns a directive's arguments, unquoted.
func params(d ngx.IDirective) []string {
	var out []string
	for _, p := range d.GetParameters() {
		out = append(out, unquote(p.GetValue()))
	}
	if l, ok := d.(*ngx.Location); ok && len(out) == 0 {
		out = slices.DeleteFunc([]string{l.Modifier, l.Match}, func(s string) bool { return s == "" })
	}
	return out
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' || s[0] == '\'') && s[len(s)-1] == s[0] {
		s = s[1 : len(s)-1]
		if s0 := s; strings.Contains(s0, `\`) {
			s = strings.NewReplacer(`\"`, `"`, `\'`, `'`, `\\`, `\`).Replace(s0)
		}
	}
	return s
}

// glob matches pattern against the disk, or the files of an nginx -T dump.
func (r *reader) glob(pattern string) ([]string, error) {
	if r.virtual == nil {
		return filepath.Glob(pattern)
	}
	var out []string
	for _, f := range r.order {
		if ok, err := filepath.Match(pattern, f); err != nil {
			return nil, err
		} else if ok {
			out = append(out, f)
		}
	}
	slices.Sort(out)
	return out, nil
}

const dumpMarker = "# configuration file "

// isDump reports whether data is the output of nginx -T.
func isDump(data string) bool {
	return strings.HasPrefix(data, dumpMarker) || strings.Contains(data, "\n"+dumpMarker) ||
		strings.HasPrefix(data, "nginx: the configuration file")
}

// splitDump splits nginx -T's output into its files: each starts after a line
// "# configuration file PATH:".
func splitDump(data string) (files map[string]string, order []string) {
	files = map[string]string{}
	var cur string
	var b strings.Builder
	flush := func() {
		if cur != "" {
			files[cur] = b.String()
		}
		b.Reset()
	}
	for _, line := range strings.SplitAfter(data, "\n") {
		if rest, ok := strings.CutPrefix(line, dumpMarker); ok {
			flush()
			cur = strings.TrimSuffix(strings.TrimSpace(rest), ":")
			order = append(order, cur)
			continue
		}
		if cur != "" {
			b.WriteString(line)
		}
	}
	flush()
	return files, order
}

type includedFile struct {
	file string
	ds   []ngx.IDirective
}
