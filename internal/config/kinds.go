package config

import (
	"maps"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/sact-project/sact/internal/backend"
)

// kindSet is the kinds of one parse (Options.Kinds) and the settings they read.
type kindSet struct {
	kinds []backend.Kind
	infos []backend.KindInfo
	// reads are every kind's Select and Own keys, each with the first kind that reads it.
	reads map[string]int
	// selects are every kind's Select keys: an app that sets one itself inherits none.
	selects []string
	// names are every app key, sorted, for suggestions.
	names []string
}

func newKindSet(kinds []backend.Kind) kindSet {
	ks := kindSet{kinds: kinds, reads: make(map[string]int)}
	for i, k := range kinds {
		in := k.Info()
		ks.infos = append(ks.infos, in)
		for _, key := range slices.Concat(in.Select, in.Own) {
			if _, ok := ks.reads[key]; !ok {
				ks.reads[key] = i
			}
		}
		for _, key := range in.Select {
			if !slices.Contains(ks.selects, key) {
				ks.selects = append(ks.selects, key)
			}
		}
	}
	names := slices.Collect(maps.Keys(appKeys))
	for key := range ks.reads {
		if appKeys[key] == nil {
			names = append(names, key)
		}
	}
	slices.Sort(names)
	ks.names = names
	return ks
}

// known reports whether key is an app setting: sact's own or a kind's.
func (ks *kindSet) known(key string) bool {
	_, ok := ks.reads[key]
	return ok || appKeys[key] != nil
}

// noKind is the kind of an app that has none, or more than one.
const noKind = -1

// match returns the kinds whose Select keys has reports set, less those another match's
// Select holds: image: with swarm: is a swarm service, not also an image.
func (ks *kindSet) match(has func(string) bool) []int {
	var m []int
	for i, in := range ks.infos {
		if len(in.Select) > 0 && !slices.ContainsFunc(in.Select, func(k string) bool { return !has(k) }) {
			m = append(m, i)
		}
	}
	var out []int
	for _, i := range m {
		if !slices.ContainsFunc(m, func(j int) bool { return j != i && ks.within(i, j) }) {
			out = append(out, i)
		}
	}
	return out
}

// within reports whether kind i's Select keys are some of kind j's, which has more.
func (ks *kindSet) within(i, j int) bool {
	a, b := ks.infos[i].Select, ks.infos[j].Select
	return len(a) < len(b) && !slices.ContainsFunc(a, func(k string) bool { return !slices.Contains(b, k) })
}

// distinct returns the key that tells kind i apart from the others of matches.
func (ks *kindSet) distinct(i int, matches []int) string {
	for _, key := range ks.infos[i].Select {
		if !slices.ContainsFunc(matches, func(j int) bool { return j != i && slices.Contains(ks.infos[j].Select, key) }) {
			return key
		}
	}
	return ks.infos[i].Select[0]
}

// applies reports whether setting key makes sense for an app of kind k.
func (ks *kindSet) applies(key string, k int) bool {
	if k == noKind {
		return true
	}
	in := ks.infos[k]
	if _, ok := ks.reads[key]; ok {
		return slices.Contains(in.Select, key) || slices.Contains(in.Own, key)
	}
	return !slices.Contains(in.Skip, key)
}

// choose sets the app's kind from the keys it sets, own and inherited. An app that matches
// several keeps the last of them for what it inherits; checkKind reports it.
func (p *parser) choose(s *appSrc) {
	s.kindIdx = noKind
	if m := p.ks.match(s.has); len(m) > 0 {
		s.kindIdx = m[len(m)-1]
		if len(m) == 1 {
			s.kind = p.ks.kinds[s.kindIdx]
		}
	}
}

// decodeKinds has the kinds decode the settings of set that are theirs: the app's kind
// (k) its own into run, and any other kind the settings it reads first, into a scratch
// Spec, for their problems (checkKind says they do not apply).
func (p *parser) decodeKinds(path string, set map[string]setting, src *appSrc, k int, run *backend.Spec) {
	byKind := make(map[int]map[string]bool)
	for key := range set {
		first, ok := p.ks.reads[key]
		if !ok {
			continue
		}
		if k != noKind && p.ks.applies(key, k) {
			first = k
		}
		if byKind[first] == nil {
			byKind[first] = make(map[string]bool)
		}
		byKind[first][key] = true
	}
	for _, i := range slices.Sorted(maps.Keys(byKind)) {
		into := run
		if i != k || into == nil {
			into = new(backend.Spec)
		}
		p.ks.kinds[i].Decode(&settings{p: p, path: path, set: set, only: byKind[i], src: src}, into)
	}
}

// settings are an app's settings, or defaults:, as the kinds see them (backend.Settings).
type settings struct {
	p    *parser
	path string // "apps.web", "defaults", "apps.web.swarm"
	set  map[string]setting
	only map[string]bool // the keys this kind may see; nil: all of set
	src  *appSrc         // the app, for problems of the app as a whole; nil for defaults:
}

func (s *settings) get(key string) (setting, bool) {
	if s.only != nil && !s.only[key] {
		return setting{}, false
	}
	st, ok := s.set[key]
	return st, ok
}

// with runs decode on the setting at key, if set; the problems of an inherited one were
// reported under defaults already.
func (s *settings) with(key string, decode func(path string, n *yaml.Node)) {
	st, ok := s.get(key)
	if !ok {
		return
	}
	d := &s.p.d
	saved := d.mute
	d.mute = saved || st.inherited
	defer func() { d.mute = saved }()
	decode(join(s.path, key), st.v)
}

func (s *settings) Has(key string) bool { _, ok := s.get(key); return ok }

func (s *settings) String(key string, check func(string) error) (v string) {
	s.with(key, func(path string, n *yaml.Node) {
		if check == nil {
			v = s.p.d.str(path, n)
		} else {
			v = s.p.d.checked(path, n, check)
		}
	})
	return v
}

func (s *settings) Argv(key string) (v []string) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.argv(path, n) })
	return v
}

func (s *settings) List(key string, check func(string) error) (v []string) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.stringList(path, n, check) })
	return v
}

func (s *settings) Map(key string, check func(string) error) (v map[string]string) {
	if check == nil {
		check = func(string) error { return nil }
	}
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.stringMap(path, n, check) })
	return v
}

func (s *settings) Size(key string) (v int64) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.size(path, n) })
	return v
}

func (s *settings) Number(key string) (v float64) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.number(path, n) })
	return v
}

func (s *settings) Int(key string, least int) (v int) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.atLeast(path, n, least) })
	return v
}

func (s *settings) Bool(key string) (v bool) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.boolean(path, n) })
	return v
}

func (s *settings) Dir(key string) (v string) {
	s.with(key, func(path string, n *yaml.Node) { v = s.p.d.dir(path, n) })
	return v
}

func (s *settings) Sub(key string, known []string) backend.Settings {
	sub := &settings{p: s.p, path: join(s.path, key), set: make(map[string]setting)}
	s.with(key, func(path string, n *yaml.Node) {
		st := s.set[key]
		pairs, _ := s.p.d.mapping(path, n)
		for _, kv := range pairs {
			if !slices.Contains(known, kv.key) {
				s.p.d.unknownKey(join(path, kv.key), kv, known)
				continue
			}
			sub.set[kv.key] = setting{pair: kv, inherited: st.inherited}
		}
	})
	return sub
}

func (s *settings) Errorf(key string, format string, args ...any) {
	st, ok := s.get(key)
	switch {
	case ok && st.inherited:
		// reported under defaults:
	case ok:
		s.p.d.errorf(st.v, join(s.path, key), format, args...)
	case s.src != nil:
		s.p.d.errorf(s.src.key, s.path, format, args...)
	default:
		s.p.d.errorf(nil, s.path, format, args...)
	}
}

// nothingToRun is the message of an app that sets no kind's keys.
func (ks *kindSet) nothingToRun() string {
	var adds []string
	for _, in := range ks.infos {
		keys := make([]string, len(in.Select))
		for i, k := range in.Select {
			keys[i] = k + ":"
		}
		adds = append(adds, strings.Join(keys, " with ")+" ("+in.Help+")")
	}
	if len(adds) == 0 {
		return "nothing to run, and this sact knows no kind of app"
	}
	return "nothing to run; add " + orList(adds)
}

// runsOne is "an image, an existing container or a command".
func (ks *kindSet) runsOne() string {
	var runs []string
	for _, in := range ks.infos {
		runs = append(runs, in.Runs)
	}
	return orList(runs)
}

// orList is "a, b or c".
func orList(items []string) string {
	if len(items) <= 1 {
		return strings.Join(items, "")
	}
	return strings.Join(items[:len(items)-1], ", ") + " or " + items[len(items)-1]
}
