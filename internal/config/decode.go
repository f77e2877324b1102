package config

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// decoder turns yaml.Node values into Go values. It never stops at a problem: it records a
// located Error and returns a zero value, so that one run reports everything.
type decoder struct {
	file string
	// host is every look at the machine (Options.Host).
	host Host
	errs Errors
	// mute drops problems. It is set while values inherited from defaults: are decoded
	// again for each app: their problems were reported once, under defaults.
	mute bool
	// nodeFile names the file of every node read from an included file (include:), so
	// that a problem found there, even by the checks across apps, names that file.
	nodeFile map[*yaml.Node]string
	// read are the env_file files read.
	read []string
}

// fileOf returns the file that n was read from.
func (d *decoder) fileOf(n *yaml.Node) string {
	if f, ok := d.nodeFile[n]; ok {
		return f
	}
	return d.file
}

// errorf records a problem with the setting at path, located at n (which may be nil).
func (d *decoder) errorf(n *yaml.Node, path, format string, args ...any) {
	if d.mute {
		return
	}
	e := &Error{File: d.fileOf(n), Path: path, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		e.Line, e.Column = n.Line, n.Column
	}
	d.errs = append(d.errs, e)
}

// join appends a key to a setting's path.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// index appends a list index to a setting's path.
func index(path string, i int) string { return path + "[" + strconv.Itoa(i) + "]" }

// resolve follows an alias (*anchor) to the node it names.
func resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && n.Alias != nil && i < 8; i++ {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n == nil || n.Kind == 0 || (n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null")
}

// describe names what n is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch {
	case isNull(n):
		return "nothing"
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind != yaml.ScalarNode:
		return "an alias"
	}
	switch n.ShortTag() {
	case "!!bool":
		return n.Value
	case "!!int", "!!float":
		return "the number " + n.Value
	case "!!str":
		return "the string " + quote(n.Value)
	}
	return "a " + strings.TrimPrefix(n.ShortTag(), "!!") + " value"
}

// quote quotes s for a message, shortened if it is long.
func quote(s string) string {
	if r := []rune(s); len(r) > 60 {
		s = string(r[:57]) + "..."
	}
	return strconv.Quote(s)
}

// pair is one key: value of a mapping.
type pair struct {
	key  string
	k, v *yaml.Node // v is resolved
}

// maxMergeDepth bounds merge keys that merge mappings that merge mappings...; an anchor
// that merges itself would otherwise never end.
const maxMergeDepth = 8

// mapping returns the pairs of a mapping in file order, with YAML merge keys (<<: *anchor)
// expanded: a key written in the mapping wins over a merged one, an earlier merge over a
// later one. A null value is an empty mapping. It reports duplicate keys, and returns
// ok=false if n is no mapping at all.
func (d *decoder) mapping(path string, n *yaml.Node) (pairs []pair, ok bool) {
	return d.mappingDepth(path, n, 0)
}

func (d *decoder) mappingDepth(path string, n *yaml.Node, depth int) ([]pair, bool) {
	n = resolve(n)
	if isNull(n) {
		return nil, true
	}
	if n.Kind != yaml.MappingNode {
		d.errorf(n, path, "expected a mapping (key: value), got %s", describe(n))
		return nil, false
	}
	seen := make(map[string]*yaml.Node)
	var pairs, merged []pair
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			d.errorf(k, path, "expected a key name, got %s", describe(k))
			continue
		}
		if k.ShortTag() == "!!merge" {
			merged = append(merged, d.merge(path, v, depth)...)
			continue
		}
		if first, dup := seen[k.Value]; dup {
			d.errorf(k, join(path, k.Value), "duplicate key, first set on line %d; remove one", first.Line)
			continue
		}
		seen[k.Value] = k
		pairs = append(pairs, pair{key: k.Value, k: k, v: v})
	}
	for _, p := range merged {
		if seen[p.key] == nil {
			seen[p.key] = p.k
			pairs = append(pairs, p)
		}
	}
	return pairs, true
}

// merge returns the pairs that a merge key's value brings in: a mapping or a list of them.
func (d *decoder) merge(path string, v *yaml.Node, depth int) []pair {
	if depth >= maxMergeDepth {
		d.errorf(v, path, "merge keys (<<) nested more than %d deep; flatten them", maxMergeDepth)
		return nil
	}
	if v.Kind == yaml.SequenceNode {
		var out []pair
		for _, item := range v.Content {
			item = resolve(item)
			if item.Kind != yaml.MappingNode {
				d.errorf(item, path, "<< merges mappings, got %s; write <<: *anchor or <<: [*a, *b]", describe(item))
				continue
			}
			ps, _ := d.mappingDepth(path, item, depth+1)
			out = append(out, ps...)
		}
		return out
	}
	if v.Kind != yaml.MappingNode {
		d.errorf(v, path, "<< merges mappings, got %s; write <<: *anchor or <<: [*a, *b]", describe(v))
		return nil
	}
	ps, _ := d.mappingDepth(path, v, depth+1)
	return ps
}

// scalar returns n if it is a single non-null value, and reports what was expected if not.
func (d *decoder) scalar(path string, n *yaml.Node, want string) (*yaml.Node, bool) {
	n = resolve(n)
	if isNull(n) || n.Kind != yaml.ScalarNode {
		d.errorf(n, path, "expected %s, got %s", want, describe(n))
		return nil, false
	}
	return n, true
}

// str decodes a non-empty string. Numbers are taken as written (user: 1001); true and
// false are refused, as they are most likely a mistake in a string setting.
func (d *decoder) str(path string, n *yaml.Node) string {
	s, ok := d.scalar(path, n, "a string")
	if !ok {
		return ""
	}
	if s.ShortTag() == "!!bool" {
		d.errorf(s, path, "expected a string, got %s; quote it (\"%s\") if you mean the word", s.Value, s.Value)
		return ""
	}
	if strings.TrimSpace(s.Value) == "" {
		d.errorf(s, path, "empty; give a value or remove the key")
		return ""
	}
	return s.Value
}

// integer decodes a whole number (a string holding one is accepted too).
func (d *decoder) integer(path string, n *yaml.Node) (int, bool) {
	s, ok := d.scalar(path, n, "a whole number")
	if !ok {
		return 0, false
	}
	switch s.ShortTag() {
	case "!!int":
		var i int
		if err := s.Decode(&i); err != nil {
			d.errorf(s, path, "%s is too large", s.Value)
			return 0, false
		}
		return i, true
	case "!!str":
		if i, err := strconv.Atoi(strings.TrimSpace(s.Value)); err == nil {
			return i, true
		}
	}
	d.errorf(s, path, "expected a whole number, got %s", describe(s))
	return 0, false
}

// atLeast decodes a whole number no smaller than lowest.
func (d *decoder) atLeast(path string, n *yaml.Node, lowest int) int {
	i, ok := d.integer(path, n)
	if ok && i < lowest {
		d.errorf(n, path, "%d is too small; the least allowed is %d", i, lowest)
		return 0
	}
	return i
}

// boolean decodes true or false.
func (d *decoder) boolean(path string, n *yaml.Node) bool {
	s, ok := d.scalar(path, n, "true or false")
	if !ok {
		return false
	}
	var b bool
	if s.ShortTag() != "!!bool" || s.Decode(&b) != nil {
		d.errorf(s, path, "expected true or false, got %s", describe(s))
		return false
	}
	return b
}

// oneOf decodes a string that must be one of the choices.
func (d *decoder) oneOf(path string, n *yaml.Node, choices ...string) string {
	s := d.str(path, n)
	if s == "" {
		return ""
	}
	for _, c := range choices {
		if s == c {
			return s
		}
	}
	d.errorf(n, path, "%s is not allowed; use %s", quote(s), strings.Join(choices, " or "))
	return ""
}

// duration decodes a positive duration, Go or systemd style (see parseDuration).
func (d *decoder) duration(path string, n *yaml.Node) time.Duration {
	s, ok := d.scalar(path, n, "a duration like 15m or 90s")
	if !ok {
		return 0
	}
	if s.ShortTag() == "!!bool" {
		d.errorf(s, path, "expected a duration like 15m or 90s, got %s", describe(s))
		return 0
	}
	v, err := parseDuration(s.Value)
	if err != nil {
		d.errorf(s, path, "%v", err)
		return 0
	}
	if v == 0 {
		d.errorf(s, path, "%s is no time at all; use a duration like 15m", quote(s.Value))
		return 0
	}
	return v
}

// size decodes a size in bytes (see parseSize).
func (d *decoder) size(path string, n *yaml.Node) int64 {
	s, ok := d.scalar(path, n, "a size like 512m or 1g")
	if !ok {
		return 0
	}
	if s.ShortTag() == "!!bool" {
		d.errorf(s, path, "expected a size like 512m or 1g, got %s", describe(s))
		return 0
	}
	v, err := parseSize(s.Value)
	if err != nil {
		d.errorf(s, path, "%v", err)
		return 0
	}
	if v == 0 {
		d.errorf(s, path, "a size of 0 limits nothing; remove the key for no limit")
	}
	return v
}

// number decodes a positive, finite decimal number.
func (d *decoder) number(path string, n *yaml.Node) float64 {
	s, ok := d.scalar(path, n, "a number")
	if !ok {
		return 0
	}
	var f float64
	var err error
	switch s.ShortTag() {
	case "!!int", "!!float":
		err = s.Decode(&f)
	case "!!str":
		f, err = strconv.ParseFloat(strings.TrimSpace(s.Value), 64)
	default:
		err = fmt.Errorf("not a number")
	}
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) {
		d.errorf(s, path, "expected a number like 1.5, got %s", describe(s))
		return 0
	}
	if f <= 0 {
		d.errorf(s, path, "%s is not more than 0; remove the key for no limit", s.Value)
		return 0
	}
	return f
}

// sequence returns the items of a list, resolved.
func (d *decoder) sequence(path string, n *yaml.Node, want string) ([]*yaml.Node, bool) {
	n = resolve(n)
	if isNull(n) || n.Kind != yaml.SequenceNode {
		hint := ""
		if n.Kind == yaml.ScalarNode && !isNull(n) {
			hint = fmt.Sprintf("; write [%s]", strconv.Quote(n.Value))
		}
		d.errorf(n, path, "expected %s, got %s%s", want, describe(n), hint)
		return nil, false
	}
	if len(n.Content) == 0 {
		d.errorf(n, path, "empty list; give at least one item or remove the key")
		return nil, false
	}
	items := make([]*yaml.Node, len(n.Content))
	for i, item := range n.Content {
		items[i] = resolve(item)
	}
	return items, true
}

// stringList decodes a list of strings, each checked by check (which may be nil) and none
// repeated. The result has one entry per item, "" for a bad one.
func (d *decoder) stringList(path string, n *yaml.Node, check func(string) error) []string {
	items, ok := d.sequence(path, n, "a list of strings")
	if !ok {
		return nil
	}
	out := make([]string, len(items))
	first := make(map[string]int)
	for i, item := range items {
		p := index(path, i)
		s := d.str(p, item)
		if s == "" {
			continue
		}
		if check != nil {
			if err := check(s); err != nil {
				d.errorf(item, p, "%v", err)
				continue
			}
		}
		if line, dup := first[s]; dup {
			d.errorf(item, p, "%s is listed twice (first on line %d); remove one", quote(s), line)
			continue
		}
		first[s] = item.Line
		out[i] = s
	}
	return out
}

// argv decodes a command line: a list of strings, or one string split on whitespace.
//
// A single string is split like a shell splits words, on runs of spaces and tabs, and
// nothing more: no quotes, escapes or variables. So that nobody is surprised by that, a
// single string holding any such shell syntax is an error; write a list instead.
func (d *decoder) argv(path string, n *yaml.Node) []string {
	n = resolve(n)
	if n.Kind == yaml.ScalarNode && !isNull(n) && n.ShortTag() == "!!str" {
		if strings.ContainsAny(n.Value, "\"'\\$`|&;<>(){}*?~\n") {
			d.errorf(n, path, "%s holds shell syntax, which sact does not interpret; write a list, like [\"sh\", \"-c\", \"...\"]", quote(n.Value))
			return nil
		}
		args := strings.Fields(n.Value)
		if len(args) == 0 {
			d.errorf(n, path, "empty; give a command or remove the key")
		}
		return args
	}
	items, ok := d.sequence(path, n, "a list of strings, or one string")
	if !ok {
		return nil
	}
	args := make([]string, len(items))
	for i, item := range items {
		s, ok := d.scalar(index(path, i), item, "a string")
		if !ok {
			continue
		}
		if s.ShortTag() == "!!bool" {
			d.errorf(s, index(path, i), "expected a string, got %s; quote it", s.Value)
			continue
		}
		if i == 0 && s.Value == "" {
			d.errorf(s, index(path, i), "the program to run is empty; give its name or path")
		}
		args[i] = s.Value
	}
	return args
}

// stringMap decodes a mapping of strings, or a list of "KEY=VALUE" strings. Values may be
// numbers or true/false, taken as written. check vets each key.
func (d *decoder) stringMap(path string, n *yaml.Node, check func(key string) error) map[string]string {
	n = resolve(n)
	if isNull(n) {
		d.errorf(n, path, "expected a mapping (KEY: value) or a list of KEY=VALUE, got nothing")
		return nil
	}
	out := make(map[string]string)
	add := func(at *yaml.Node, p, key, value string) {
		if err := check(key); err != nil {
			d.errorf(at, p, "%v", err)
			return
		}
		out[key] = value
	}
	switch n.Kind {
	case yaml.MappingNode:
		pairs, _ := d.mapping(path, n)
		for _, kv := range pairs {
			s, ok := d.scalar(join(path, kv.key), kv.v, `a value (write "" for an empty one)`)
			if ok {
				add(kv.k, join(path, kv.key), kv.key, s.Value)
			}
		}
	case yaml.SequenceNode:
		first := make(map[string]int)
		for i, item := range n.Content {
			item = resolve(item)
			s, ok := d.scalar(index(path, i), item, "a KEY=VALUE string")
			if !ok {
				continue
			}
			key, value, ok := strings.Cut(s.Value, "=")
			if !ok {
				d.errorf(s, index(path, i), "%s has no =; write KEY=VALUE", quote(s.Value))
				continue
			}
			if line, dup := first[key]; dup {
				d.errorf(s, index(path, i), "%s is set twice (first on line %d); remove one", key, line)
				continue
			}
			first[key] = s.Line
			add(s, index(path, i), key, value)
		}
	default:
		d.errorf(n, path, "expected a mapping (KEY: value) or a list of KEY=VALUE, got %s", describe(n))
	}
	if len(out) == 0 {
		return nil
	}
	return out
}
