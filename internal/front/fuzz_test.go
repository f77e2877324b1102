package front

import (
	"strings"
	"testing"
)

// FuzzLookup feeds the routing table arbitrary Host headers and paths: it must never panic,
// and whatever it routes must be a route whose pattern matches.
func FuzzLookup(f *testing.F) {
	for _, seed := range [][2]string{
		{"a.test", "/"}, {"A.TEST.:80", "/x"}, {"x.wild.test", "/"}, {"[::1]:8080", "/"},
		{"p.test", "/api/v2"}, {"", ""}, {".", "/"}, {"..", "//"}, {"*.wild.test", "/"},
		{"a.test:", "/api"}, {"\x00", "/\xff"}, {strings.Repeat("a.", 200), "/"},
	} {
		f.Add(seed[0], seed[1])
	}
	tb := newTable()
	for _, p := range []string{"a.test", "*.wild.test", "p.test/api", "p.test/api/v2", "p.test"} {
		if err := tb.add(p, &route{name: p}); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, host, path string) {
		r := tb.lookup(host, path)
		if r == nil {
			return
		}
		h := normalHost(host)
		pattern, prefix, _ := strings.Cut(r.name, "/")
		if prefix != "" && path != "/"+prefix && !strings.HasPrefix(path, "/"+prefix+"/") {
			t.Errorf("%q %q routed to %s, whose prefix does not match", host, path, r.name)
		}
		if d, ok := strings.CutPrefix(pattern, "*"); ok {
			if !strings.HasSuffix(h, d) || h == d[1:] {
				t.Errorf("%q routed to %s", host, r.name)
			}
		} else if h != pattern {
			t.Errorf("%q (%q) routed to %s", host, h, r.name)
		}
	})
}
