// Package front is sact's HTTP front door: one listener for many apps, routed by the Host
// header (and optionally a path prefix), each app started on its first request.
//
// It is a reverse proxy on net/http/httputil with a keep-alive connection pool per app,
// streaming responses (server-sent events, downloads) and Upgrade (WebSocket)
// pass-through. Every byte read from or written to an app's upstream connections counts
// as activity for its idle clock, so long streams and websockets keep their app while
// they move bytes; pooled connections that sit silent do not.
//
// While an app sleeps, a few requests are answered without waking it (see Quiet), and
// /.sact/status on any routed host says whether the app runs, without starting it.
package front

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"net/url"
	"os"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/proxy"
	"github.com/sact-project/sact/internal/upstream"
)

// App is what the front door needs of an app's activator.
type App interface {
	Name() string
	Acquire(ctx context.Context, w activator.Wake) (*activator.Lease, error)
	Status() activator.Status
	State() activator.State
	Touch()
}

// Route sends the requests for Hosts to App.
type Route struct {
	App App
	// Hosts are "host", "*.domain", either optionally followed by a path prefix
	// ("host/api").
	Hosts []string
	// WakingPage, if positive, is how long a browser's GET waits for a cold start before
	// it gets a self-refreshing "starting" page instead.
	WakingPage time.Duration
	// MaxInFlight bounds the app's requests at once; more get 503. Zero means 256.
	MaxInFlight int
	// StartTimeout bounds how long a request waits for the app to start, its turn in the
	// start queue included (activator.App.MaxWait); the client's own timeout, or nginx's
	// proxy_read_timeout, usually ends the wait sooner.
	StartTimeout time.Duration
	Quiet        Quiet
}

// Quiet are the requests answered while the app sleeps, without waking it.
type Quiet struct {
	Enabled bool
	// RobotsTxt is the body for GET /robots.txt; nil means disallow everything.
	RobotsTxt []byte
	// Favicon answers GET /favicon.ico with 204.
	Favicon bool
	// UserAgents are lowercase substrings of User-Agent answered with Status and
	// Retry-After.
	UserAgents []string
	Status     int
}

// Options tune the server. Zero values get the defaults in parentheses.
type Options struct {
	Logger *slog.Logger
	// Default serves hosts that match no route; nil answers them 404.
	Default *Route
	// TrustedProxies are the TCP peers that may set X-Forwarded-For, -Proto and -Host
	// (and X-Real-Ip); other peers' are replaced. A unix socket peer may set them when
	// the socket it came through lets no "other" user connect (its mode has no bits in
	// 0o007: only root, its owner and its group can reach it), or when TrustUnix is set.
	TrustedProxies []netip.Prefix
	// TrustUnix trusts every unix socket peer, whatever the socket's mode
	// (trusted_proxies: [unix]).
	TrustUnix         bool
	MaxHeaderBytes    int           // (64 KiB)
	ReadHeaderTimeout time.Duration // (10s)
	IdleTimeout       time.Duration // (2m)
	// Failed, if set, counts requests that were not served, by app and reason.
	Failed func(app, reason string, n int)
}

// Server is the front door.
type Server struct {
	routes  atomic.Pointer[routing]
	mu      sync.Mutex // serializes SetRoutes
	log     *slog.Logger
	failed  func(app, reason string, n int)
	trusted []netip.Prefix
	srv     *http.Server

	trustUnix bool
	private   sync.Map // unix socket path -> bool: no "other" user can connect to it
}

// route is a Route with its proxy and counters.
type route struct {
	Route
	given    Route // as passed in, before defaults: what SetRoutes compares
	name     string
	proxy    *httputil.ReverseProxy
	tr       *http.Transport
	inFlight atomic.Int64

	mu       sync.Mutex
	upstream backend.Addr // the upstream of the current pool
}

type ctxKey struct{}

// routing is one generation of the routes; a reload swaps it whole.
type routing struct {
	table *table
	def   *route
	all   []*route
}

// New builds the server; an error means two routes claim the same host and path.
func New(routes []Route, opts Options) (*Server, error) {
	s := &Server{log: opts.Logger, trusted: opts.TrustedProxies, trustUnix: opts.TrustUnix, failed: opts.Failed}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.failed == nil {
		s.failed = func(string, string, int) {}
	}
	if err := s.SetRoutes(routes, opts.Default); err != nil {
		return nil, err
	}
	s.srv = &http.Server{
		Handler:           s,
		MaxHeaderBytes:    orInt(opts.MaxHeaderBytes, 64<<10),
		ReadHeaderTimeout: orDur(opts.ReadHeaderTimeout, 10*time.Second),
		IdleTimeout:       orDur(opts.IdleTimeout, 2*time.Minute),
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		ConnContext:       s.connContext,
	}
	return s, nil
}

// SetRoutes replaces the routes and the default (nil: none), as a reload does. Requests
// in flight finish on the routes they found; a route that did not change keeps its pool
// of upstream connections. An error (two routes claim the same host and path) changes
// nothing.
func (s *Server) SetRoutes(routes []Route, def *Route) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.routes.Load()
	reuse := func(r Route) *route {
		if old != nil {
			for _, rt := range old.all {
				if reflect.DeepEqual(rt.given, r) {
					return rt
				}
			}
		}
		return s.newRoute(r)
	}
	next := &routing{table: newTable()}
	for _, r := range routes {
		rt := reuse(r)
		next.all = append(next.all, rt)
		for _, h := range r.Hosts {
			if err := next.table.add(h, rt); err != nil {
				return err
			}
		}
	}
	if def != nil {
		next.def = reuse(*def)
		next.all = append(next.all, next.def)
	}
	s.routes.Store(next)
	if old != nil {
		for _, rt := range old.all {
			if !slices.Contains(next.all, rt) {
				rt.tr.CloseIdleConnections()
			}
		}
	}
	return nil
}

func orInt(v, def int) int {
	if v > 0 {
		return v
	}
	return def
}

func orDur(v, def time.Duration) time.Duration {
	if v > 0 {
		return v
	}
	return def
}

// Serve serves ln until Shutdown. A unix socket's mode is read here, once: whether it
// lets "other" users connect decides whether its peers may set X-Forwarded-*.
func (s *Server) Serve(ln net.Listener) error {
	if a, ok := ln.Addr().(*net.UnixAddr); ok {
		s.private.Store(a.Name, privateSocket(a.Name))
	}
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting and waits (bounded by ctx) for requests in flight; then it
// closes what remains.
func (s *Server) Shutdown(ctx context.Context) error {
	err := s.srv.Shutdown(ctx)
	if err != nil {
		s.srv.Close()
	}
	return err
}

func (s *Server) newRoute(r Route) *route {
	rt := &route{Route: r, given: r, name: r.App.Name()}
	if rt.MaxInFlight <= 0 {
		rt.MaxInFlight = 256
	}
	rt.tr = &http.Transport{
		DialContext:         rt.dial,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
		// The app's own encoding is passed through untouched.
		DisableCompression: true,
	}
	rt.proxy = &httputil.ReverseProxy{
		Transport:  rt.tr,
		BufferPool: copyBuffers,
		Rewrite:    func(pr *httputil.ProxyRequest) { s.rewrite(rt, pr) },
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.As(err, new(*upstream.UnsafePathError)) {
				// A link the app planted is never followed; the activator logs each
				// cause once, and each request counts.
				s.failed(rt.name, "upstream_unsafe", 1)
				plain(w, http.StatusBadGateway, fmt.Sprintf("502 bad gateway: app %s: its upstream is refused as unsafe; sact's log says why\n", rt.name))
				return
			}
			// The instance ended under the request (and not the client): ServeHTTP
			// starts the app again and resends.
			if p, _ := r.Context().Value(ctxKey{}).(*proxied); p != nil && p.replay &&
				p.lease.Died(r.Context()) {
				p.retry = true
				return
			}
			if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
				s.failed(rt.name, "client_gone", 1)
				return // the client went away
			}
			if p, _ := r.Context().Value(ctxKey{}).(*proxied); p != nil && p.body != nil && p.body.err != nil {
				s.log.Info("bad request body", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", p.body.err)
				s.failed(rt.name, "bad_request", 1)
				w.Header().Set("Connection", "close")
				plain(w, http.StatusBadRequest, fmt.Sprintf("400 bad request: reading the request body: %v\n", oneLine(p.body.err)))
				return
			}
			s.log.Warn("proxy error", "app", rt.name, "host", r.Host, "path", r.URL.Path, "reason", err)
			s.failed(rt.name, "upstream_error", 1)
			plain(w, http.StatusBadGateway, fmt.Sprintf("502 bad gateway: app %s: %v\n", rt.name, oneLine(err)))
		},
	}
	return rt
}

// copyBuffers recycles the buffers ReverseProxy copies response bodies with: without a
// pool it makes and zeroes 32 KiB per response, which showed in profiles of small
// requests as allocation and GC work.
var copyBuffers = &bufferPool{}

type bufferPool struct{ p sync.Pool }

func (b *bufferPool) Get() []byte {
	if buf, ok := b.p.Get().(*[]byte); ok {
		return *buf
	}
	return make([]byte, 32<<10)
}

func (b *bufferPool) Put(buf []byte) { b.p.Put(&buf) }

// dial connects to the upstream of the request's lease; the connection reports activity
// to the app on every read and write, whichever request uses it later.
func (rt *route) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	p, _ := ctx.Value(ctxKey{}).(*proxied)
	if p == nil {
		return nil, errors.New("no lease on the app")
	}
	c, err := p.lease.Dial(ctx)
	if err != nil {
		return nil, err
	}
	return &activeConn{Conn: c, touch: rt.App.Touch}, nil
}

type activeConn struct {
	net.Conn
	touch func()
}

func (c *activeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

func (c *activeConn) Write(p []byte) (int, error) {
	n, err := c.Conn.Write(p)
	if n > 0 {
		c.touch()
	}
	return n, err
}

// rewrite aims the request at the app, keeping the client's Host, and sets the
// X-Forwarded headers: extended when the peer is a trusted proxy, replaced otherwise.
func (s *Server) rewrite(rt *route, pr *httputil.ProxyRequest) {
	pr.SetURL(&url.URL{Scheme: "http", Host: rt.name})
	pr.Out.Host = pr.In.Host
	if up := pr.Out.Header.Get("Upgrade"); up != "" && !strings.EqualFold(up, "websocket") {
		// Only websockets are tunnelled: an h2c (or other) upgrade would turn the
		// connection into one the front door no longer routes, request by request. The
		// request is served as plain HTTP (RFC 9110 7.8 lets a server ignore Upgrade),
		// and an app that switches anyway gets its 101 refused by the proxy.
		pr.Out.Header.Del("Upgrade")
		pr.Out.Header.Del("Connection")
	}
	trusted := s.trusts(pr.In)
	if trusted {
		if v := pr.In.Header["X-Forwarded-For"]; len(v) > 0 {
			pr.Out.Header["X-Forwarded-For"] = v
		}
	}
	if _, _, err := net.SplitHostPort(pr.In.RemoteAddr); err == nil {
		pr.SetXForwarded()
	} else {
		// A unix socket peer has no address to add.
		pr.Out.Header.Set("X-Forwarded-Host", pr.In.Host)
		pr.Out.Header.Set("X-Forwarded-Proto", "http")
	}
	if trusted {
		for _, h := range []string{"X-Forwarded-Proto", "X-Forwarded-Host"} {
			if v := pr.In.Header.Get(h); v != "" {
				pr.Out.Header.Set(h, v)
			}
		}
		if v := pr.In.Header.Get("X-Real-Ip"); v != "" {
			pr.Out.Header.Set("X-Real-Ip", v)
		}
	} else {
		dropForged(pr.Out.Header)
	}
}

// forgeable are headers that apps and their frameworks (Rack, Rails, Django, Express)
// read as the client's address or scheme, beyond the X-Forwarded-For, -Proto and -Host
// that rewrite sets itself: from a peer that is not a trusted proxy they are lies.
var forgeable = []string{"X-Real-Ip", "Client-Ip", "True-Client-Ip", "X-Client-Ip",
	"X-Cluster-Client-Ip", "Front-End-Https", "X-Url-Scheme",
	// Set by a rewriting proxy, believed by some frameworks (Symfony, IIS) as the URL.
	"X-Original-Url", "X-Rewrite-Url"}

// dropForged removes, from an untrusted peer's request, the forwarding headers it may not
// set: every X-Forwarded-* but the three rewrite sets, the forgeable ones, and every
// header whose name holds an underscore, which CGI-style servers (unicorn, Rack, PHP)
// fold into the same variable as its dashed twin (X_Forwarded_For is
// HTTP_X_FORWARDED_FOR); nginx drops those by default too (underscores_in_headers off).
func dropForged(h http.Header) {
	for name := range h {
		switch name {
		case "X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host":
			continue
		}
		if strings.HasPrefix(name, "X-Forwarded-") || strings.ContainsRune(name, '_') {
			delete(h, name)
		}
	}
	for _, name := range forgeable {
		delete(h, name)
	}
}

// privateSocket reports whether the unix socket at path lets no "other" user connect:
// its mode has no bits in 0o007, so only root, its owner and its group (the web
// server's) can. An abstract socket (no file, no mode) is reachable by anyone.
func privateSocket(path string) bool {
	if path == "" || path[0] == '@' {
		return false
	}
	fi, err := os.Lstat(path) // a link planted in the socket's place is not the socket
	return err == nil && fi.Mode().Type() == os.ModeSocket && fi.Mode().Perm()&0o007 == 0
}

type (
	trustKey struct{}
	connKey  struct{}
)

// connContext decides once per connection whether its peer may set X-Forwarded-*.
func (s *Server) connContext(ctx context.Context, c net.Conn) context.Context {
	trusted := false
	if a, ok := c.LocalAddr().(*net.UnixAddr); ok {
		private, _ := s.private.Load(a.Name)
		trusted = s.trustUnix || private == true
	} else {
		trusted = s.isTrusted(c.RemoteAddr().String())
	}
	return context.WithValue(context.WithValue(ctx, trustKey{}, trusted), connKey{}, c)
}

// watchClient ends ctx when the client of r hangs up: net/http notices that itself only
// once the request's body has been read, and nobody reads a body while the app starts.
func watchClient(ctx context.Context, r *http.Request) (context.Context, func()) {
	c, _ := r.Context().Value(connKey{}).(net.Conn)
	if c == nil {
		return ctx, func() {}
	}
	return proxy.WatchHangup(ctx, c, hangupPoll)
}

// hangupPoll is how often a request that waits for its app to start checks that its
// client is still there.
const hangupPoll = 100 * time.Millisecond

// trusts reports whether r's peer may set X-Forwarded-*: as connContext found, or, for
// a connection it did not see (a server of the caller's own), by the peer's address.
func (s *Server) trusts(r *http.Request) bool {
	if t, ok := r.Context().Value(trustKey{}).(bool); ok {
		return t
	}
	return s.isTrusted(r.RemoteAddr)
}

// isTrusted reports whether a peer at remote may set X-Forwarded-*. A unix socket peer
// (no host:port) is trusted only with TrustUnix: its socket's mode is not known here.
func (s *Server) isTrusted(remote string) bool {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return s.trustUnix
	}
	a, err := netip.ParseAddr(host)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range s.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// ServeHTTP routes one request.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodConnect {
		// Not a forward proxy: a CONNECT's authority would pick the app, and the app
		// would get a tunnel to make of what it likes.
		plain(w, http.StatusMethodNotAllowed, "405 method not allowed: CONNECT; this is a reverse proxy for the apps it serves\n")
		return
	}
	if r.URL.Path != "" && r.URL.Path[0] != '/' {
		// Asterisk-form (net/http answers OPTIONS * itself) and the HTTP/2 preface
		// (PRI *): no path for the router to match, nothing an app should be sent.
		plain(w, http.StatusBadRequest, "400 bad request: the request target is not a path\n")
		return
	}
	rg := s.routes.Load()
	rt := rg.table.lookup(r.Host, r.URL.Path)
	if rt == nil {
		rt = rg.def
	}
	if rt == nil {
		s.log.Debug("no app for host", "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr)
		plain(w, http.StatusNotFound, "404 not found: no app is served at "+strconv.Quote(normalHost(r.Host))+"\n")
		return
	}
	if r.URL.Path == "/.sact/status" {
		s.status(w, rt)
		return
	}
	cold := rt.App.State() != activator.Running
	if cold && rt.Quiet.Enabled && s.quiet(w, r, rt) {
		return
	}
	if n := rt.inFlight.Add(1); n > int64(rt.MaxInFlight) {
		rt.inFlight.Add(-1)
		s.log.Warn("request refused", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "max_in_flight reached", "max_in_flight", rt.MaxInFlight)
		s.failed(rt.name, "max_in_flight", 1)
		w.Header().Set("Retry-After", "1")
		plain(w, http.StatusServiceUnavailable, fmt.Sprintf("503 service unavailable: app %s has %d requests in flight, its max_in_flight\n", rt.name, rt.MaxInFlight))
		return
	}
	defer rt.inFlight.Add(-1)

	began := time.Now()
	for attempt := 1; ; attempt++ {
		lease, err := s.acquire(w, r, rt, cold)
		if lease == nil {
			if err != nil {
				s.fail(w, r, rt, err)
			}
			return
		}
		if cold && attempt == 1 {
			w.Header().Set("X-Sact-Cold-Start", time.Since(began).Round(time.Millisecond).String())
		}
		p := &proxied{lease: lease, replay: attempt < 3 && replayable(r)}
		s.proxy(w, r, rt, p)
		lease.Release()
		if !p.retry {
			return
		}
		// The instance died under the request before anything was sent: start it
		// again rather than answer 502 for a crash the client never saw.
		s.log.Info("upstream gone while proxying; starting the app again", "app", rt.name, "host", r.Host, "path", r.URL.Path)
		cold = true
	}
}

// proxied is one try at proxying a request, in its context: the lease the dial uses,
// and whether the error handler found the instance gone and asks for another try.
type proxied struct {
	lease  *activator.Lease
	replay bool // the request can be sent again: no body
	retry  bool
	body   *body // the request's body, if it has one
}

// body is a request body that remembers why reading it failed: a malformed chunked
// encoding (an oversized chunk size or extension) is the client's error, not the app's.
type body struct {
	io.ReadCloser
	err error
}

func (b *body) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF {
		b.err = err
	}
	return n, err
}

// replayable reports whether r may be sent twice: idempotent and without a body, the
// requests net/http's own Transport retries on a dead connection.
func replayable(r *http.Request) bool {
	switch r.Method {
	case http.MethodGet, http.MethodHead, http.MethodOptions:
		return r.Body == nil || r.Body == http.NoBody
	}
	return false
}

// proxy sends r to the lease's instance.
func (s *Server) proxy(w http.ResponseWriter, r *http.Request, rt *route, p *proxied) {
	rt.mu.Lock()
	if rt.upstream != p.lease.Upstream {
		// A new incarnation (perhaps a new container IP): the pool's connections are to
		// the old one.
		rt.upstream = p.lease.Upstream
		rt.tr.CloseIdleConnections()
	}
	rt.mu.Unlock()

	// The request ends when the app stops.
	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), ctxKey{}, p))
	defer cancel()
	stop := context.AfterFunc(p.lease.Context(), cancel)
	defer stop()
	out := r.WithContext(ctx)
	if r.Body != nil && r.Body != http.NoBody {
		p.body = &body{ReadCloser: r.Body}
		out.Body = p.body
	}
	rt.proxy.ServeHTTP(w, out)
}

// acquire gets a lease on the app, starting it if it sleeps. For a browser's GET with a
// waking page it gives up after WakingPage, answers with the page and lets the start go
// on; then it returns nil and no error. Once the page is sent, or the client is gone,
// the request stops waiting and gives its max_waiting slot back: the start goes on
// without it, and the page's refresh comes back as a new request.
func (s *Server) acquire(w http.ResponseWriter, r *http.Request, rt *route, cold bool) (*activator.Lease, error) {
	wake := activator.Wake{Remote: r.RemoteAddr, Listen: "http:" + normalHost(r.Host), Path: r.URL.Path}
	if wake.Remote == "" || wake.Remote == "@" {
		wake.Remote = "unix"
	}
	timeout := orDur(rt.StartTimeout, time.Minute) + 5*time.Second
	if !cold {
		ctx, cancel := context.WithTimeout(r.Context(), timeout)
		defer cancel()
		return rt.App.Acquire(ctx, wake)
	}
	wctx, stop := watchClient(r.Context(), r)
	defer stop()
	if rt.WakingPage <= 0 || !isBrowser(r) {
		ctx, cancel := context.WithTimeout(wctx, timeout)
		defer cancel()
		l, err := rt.App.Acquire(ctx, wake)
		if err != nil && errors.Is(context.Cause(wctx), proxy.ErrClientGone) {
			s.failed(rt.name, "client_gone", 1)
			s.log.Info("client gone while waiting for start", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "client_gone")
			return nil, nil
		}
		return l, err
	}
	type result struct {
		l   *activator.Lease
		err error
	}
	got := make(chan result, 1)
	// The request's context ends the wait when the client goes; cancel ends it once the
	// page is sent. Neither ends the start, which the first Acquire set going.
	ctx, cancel := context.WithTimeout(wctx, timeout)
	defer cancel()
	go func() {
		l, err := rt.App.Acquire(ctx, wake)
		got <- result{l, err}
	}()
	t := time.NewTimer(rt.WakingPage)
	defer t.Stop()
	select {
	case res := <-got:
		return res.l, res.err
	case <-wctx.Done():
		s.failed(rt.name, "client_gone", 1)
		s.log.Info("client gone while waiting for start", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "client_gone")
	case <-t.C:
		wakingPage(w, rt.name)
	}
	cancel()
	if res := <-got; res.l != nil {
		res.l.Release() // ready just as the wait was given up
	}
	return nil, nil
}

func isBrowser(r *http.Request) bool {
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && strings.Contains(r.Header.Get("Accept"), "text/html")
}

var wakingTmpl = template.Must(template.New("waking").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="1">
<title>Starting {{.}}…</title>
<style>body{font:16px/1.5 system-ui,sans-serif;color:#333;display:grid;place-items:center;height:90vh}</style>
</head><body><p>Starting <b>{{.}}</b>… this page reloads by itself.</p></body></html>
`))

func wakingPage(w http.ResponseWriter, app string) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Retry-After", "1")
	w.WriteHeader(http.StatusServiceUnavailable)
	wakingTmpl.Execute(w, app)
}

// fail answers a request whose app could not be had.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, rt *route, err error) {
	if r.Context().Err() != nil {
		s.failed(rt.name, "client_gone", 1)
		s.log.Info("client gone while waiting for start", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "reason", "client_gone")
		return // the client gave up
	}
	s.failed(rt.name, activator.FailureReason(err), 1)
	status := http.StatusBadGateway
	switch {
	case errors.Is(err, activator.ErrStartTimeout), errors.Is(err, context.DeadlineExceeded):
		status = http.StatusGatewayTimeout
	case errors.Is(err, activator.ErrQueueFull), errors.Is(err, activator.ErrClosed):
		status = http.StatusServiceUnavailable
		w.Header().Set("Retry-After", "1")
	}
	s.log.Warn("request failed", "app", rt.name, "host", r.Host, "path", r.URL.Path, "remote", r.RemoteAddr, "status", status, "reason", err)
	plain(w, status, fmt.Sprintf("%d %s: app %s: %s\n", status, strings.ToLower(http.StatusText(status)), rt.name, oneLine(err)))
}

// quiet answers r itself if a quiet rule covers it.
func (s *Server) quiet(w http.ResponseWriter, r *http.Request, rt *route) bool {
	q := rt.Quiet
	if r.Method == http.MethodGet || r.Method == http.MethodHead {
		switch r.URL.Path {
		case "/robots.txt":
			body := q.RobotsTxt
			if body == nil {
				body = []byte("User-agent: *\nDisallow: /\n")
			}
			w.Header().Set("Content-Type", "text/plain; charset=utf-8")
			w.Write(body)
			return true
		case "/favicon.ico":
			if q.Favicon {
				w.WriteHeader(http.StatusNoContent)
				return true
			}
		}
	}
	ua := strings.ToLower(r.UserAgent())
	for _, p := range q.UserAgents {
		if p != "" && strings.Contains(ua, p) {
			w.Header().Set("Retry-After", "3600")
			w.Header().Set("X-Sact-State", "dormant")
			plain(w, q.Status, fmt.Sprintf("%d: %s is dormant and starts on demand\n", q.Status, rt.name))
			return true
		}
	}
	return false
}

// status reports the app's state without starting it.
func (s *Server) status(w http.ResponseWriter, rt *route) {
	st := rt.App.Status()
	state := st.State.String()
	if st.State != activator.Running {
		state = "dormant"
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	json.NewEncoder(w).Encode(map[string]any{
		"app": rt.name, "state": state, "detail": st.State.String(), "since": st.Since,
		"starts_on_demand": true, "cold_starts": st.ColdStarts, "last_activity": st.LastActivity,
	})
}

func plain(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// oneLine is err's first line: start failures carry the app's log lines after it.
func oneLine(err error) string {
	s, _, _ := strings.Cut(err.Error(), "\n")
	return s
}

// ReadRobots reads a robots.txt file for Quiet. It is read as root and served to anyone,
// and it often lies in the app's own directory: writable names the host directories apps
// can write, beneath which no link is followed (see upstream.ReadFile). At most 1 MiB.
func ReadRobots(path string, writable *upstream.Dirs) ([]byte, error) {
	if path == "" {
		return nil, nil
	}
	return upstream.ReadFile(path, writable, 1<<20)
}
