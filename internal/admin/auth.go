package admin

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Over HTTP (admin.listen) every request passes these checks, in this order (issue 11):
//
//  1. Host must be a name sact serves the dashboard on: the listen address, the address
//     the connection arrived on, localhost, 127.0.0.1 or [::1] with the listener's port,
//     or one of Options.Hosts. Anything else is answered 421: a page whose name was made
//     to resolve to this host (DNS rebinding) sends its own name, and reads nothing.
//  2. A request that is not a GET or HEAD must carry no Origin (and no Referer), as
//     clients that are not browsers do, or one whose host passes check 1: a page from
//     another site cannot make changes (CSRF), whatever credential the browser holds.
//  3. Status (GET /api/apps, /api/apps/NAME, /api/apps.csv, /api/events) and /metrics
//     are readable without a credential by a loopback peer whose request was not
//     forwarded (no Forwarded, X-Forwarded-For or X-Real-IP header). The dashboard page and the login are open.
//     Everything else needs a credential: the token of Options.TokenFile as
//     "Authorization: Bearer TOKEN" or as the password of basic auth, or a dashboard
//     session in X-Sact-Token.
//
// A dashboard session is handed out by POST /login for the token. The page keeps it in
// its origin's localStorage and sends it in a header, never in a cookie: cookies do not
// keep to a port, so an app served on another port of the same host would receive one.
// Requests on the unix socket skip all of this: the socket's mode and group guard it.

const (
	// sessionTTL is how long a dashboard session lasts.
	sessionTTL = 12 * time.Hour
	// maxSessions bounds the sessions kept; a login beyond it ends the oldest one.
	maxSessions = 64
)

// sessions are the dashboard's logins: random ids and when they expire.
type sessions struct {
	mu  sync.Mutex
	now func() time.Time
	m   map[string]time.Time
}

// add makes a session and returns its id.
func (ss *sessions) add() string {
	b := make([]byte, 32)
	rand.Read(b)
	id := hex.EncodeToString(b)
	ss.mu.Lock()
	defer ss.mu.Unlock()
	now := ss.now()
	for k, exp := range ss.m {
		if !now.Before(exp) {
			delete(ss.m, k)
		}
	}
	for len(ss.m) >= maxSessions {
		oldest := ""
		for k, exp := range ss.m {
			if oldest == "" || exp.Before(ss.m[oldest]) {
				oldest = k
			}
		}
		delete(ss.m, oldest)
	}
	ss.m[id] = now.Add(sessionTTL)
	return id
}

// valid reports whether id is a live session.
func (ss *sessions) valid(id string) bool {
	if len(id) != 64 {
		return false
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	exp, ok := ss.m[id]
	if ok && !ss.now().Before(exp) {
		delete(ss.m, id)
		return false
	}
	return ok
}

func (ss *sessions) remove(id string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	delete(ss.m, id)
}

// overHTTP wraps the API with the checks above.
func (s *Server) overHTTP(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.hostAllowed(r, r.Host) {
			s.refuse(w, r, http.StatusMisdirectedRequest, "host not allowed",
				fmt.Sprintf("421 misdirected request: Host %q is not a name sact serves its dashboard on; add it to admin.hosts", r.Host))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if from, ok := s.sameSite(r); !ok {
				s.refuse(w, r, http.StatusForbidden, "cross-site request",
					fmt.Sprintf("403 forbidden: a change from %q, which is not a name sact serves its dashboard on; add it to admin.hosts if it is yours", from))
				return
			}
		}
		if s.open(r) {
			next.ServeHTTP(w, r)
			return
		}
		switch s.credential(r) {
		case credOK:
			next.ServeHTTP(w, r)
		case credWrong:
			w.Header().Set("WWW-Authenticate", `Bearer realm="sact"`)
			s.refuse(w, r, http.StatusUnauthorized, "wrong credential",
				fmt.Sprintf("401 unauthorized: wrong token or expired session; the token is in %s", s.tokenFile()))
		default:
			w.Header().Set("WWW-Authenticate", `Bearer realm="sact"`)
			s.refuse(w, r, http.StatusUnauthorized, "no credential",
				fmt.Sprintf("401 unauthorized: changes and logs over HTTP need the token in %s: send \"Authorization: Bearer TOKEN\" (or basic auth with the token as password), or log in to the dashboard", s.tokenFile()))
		}
	})
}

// refuse answers a refused request with a short plain-text reason, and logs it: the
// first refusedBurst of each refusedEvery, then one line saying how many were left out.
// Any local user can send refused requests as fast as the loopback carries them, and a
// journal flooded so drops the other lines of sact too (journald's rate limit is per
// service), the ones saying who was refused first among them.
func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, reason, msg string) {
	s.refusals.WithLabelValues(reason).Inc()
	if ok, left := s.refusedLog.allow(s.opts.Now()); ok {
		attrs := []any{"reason", reason, "host", r.Host, "origin", r.Header.Get("Origin"),
			"method", r.Method, "path", r.URL.Path, "remote", r.RemoteAddr}
		if left > 0 {
			attrs = append(attrs, "not_logged_before", left)
		}
		s.log.Warn("admin request refused", attrs...)
	}
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, msg, code)
}

const (
	refusedBurst = 20
	refusedEvery = 10 * time.Second
)

// logLimit lets through the first refusedBurst lines of each refusedEvery and counts
// the rest, which the next line let through reports.
type logLimit struct {
	mu      sync.Mutex
	window  time.Time
	logged  int
	dropped int
}

func (l *logLimit) allow(now time.Time) (ok bool, dropped int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if now.Sub(l.window) >= refusedEvery {
		l.window, l.logged = now, 0
	}
	if l.logged >= refusedBurst {
		l.dropped++
		return false, 0
	}
	l.logged++
	dropped, l.dropped = l.dropped, 0
	return true, dropped
}

func (s *Server) tokenFile() string {
	if s.opts.TokenFile == "" {
		return "sact's token file"
	}
	return s.opts.TokenFile
}

// open reports whether r may be served without a credential.
func (s *Server) open(r *http.Request) bool {
	p := r.URL.Path
	switch {
	case p == "/" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
		return true // the page holds no secret; its data comes through the API
	case p == "/login" && r.Method == http.MethodPost:
		return true
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		return false
	}
	// The event stream and the CSV say no more than the status does.
	status := p == "/metrics" || p == "/api/apps" || p == "/api/apps.csv" || p == "/api/events" ||
		(strings.HasPrefix(p, "/api/apps/") && !strings.Contains(p[len("/api/apps/"):], "/"))
	return status && loopbackPeer(r)
}

// loopbackPeer reports whether r comes from this host itself and was not forwarded by a
// proxy on it (which would make every client of that proxy a loopback peer).
func loopbackPeer(r *http.Request) bool {
	for _, h := range []string{"Forwarded", "X-Forwarded-For", "X-Real-Ip"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	return err == nil && ap.Addr().Unmap().IsLoopback()
}

type credResult int

const (
	credNone credResult = iota
	credWrong
	credOK
)

// credential checks the token (bearer or basic auth password) or a dashboard session.
func (s *Server) credential(r *http.Request) credResult {
	given, ok := "", false
	if auth := r.Header.Get("Authorization"); auth != "" {
		if scheme, tok, found := strings.Cut(auth, " "); found && strings.EqualFold(scheme, "Bearer") {
			given, ok = strings.TrimSpace(tok), true
		} else if _, pass, basic := r.BasicAuth(); basic {
			given, ok = pass, true
		} else {
			return credWrong
		}
	}
	if ok {
		if s.tokenMatches(given) {
			return credOK
		}
		return credWrong
	}
	if id := r.Header.Get("X-Sact-Token"); id != "" {
		if s.sessions.valid(id) {
			return credOK
		}
		return credWrong
	}
	return credNone
}

// tokenMatches compares in constant time; with no token set nothing matches.
func (s *Server) tokenMatches(given string) bool {
	return s.opts.Token != "" && subtle.ConstantTimeCompare([]byte(given), []byte(s.opts.Token)) == 1
}

// sameSite reports whether a change comes from no page at all (no Origin, no Referer) or
// from a page under an allowed host, and returns where it came from.
func (s *Server) sameSite(r *http.Request) (string, bool) {
	from := r.Header.Get("Origin")
	if from == "" {
		from = r.Header.Get("Referer")
	}
	if from == "" {
		return "", true
	}
	u, err := url.Parse(from)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return from, false
	}
	return from, s.hostAllowed(r, u.Host)
}

// hostAllowed reports whether host (a Host header, or an Origin's host[:port]) names this
// dashboard. The port must be the listener's, except for an admin.hosts entry without one.
func (s *Server) hostAllowed(r *http.Request, host string) bool {
	name, port := splitHost(host)
	if name == "" {
		return false
	}
	var local netip.AddrPort
	if a, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		local, _ = netip.ParseAddrPort(a.String())
	}
	if local.IsValid() && port == strconv.Itoa(int(local.Port())) {
		switch name {
		case "localhost", "127.0.0.1", "::1":
			return true
		}
		if ip, err := netip.ParseAddr(name); err == nil && ip.Unmap() == local.Addr().Unmap() {
			return true
		}
	}
	if s.opts.Listen != "" {
		if ln, lp := splitHost(s.opts.Listen); ln == name && lp == port {
			return true
		}
	}
	for _, h := range s.opts.Hosts {
		if hn, hp := splitHost(h); hn == name && (hp == "" || hp == port) {
			return true
		}
	}
	return false
}

// splitHost splits "name", "name:port", "[v6]:port", "[v6]" or a bare IPv6 address into a
// lowercase name (IP addresses in their usual form, without brackets) and a port ("" if
// none).
func splitHost(h string) (name, port string) {
	h = strings.ToLower(h)
	if n, p, err := net.SplitHostPort(h); err == nil {
		name, port = n, p
		if _, err := strconv.ParseUint(p, 10, 16); err != nil {
			return "", ""
		}
	} else {
		name = strings.TrimSuffix(strings.TrimPrefix(h, "["), "]")
	}
	if ip, err := netip.ParseAddr(name); err == nil {
		if ip.Zone() != "" {
			return "", ""
		}
		name = ip.Unmap().String()
	}
	return name, port
}

// login trades the token for a dashboard session: POST /login with the form field token
// answers {"session": ID}, which the page sends back in X-Sact-Token.
func (s *Server) login(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if err := r.ParseForm(); err != nil {
		http.Error(w, "400 bad request: send the form field token", http.StatusBadRequest)
		return
	}
	if !s.tokenMatches(strings.TrimSpace(r.PostForm.Get("token"))) {
		s.refuse(w, r, http.StatusUnauthorized, "wrong login token",
			fmt.Sprintf("401 unauthorized: that is not the token in %s", s.tokenFile()))
		return
	}
	s.log.Info("admin login", "remote", r.RemoteAddr)
	writeJSON(w, http.StatusOK, map[string]any{"session": s.sessions.add(), "expires_in": int(sessionTTL.Seconds())})
}

// logout ends the session in X-Sact-Token.
func (s *Server) logout(w http.ResponseWriter, r *http.Request) {
	s.sessions.remove(r.Header.Get("X-Sact-Token"))
	w.WriteHeader(http.StatusNoContent)
}
