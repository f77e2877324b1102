package config

import (
	"bufio"
	"bytes"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sact-project/sact/internal/smallfile"
)

// maxIncluded bounds the files include: may bring in: a host has hundreds of apps, and a
// pattern like /*/* would read half the machine.
const maxIncluded = 5000

// maxReadFile bounds an included file or env file: a config is a few kB.
const maxReadFile = 1 << 20

// readRegular reads a regular file of at most maxReadFile bytes: a device (/dev/zero),
// a FIFO or a directory would hang sact or make no sense.
func readRegular(path string) ([]byte, error) { return smallfile.Read(path, maxReadFile) }

// included is one file that include: brought in.
type included struct {
	file string
	apps pair // its apps: section; zero if it has none
}

// includeKeys are the top-level keys an included file may have, besides x- keys.
var includeKeys = []string{"apps"}

// decodeInclude reads the files that include: names: a list of globs, relative to the
// main file's directory. Each file holds an apps: section (and x- keys for anchors);
// everything else is the main file's. Included files include nothing themselves, so that
// where an app comes from is one step away from the main file.
func (p *parser) decodeInclude(kv pair) []included {
	dir := filepath.Dir(p.d.file)
	var files []string
	for i, pattern := range p.d.stringList("include", kv.v, nil) {
		at := index("include", i)
		if !filepath.IsAbs(pattern) {
			pattern = filepath.Join(dir, pattern)
		}
		matches, err := p.d.host.Glob(pattern)
		if err != nil {
			p.d.errorf(kv.v.Content[i], at, "%s is not a valid glob: %v; write a path like apps.d/*.yaml", quote(pattern), err)
			continue
		}
		if len(matches) == 0 && !hasMeta(pattern) {
			p.d.errorf(kv.v.Content[i], at, "%s does not exist; create it or fix the path (a glob like apps.d/*.yaml may match nothing)", pattern)
			continue
		}
		for _, m := range matches {
			m = filepath.Clean(m)
			if m == filepath.Clean(p.d.file) || slices.Contains(files, m) {
				continue
			}
			files = append(files, m)
		}
	}
	if len(files) > maxIncluded {
		p.d.errorf(kv.k, "include", "the patterns match %d files, more than %d; narrow them, like apps.d/*.yaml", len(files), maxIncluded)
		return nil
	}
	var out []included
	for _, f := range files {
		if inc, ok := p.readIncluded(f); ok {
			out = append(out, inc)
		}
	}
	return out
}

func hasMeta(path string) bool { return strings.ContainsAny(path, `*?[\`) }

// readIncluded parses one included file and marks its nodes as its own, for messages.
func (p *parser) readIncluded(file string) (included, bool) {
	inc := included{file: file}
	data, err := p.d.host.ReadFile(file)
	if err != nil {
		p.d.errs = append(p.d.errs, &Error{File: file, Msg: "cannot read the included file: " + errText(err) + "; fix its permissions or the include: pattern"})
		return inc, false
	}
	p.cfg.Files = append(p.cfg.Files, file)
	main := p.d.file
	p.d.file = file // for the problems found before its nodes are marked
	defer func() { p.d.file = main }()
	root := p.document(data)
	if root == nil {
		return inc, false
	}
	if p.d.nodeFile == nil {
		p.d.nodeFile = make(map[*yaml.Node]string)
	}
	mark(root, file, p.d.nodeFile)
	top, ok := p.d.mapping("", root)
	if !ok {
		return inc, false
	}
	for _, kv := range top {
		switch {
		case kv.key == "apps":
			inc.apps = kv
		case strings.HasPrefix(kv.key, "x-"):
		default:
			p.d.errorf(kv.k, kv.key, "an included file holds only apps: (and x- keys for anchors); move %s to %s", kv.key, main)
		}
	}
	return inc, true
}

// mark records file as the file of n and every node under it.
func mark(n *yaml.Node, file string, files map[*yaml.Node]string) {
	if n == nil || files[n] != "" {
		return
	}
	files[n] = file
	for _, c := range n.Content {
		mark(c, file, files)
	}
}

// where names the place of node n as file:line, for messages about two places that may
// be in two files.
func (d *decoder) where(n *yaml.Node) string {
	return d.fileOf(n) + ":" + strconv.Itoa(n.Line)
}

// envFile reads a dotenv file: KEY=VALUE lines, "export " before the key allowed, # for
// comments, values bare, "double quoted" (with \n, \t, \" and \\ escapes) or 'single
// quoted' (as written). A relative path is relative to the config file that names it.
func (d *decoder) envFile(path string, n *yaml.Node) map[string]string {
	name := d.str(path, n)
	if name == "" {
		return nil
	}
	if !filepath.IsAbs(name) {
		name = filepath.Join(filepath.Dir(d.fileOf(n)), name)
	}
	data, err := d.host.ReadFile(name)
	if err != nil {
		d.errorf(n, path, "cannot read %s: %s; create it or fix the path", name, errText(err))
		return nil
	}
	d.read = append(d.read, name)
	out := make(map[string]string)
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for line := 1; sc.Scan(); line++ {
		fail := func(format string, args ...any) {
			if !d.mute {
				d.errs = append(d.errs, &Error{File: name, Line: line, Msg: fmt.Sprintf(format, args...)})
			}
		}
		s := strings.TrimSpace(sc.Text())
		if s == "" || s[0] == '#' {
			continue
		}
		s = strings.TrimPrefix(s, "export ")
		key, value, ok := strings.Cut(s, "=")
		key = strings.TrimSpace(key)
		if !ok {
			fail("expected KEY=VALUE, got %s; write one variable per line", quote(s))
			continue
		}
		if err := checkEnvKey(key); err != nil {
			fail("%v", err)
			continue
		}
		v, err := dotenvValue(strings.TrimSpace(value))
		if err != nil {
			fail("%s: %v", key, err)
			continue
		}
		out[key] = v
	}
	if err := sc.Err(); err != nil {
		d.errorf(n, path, "cannot read %s: %v; keep each line under 1 MiB", name, err)
	}
	return out
}

// dotenvValue unquotes a dotenv value; a bare value ends at " #", a comment.
func dotenvValue(v string) (string, error) {
	switch {
	case strings.HasPrefix(v, `"`):
		end := -1
		for i := 1; i < len(v); i++ {
			if v[i] == '\\' {
				i++
				continue
			}
			if v[i] == '"' {
				end = i
				break
			}
		}
		if end < 0 {
			return "", fmt.Errorf("no closing \"; close the quote (values span one line)")
		}
		r := strings.NewReplacer(`\n`, "\n", `\t`, "\t", `\"`, `"`, `\\`, `\`, `\$`, `$`)
		return r.Replace(v[1:end]), nil
	case strings.HasPrefix(v, "'"):
		end := strings.IndexByte(v[1:], '\'')
		if end < 0 {
			return "", fmt.Errorf("no closing '; close the quote (values span one line)")
		}
		return v[1 : end+1], nil
	}
	if i := strings.Index(v, " #"); i >= 0 {
		v = strings.TrimSpace(v[:i])
	}
	return v, nil
}
