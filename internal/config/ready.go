package config

import (
	"slices"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// Ready is how sact tells that a started app can serve (key ready:), before it sends the
// app the connections that wait for it. The zero value, `ready: accepts`, is "the
// upstream accepts a connection".
type Ready struct {
	// Healthcheck (`ready: healthcheck`) waits for the engine's word that the image's own
	// HEALTHCHECK passed, then for the upstream to accept. Containers only.
	Healthcheck bool
	// HTTP (`ready: {http: /up}`) sends a request through the upstream until it answers
	// with a status in range. Default nil.
	HTTP *ReadyHTTP
}

// ReadyHTTP is the request of `ready: {http: ...}`.
type ReadyHTTP struct {
	// Path is the request's path, with a query if wanted (key path, or the string given
	// to http:).
	Path string
	// Method is GET, HEAD or OPTIONS (key method). Default GET.
	Method string
	// StatusMin and StatusMax bound the statuses that mean ready (key status, as 200 or
	// 200-299). Default 200-399: redirects are not followed, a 3xx is the answer.
	StatusMin, StatusMax int
}

var readyHTTPKeys = []string{"method", "path", "status"}

// readyMethods are the methods a readiness check may send: none that changes anything.
var readyMethods = []string{"GET", "HEAD", "OPTIONS"}

// maxReadyPath bounds the path of an HTTP check.
const maxReadyPath = 1024

// ready decodes `ready: accepts`, `ready: healthcheck`, `ready: {http: /path}` or
// `ready: {http: {path: /up, method: HEAD, status: 200-299}}`.
func (d *decoder) ready(path string, n *yaml.Node) Ready {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		switch w := d.str(path, n); w {
		case "", "accepts":
		case "healthcheck":
			return Ready{Healthcheck: true}
		default:
			d.errorf(n, path, "%s is not a readiness; use accepts (the default), healthcheck (the image's HEALTHCHECK) or {http: /health}", quote(w))
		}
		return Ready{}
	}
	pairs, _ := d.mapping(path, n)
	var r Ready
	for _, kv := range pairs {
		at := join(path, kv.key)
		switch kv.key {
		case "http":
			r.HTTP = d.readyHTTP(at, kv.v)
		default:
			d.unknownKey(at, kv, []string{"http"})
		}
	}
	if len(pairs) == 0 {
		d.errorf(n, path, "empty; write ready: {http: /health} (or ready: healthcheck), or remove the key")
	}
	return r
}

func (d *decoder) readyHTTP(path string, n *yaml.Node) *ReadyHTTP {
	h := &ReadyHTTP{Method: "GET", StatusMin: 200, StatusMax: 399}
	if n.Kind != yaml.MappingNode {
		h.Path = d.readyPath(path, n)
		if h.Path == "" {
			return nil
		}
		return h
	}
	pairs, _ := d.mapping(path, n)
	for _, kv := range pairs {
		at := join(path, kv.key)
		switch kv.key {
		case "path":
			h.Path = d.readyPath(at, kv.v)
		case "method":
			if m := d.str(at, kv.v); m != "" {
				if up := strings.ToUpper(m); slices.Contains(readyMethods, up) {
					h.Method = up
				} else {
					d.errorf(kv.v, at, "%s is not allowed: a readiness check must change nothing; use GET, HEAD or OPTIONS", quote(m))
				}
			}
		case "status":
			h.StatusMin, h.StatusMax = d.statusRange(at, kv.v)
		default:
			d.unknownKey(at, kv, readyHTTPKeys)
		}
	}
	if h.Path == "" {
		d.errorf(n, path, "no path; add path: /health (the app's health path)")
		return nil
	}
	return h
}

// readyPath decodes the path of an HTTP check: absolute, printable ASCII without spaces,
// as it goes on the request line.
func (d *decoder) readyPath(path string, n *yaml.Node) string {
	s := d.str(path, n)
	switch {
	case s == "":
		return ""
	case !strings.HasPrefix(s, "/"):
		d.errorf(n, path, "%s is no absolute path; write it from the root, like /health", quote(s))
		return ""
	case len(s) > maxReadyPath:
		d.errorf(n, path, "longer than %d bytes; use a shorter health path", maxReadyPath)
		return ""
	case strings.ContainsFunc(s, func(r rune) bool { return r <= ' ' || r >= 0x7f }):
		d.errorf(n, path, "%s holds spaces or characters a request line cannot carry; percent-encode them", quote(s))
		return ""
	case strings.Contains(s, "#"):
		d.errorf(n, path, "%s holds a fragment (#), which is never sent; remove it", quote(s))
		return ""
	}
	return s
}

// statusRange decodes 200 or "200-299": HTTP statuses, 100 to 599, low before high.
func (d *decoder) statusRange(path string, n *yaml.Node) (int, int) {
	s, ok := d.scalar(path, n, "a status like 200 or a range like 200-299")
	if !ok {
		return 200, 399
	}
	lo, hi, isRange := strings.Cut(strings.TrimSpace(s.Value), "-")
	if !isRange {
		hi = lo
	}
	a, errA := strconv.Atoi(strings.TrimSpace(lo))
	b, errB := strconv.Atoi(strings.TrimSpace(hi))
	switch {
	case s.ShortTag() == "!!bool" || errA != nil || errB != nil:
		d.errorf(s, path, "%s is no status; write one like 200, or a range like 200-299", quote(s.Value))
	case a < 100 || b > 599:
		d.errorf(s, path, "%s is outside HTTP's statuses, 100 to 599", quote(s.Value))
	case a > b:
		d.errorf(s, path, "%s runs backwards; write the lower status first, like %d-%d", quote(s.Value), b, a)
	default:
		return a, b
	}
	return 200, 399
}

// checkReady checks that the app's ready: can be acted on: a plain process has no
// HEALTHCHECK, handoff gives sact no moment to hold clients back, and an HTTP check needs
// an address to reach the app at.
func (p *parser) checkReady(s *appSrc) {
	if !s.has("ready") || !s.Ready.Healthcheck && s.Ready.HTTP == nil {
		return
	}
	switch {
	case s.Ready.Healthcheck && p.cannot(s, "ready: healthcheck") != "":
		p.errAt(s, "ready", -1, "%s", p.cannot(s, "ready: healthcheck"))
	case s.Handoff:
		p.errAt(s, "ready", -1, "with handoff: true the app accepts its clients from the kernel's backlog as soon as it listens, so sact cannot hold them back; remove ready")
	case s.Ready.HTTP != nil && !s.has("upstream") && !s.has("port"):
		p.errAt(s, "ready", -1, "the HTTP check goes through the app's upstream, and it has none; add port: or upstream:, or use ready: healthcheck")
	}
}
