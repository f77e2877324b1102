package config

import (
	"bytes"
	"errors"
	"io"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// parser reads one file: decode every section, apply defaults, validate.
type parser struct {
	d   decoder
	ks  kindSet
	cfg *Config
	// defaults are the settings under defaults: with a known key.
	defaults []pair
	apps     []*appSrc
	// Where some settings are, for messages about clashes; zero pairs if not set.
	adminSocket, adminListen, http, httpListen, httpDefault pair
	// appKey is where each app is named, for an app defined in two files.
	appKey map[string]*yaml.Node
}

// appSrc is an app with the settings that make it up, own and inherited, kept for
// validation and its messages.
type appSrc struct {
	*App
	key *yaml.Node
	set map[string]setting
	// kindIdx is the app's kind in parser.ks, noKind if it has none; App.kind is nil too
	// when it matches several (kindIdx is the last of them then).
	kindIdx int
}

// setting is one app setting as written in the file.
type setting struct {
	pair
	inherited bool // from defaults:
}

func (s *appSrc) has(key string) bool { _, ok := s.set[key]; return ok }

func newParser(path string, opts Options) *parser {
	return &parser{d: decoder{file: path, host: opts.host()}, ks: newKindSet(opts.Kinds)}
}

var topKeys = []string{"admin", "apps", "defaults", "http", "include", "pool"}

func (p *parser) parse(data []byte) *Config {
	root := p.document(data)
	if root == nil {
		return nil
	}
	p.cfg = &Config{File: p.d.file}
	top, ok := p.d.mapping("", root)
	if !ok {
		return nil
	}
	sections := make(map[string]pair)
	for _, kv := range top {
		if slices.Contains(topKeys, kv.key) {
			sections[kv.key] = kv
			continue
		}
		if strings.HasPrefix(kv.key, "x-") {
			continue // compose's convention: a place for anchors, ignored
		}
		msg := "unknown key; the top level has admin, defaults, pool, http, include and apps (and x- keys, ignored)"
		switch s := suggest(kv.key, topKeys); {
		case s != "":
			msg = "unknown key; did you mean " + strconv.Quote(s) + "?"
		case p.ks.known(kv.key):
			msg = "unknown key; app settings go under apps.NAME, or under defaults: for every app"
		case p.looksLikeApp(kv.v):
			msg = "unknown key; apps go under apps:"
		}
		p.d.errorf(kv.k, kv.key, "%s", msg)
	}
	// defaults first: apps inherit them.
	if kv, ok := sections["defaults"]; ok {
		p.decodeDefaults(kv)
	}
	if kv, ok := sections["admin"]; ok {
		p.decodeAdmin(kv)
	}
	if kv, ok := sections["pool"]; ok {
		p.decodePool(kv)
	}
	if kv, ok := sections["http"]; ok {
		p.decodeHTTP(kv)
	}
	var includes []included
	if kv, ok := sections["include"]; ok {
		includes = p.decodeInclude(kv)
	}
	hasApps := false
	if kv, ok := sections["apps"]; ok {
		p.decodeApps(kv)
		hasApps = true
	}
	for _, inc := range includes {
		if inc.apps.k != nil {
			p.decodeApps(inc.apps)
			hasApps = true
		}
	}
	switch {
	case !hasApps && len(includes) > 0:
		p.d.errorf(nil, "", "no apps: in this file nor in the %d included file(s); add an apps: section with at least one app", len(includes))
	case !hasApps && sections["include"].k != nil:
		p.d.errorf(sections["include"].k, "include", "no apps; the patterns match no file, and this file has no apps: section")
	case !hasApps:
		p.d.errorf(nil, "", "no apps; add an apps: section with at least one app")
	}
	p.cfg.Files = append(p.cfg.Files, p.d.read...)
	slices.Sort(p.cfg.Files)
	p.cfg.Files = slices.Compact(p.cfg.Files)
	slices.SortFunc(p.apps, func(a, b *appSrc) int { return strings.Compare(a.Name, b.Name) })
	for _, s := range p.apps {
		p.cfg.Apps = append(p.cfg.Apps, s.App)
	}
	applyDefaults(p.cfg)
	p.validate()
	return p.cfg
}

// document returns the file's one YAML document, or nil after reporting why there is none.
func (p *parser) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			p.d.errorf(nil, "", "the file is empty; add an apps: section with at least one app")
		} else {
			p.syntaxError(err, data)
		}
		return nil
	}
	var next yaml.Node
	if err := dec.Decode(&next); err != nil && !errors.Is(err, io.EOF) {
		p.syntaxError(err, data)
		return nil
	} else if err == nil && len(next.Content) > 0 && !isNull(next.Content[0]) {
		p.d.errorf(next.Content[0], "", "a second YAML document (after ---); sact reads one, so put everything in the first")
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) == 0 || isNull(doc.Content[0]) {
		p.d.errorf(nil, "", "the file is empty; add an apps: section with at least one app")
		return nil
	}
	return doc.Content[0]
}

var yamlError = regexp.MustCompile(`^yaml: (?:line (\d+): )?(.*)$`)

// parserProblems are the messages of the YAML parser proper, as opposed to its scanner.
// The library reports their lines counted from 0 (and leaves out line 0), where it counts
// the scanner's from 1.
var parserProblems = []string{
	"did not find expected ',' or ']'",
	"did not find expected ',' or '}'",
	"did not find expected '-' indicator",
	"did not find expected <document start>",
	"did not find expected <stream-start>",
	"did not find expected key",
	"did not find expected node content",
	"found duplicate %TAG directive",
	"found duplicate %YAML directive",
	"found incompatible YAML document",
	"found undefined tag handle",
}

// syntaxError reports an error of the YAML parser, at its line.
func (p *parser) syntaxError(err error, data []byte) {
	e := &Error{File: p.d.file, Msg: "invalid YAML: " + err.Error()}
	if m := yamlError.FindStringSubmatch(err.Error()); m != nil {
		e.Line, _ = strconv.Atoi(m[1])
		e.Msg = "invalid YAML: " + m[2]
		if slices.Contains(parserProblems, m[2]) {
			e.Line++
		}
	}
	lines := bytes.Split(data, []byte("\n"))
	switch {
	case e.Line > 0 && e.Line <= len(lines) && bytes.Contains(lines[e.Line-1], []byte("\t")):
		e.Msg += "; indent with spaces, YAML does not allow tabs"
	case strings.Contains(e.Msg, "anchor"):
		e.Msg += "; define an anchor (&name) before its first use (*name)"
	default:
		e.Msg += "; check the indentation and quoting here and on the lines above"
	}
	p.d.errs = append(p.d.errs, e)
}

// looksLikeApp reports whether n is a mapping with an app's essential key.
func (p *parser) looksLikeApp(n *yaml.Node) bool {
	if n.Kind != yaml.MappingNode {
		return false
	}
	for i := 0; i < len(n.Content); i += 2 {
		if slices.Contains(p.ks.selects, n.Content[i].Value) {
			return true
		}
	}
	return false
}

// unknownKey reports a key that is none of known, suggesting the likely one.
func (d *decoder) unknownKey(path string, kv pair, known []string) {
	switch s := suggest(kv.key, known); {
	case s != "":
		d.errorf(kv.k, path, "unknown key; did you mean %q?", s)
	case len(known) <= 6:
		d.errorf(kv.k, path, "unknown key; use %s", strings.Join(known, ", "))
	default:
		d.errorf(kv.k, path, "unknown key; remove it or check its spelling")
	}
}

// section decodes a mapping of settings, each with its own decode function.
func (p *parser) section(path string, n *yaml.Node, keys map[string]func(path string, kv pair)) {
	pairs, _ := p.d.mapping(path, n)
	known := slices.Sorted(maps.Keys(keys))
	for _, kv := range pairs {
		at := join(path, kv.key)
		decode, ok := keys[kv.key]
		if !ok {
			p.d.unknownKey(at, kv, known)
			continue
		}
		p.d.unsupported(at, at, kv)
		decode(at, kv)
	}
}

func (p *parser) decodeAdmin(section pair) {
	a := &p.cfg.Admin
	p.section("admin", section.v, map[string]func(string, pair){
		"socket": func(path string, kv pair) {
			s := p.d.str(path, kv.v)
			if s == "" {
				return
			}
			s = strings.TrimPrefix(s, "unix:")
			if !strings.HasPrefix(s, "/") {
				p.d.errorf(kv.v, path, "%s is relative; write an absolute path, like /run/sact/admin.sock", quote(s))
				return
			}
			addr, err := parseAddr("unix:" + s)
			if err != nil {
				p.d.errorf(kv.v, path, "%v", err)
				return
			}
			p.d.checkSocket(path, kv.v, addr.Address)
			a.Socket, p.adminSocket = addr.Address, kv
		},
		"listen": func(path string, kv pair) {
			s := p.d.str(path, kv.v)
			if s == "" {
				return
			}
			host, port, err := net.SplitHostPort(strings.TrimPrefix(s, "tcp:"))
			if n, perr := strconv.Atoi(port); err != nil || perr != nil || n < 0 || n > 65535 {
				p.d.errorf(kv.v, path, "%s is not a TCP address; write host:port, like 127.0.0.1:9180", quote(s))
				return
			}
			a.Listen, p.adminListen = net.JoinHostPort(host, port), kv
		},
		"group": func(path string, kv pair) { a.Group = p.d.account(path, kv.v, p.d.host.LookupGroup) },
		"hosts": func(path string, kv pair) { a.Hosts = p.d.stringList(path, kv.v, checkAdminHost) },
		"token_file": func(path string, kv pair) {
			s := p.d.str(path, kv.v)
			if s == "" {
				return
			}
			if !filepath.IsAbs(s) {
				p.d.errorf(kv.v, path, "%s is relative; write an absolute path, like /etc/sact/admin.token", quote(s))
				return
			}
			a.TokenFile = filepath.Clean(s)
		},
	})
}

func (p *parser) decodePool(section pair) {
	pool := &p.cfg.Pool
	p.section("pool", section.v, map[string]func(string, pair){
		"max_running":       func(path string, kv pair) { pool.MaxRunning = p.d.atLeast(path, kv.v, 0) },
		"start_concurrency": func(path string, kv pair) { pool.StartConcurrency = p.d.atLeast(path, kv.v, 1) },
		"memory_budget":     func(path string, kv pair) { pool.MemoryBudget = p.d.size(path, kv.v) },
	})
}

func (p *parser) decodeHTTP(section pair) {
	p.http = section
	h := &p.cfg.HTTP
	p.section("http", section.v, map[string]func(string, pair){
		"listen": func(path string, kv pair) {
			h.Listen, p.httpListen = p.d.listens(path, kv.v), kv
		},
		"trusted_proxies": func(path string, kv pair) {
			for i, s := range p.d.stringList(path, kv.v, nil) {
				if s == "unix" {
					h.TrustUnix = true // every unix socket peer, whatever the mode
					continue
				}
				pfx, err := netip.ParsePrefix(s)
				if err != nil {
					a, aerr := netip.ParseAddr(s)
					if aerr != nil {
						p.d.errorf(kv.v, index(path, i), "%s is not an address, CIDR or unix; write 10.0.0.0/8, 127.0.0.1 or unix (every unix socket peer)", quote(s))
						continue
					}
					pfx = netip.PrefixFrom(a, a.BitLen())
				}
				h.TrustedProxies = append(h.TrustedProxies, pfx.Masked())
			}
		},
		"default_app":         func(path string, kv pair) { h.DefaultApp, p.httpDefault = p.d.str(path, kv.v), kv },
		"max_header_bytes":    func(path string, kv pair) { h.MaxHeaderBytes = p.d.size(path, kv.v) },
		"read_header_timeout": func(path string, kv pair) { h.ReadHeaderTimeout = p.d.duration(path, kv.v) },
		"idle_timeout":        func(path string, kv pair) { h.IdleTimeout = p.d.duration(path, kv.v) },
	})
	if p.httpListen.k == nil {
		p.d.errorf(section.k, "http", "no listen addresses; add listen: [\":80\"], or remove http")
	}
}

func (p *parser) decodeDefaults(section pair) {
	pairs, _ := p.d.mapping("defaults", section.v)
	var scratch App // defaults are decoded here once for their problems; apps decode them again
	kindKeys := make(map[string]setting)
	for _, kv := range pairs {
		path := join("defaults", kv.key)
		if !p.ks.known(kv.key) {
			p.d.unknownKey(path, kv, p.ks.names)
			continue
		}
		p.d.unsupported(kv.key, path, kv)
		if decode := appKeys[kv.key]; decode != nil {
			decode(&p.d, path, kv.v, &scratch)
		} else {
			kindKeys[kv.key] = setting{pair: kv}
		}
		p.defaults = append(p.defaults, kv)
	}
	p.decodeKinds("defaults", kindKeys, nil, noKind, nil)
}

func (p *parser) decodeApps(section pair) {
	apps, ok := p.d.mapping("apps", section.v)
	if ok && len(apps) == 0 {
		p.d.errorf(section.k, "apps", "no apps; add at least one, like web: {image: nginx, listen: [\"tcp:127.0.0.1:8080\"], port: 80}")
	}
	if p.appKey == nil {
		p.appKey = make(map[string]*yaml.Node)
	}
	for _, kv := range apps {
		path := join("apps", kv.key)
		if err := checkAppName(kv.key); err != nil {
			p.d.errorf(kv.k, path, "%v", err)
		}
		if first, dup := p.appKey[kv.key]; dup {
			p.d.errorf(kv.k, path, "the app is defined twice, here and at %s; rename or remove one", p.d.where(first))
			continue
		}
		p.appKey[kv.key] = kv.k
		own, ok := p.d.mapping(path, kv.v)
		if !ok {
			continue
		}
		s := &appSrc{App: &App{Name: kv.key, Line: kv.k.Line}, key: kv.k, set: make(map[string]setting)}
		if f := p.d.fileOf(kv.k); f != p.d.file {
			s.File = f
		}
		for _, o := range own {
			if !p.ks.known(o.key) {
				p.d.unknownKey(join(path, o.key), o, p.ks.names)
				continue
			}
			p.d.unsupported(o.key, join(path, o.key), o)
			s.set[o.key] = setting{pair: o}
		}
		p.inherit(s)
		for _, o := range own {
			if st, ok := s.set[o.key]; ok && !st.inherited && appKeys[o.key] != nil {
				appKeys[o.key](&p.d, join(path, o.key), o.v, s.App)
			}
		}
		p.d.mute = true // reported under defaults already
		for _, kv := range p.defaults {
			if st, ok := s.set[kv.key]; ok && st.inherited && appKeys[kv.key] != nil {
				appKeys[kv.key](&p.d, join(path, kv.key), kv.v, s.App)
			}
		}
		p.d.mute = false
		p.decodeKinds(path, s.set, s, s.kindIdx, &s.Run)
		p.mergeEnv(s)
		p.apps = append(p.apps, s)
	}
}

// mergeEnv makes the app's environment: defaults.env, then the app's env_file over it,
// then the app's own env over both. (Before include: and env_file:, an app's env
// replaced defaults.env entirely, which lost RACK_ENV and the like.)
func (p *parser) mergeEnv(s *appSrc) {
	if !p.ks.applies("env", s.kindIdx) {
		return
	}
	merged := make(map[string]string)
	if st, ok := s.set["env"]; ok && !st.inherited {
		for _, kv := range p.defaults {
			if kv.key == "env" {
				var scratch App
				p.d.mute = true // reported under defaults already
				appKeys["env"](&p.d, "defaults.env", kv.v, &scratch)
				p.d.mute = false
				maps.Copy(merged, scratch.Run.Env)
			}
		}
		maps.Copy(merged, s.envFile)
		maps.Copy(merged, s.Run.Env)
	} else {
		maps.Copy(merged, s.Run.Env) // defaults.env, inherited
		maps.Copy(merged, s.envFile)
	}
	s.Run.Env = nil
	if len(merged) > 0 {
		s.Run.Env = merged
	}
}

// inherit adds to s the settings of defaults: that s does not set itself and that apply
// to it:
//
//   - labels set by the app replace the default's entirely; env is merged instead
//     (mergeEnv): the app's keys win over its env_file's, which win over defaults.env;
//   - the keys that choose a kind (image, container, command: KindInfo.Select) are one
//     choice: an app that sets any of them inherits none, and likewise for upstream and
//     port;
//   - settings that do not apply to the app's kind (memory for a command, dir for an
//     image) are not inherited, nor upstream and port by an app with handoff.
func (p *parser) inherit(s *appSrc) {
	hasAny := func(keys ...string) bool { return slices.ContainsFunc(keys, s.has) }
	ownKind, ownTarget := hasAny(p.ks.selects...), hasAny("upstream", "port")
	for _, kv := range p.defaults {
		switch {
		case s.has(kv.key):
		case ownKind && slices.Contains(p.ks.selects, kv.key):
		case ownTarget && (kv.key == "upstream" || kv.key == "port"):
		default:
			s.set[kv.key] = setting{pair: kv, inherited: true}
		}
	}
	p.choose(s)
	handoff := false
	if st, ok := s.set["handoff"]; ok && st.v.ShortTag() == "!!bool" {
		_ = st.v.Decode(&handoff)
	}
	for key, st := range s.set {
		if st.inherited && (!p.ks.applies(key, s.kindIdx) || handoff && (key == "upstream" || key == "port")) {
			delete(s.set, key)
		}
	}
}

// AdminSocketOf returns the admin socket a config file names, reading nothing else, so
// that `sact reload` can reach the running sact to report that the edited file is
// invalid. A file it cannot read as YAML gives the default.
func AdminSocketOf(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var doc struct {
		Admin struct {
			Socket string `yaml:"socket"`
		} `yaml:"admin"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		// A file broken elsewhere still names its socket: find it line by line.
		return adminSocketByLines(string(data)), nil
	}
	if doc.Admin.Socket == "" {
		return DefaultAdminSocket, nil
	}
	return doc.Admin.Socket, nil
}

// adminSocketByLines finds `socket:` under a top-level `admin:` without parsing YAML, for a
// file whose YAML is broken.
func adminSocketByLines(text string) string {
	in := false
	for _, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		if line[0] != ' ' && line[0] != '\t' {
			in = strings.HasPrefix(trimmed, "admin:")
			continue
		}
		if v, ok := strings.CutPrefix(trimmed, "socket:"); in && ok {
			v, _, _ = strings.Cut(v, " #")
			if v = strings.Trim(strings.TrimSpace(v), `"'`); v != "" {
				return v
			}
		}
	}
	return DefaultAdminSocket
}
