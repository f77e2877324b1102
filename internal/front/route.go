package front

import (
	"fmt"
	"net"
	"sort"
	"strings"
)

// table maps a request's host and path to a route: exact host names first, then
// "*.domain" wildcards from the most specific domain up, and within a host the longest
// matching path prefix. Lookups are map accesses, so a thousand hosts cost what ten do.
type table struct {
	exact    map[string][]*entry // by host
	wildcard map[string][]*entry // by ".domain", for "*.domain"
}

type entry struct {
	prefix string // "" or "/api": matches /api and /api/..., not /apis
	route  *route
}

func newTable() *table {
	return &table{exact: make(map[string][]*entry), wildcard: make(map[string][]*entry)}
}

// add routes pattern ("host", "*.domain", either with "/prefix") to r.
func (t *table) add(pattern string, r *route) error {
	host, prefix, _ := strings.Cut(strings.ToLower(pattern), "/")
	if prefix != "" {
		prefix = "/" + strings.TrimSuffix(prefix, "/")
	}
	m, key := t.exact, host
	if d, ok := strings.CutPrefix(host, "*."); ok {
		m, key = t.wildcard, "."+d
	}
	for _, e := range m[key] {
		if e.prefix == prefix {
			return fmt.Errorf("%s is routed to both %s and %s", pattern, e.route.name, r.name)
		}
	}
	m[key] = append(m[key], &entry{prefix: prefix, route: r})
	sort.Slice(m[key], func(i, j int) bool { return len(m[key][i].prefix) > len(m[key][j].prefix) })
	return nil
}

// lookup returns the route for a Host header value and a path, or nil.
func (t *table) lookup(hostHeader, path string) *route {
	host := normalHost(hostHeader)
	if r := match(t.exact[host], path); r != nil {
		return r
	}
	// a.b.example.com: *.b.example.com, then *.example.com, then *.com.
	for d := host; ; d = d[1:] {
		i := strings.IndexByte(d, '.')
		if i < 0 {
			return nil
		}
		d = d[i:]
		if r := match(t.wildcard[d], path); r != nil {
			return r
		}
	}
}

func match(es []*entry, path string) *route {
	for _, e := range es {
		if e.prefix == "" || path == e.prefix || strings.HasPrefix(path, e.prefix+"/") {
			return e.route
		}
	}
	return nil
}

// normalHost lowercases a Host header and drops its port and a trailing dot.
func normalHost(h string) string {
	if host, _, err := net.SplitHostPort(h); err == nil {
		h = host
	}
	return strings.TrimSuffix(strings.ToLower(h), ".")
}
