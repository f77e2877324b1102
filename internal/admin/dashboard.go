package admin

import (
	_ "embed"
	"html/template"
	"net/http"
)

//go:embed dashboard.html
var dashboardHTML string

var dashboardTmpl = template.Must(template.New("dashboard").Parse(dashboardHTML))

// dashboard serves the one-page dashboard. It holds no secret: it asks for the token,
// trades it for a session (POST /login) and sends that with every API call. To a peer
// that may read the status without a credential (loopback, not forwarded) the page
// comes with the apps in it, so it shows them as soon as it loads (a screenshot taken
// at load time, or a slow API, shows the table, not "loading").
func (s *Server) dashboard(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Frame-Options", "DENY")
	w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'")
	w.Header().Set("Referrer-Policy", "no-referrer")
	data := struct {
		TokenFile string
		Initial   *Listing
	}{TokenFile: s.tokenFile()}
	if loopbackPeer(r) {
		l := s.listing(s.opts.Apps())
		data.Initial = &l
	}
	dashboardTmpl.Execute(w, data)
}
