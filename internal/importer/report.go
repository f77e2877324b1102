package importer

import (
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
)

// Table writes one line per app and per site left alone, for the terminal.
func (res *Result) Table(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tFROM\tTYPE\tRUNTIME\tSERVER\tNEEDS A PERSON")
	for _, a := range res.Apps {
		server := a.Server
		switch {
		case a.Type == "node" || a.Type == "python":
			server = "-"
		case server == "":
			server = "puma (added)"
		}
		need := "-"
		if len(a.Notes) > 0 {
			need = fmt.Sprintf("%d: %s", len(a.Notes), shorten(a.Notes[0], 60))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", a.Name, res.rel(a.At), a.Type, a.runtime(), server, need)
	}
	tw.Flush()
	for _, s := range res.Static {
		fmt.Fprintf(w, "left alone (no Passenger): %s server_name %s\n", res.rel(s.At), strings.Join(s.Names, " "))
	}
}

func (a *App) runtime() string {
	switch a.Type {
	case "node":
		return "node " + cmpOr(a.Node, "?")
	case "python":
		return "python " + cmpOr(a.Python, "?")
	}
	return "ruby " + cmpOr(a.Ruby, "?")
}

func shorten(s string, n int) string {
	if r := []rune(s); len(r) > n {
		return string(r[:n-3]) + "..."
	}
	return s
}

// Markdown is REPORT.md: each app, what was found, what needs a person, and the commands
// that finish the move.
func (res *Result) Markdown() string {
	var b strings.Builder
	w := func(f string, args ...any) { fmt.Fprintf(&b, f, args...) }
	w("# sact import of %s\n\n", res.Main)
	w("%d Passenger app(s), %d site(s) without Passenger left alone. Files read:\n\n", len(res.Apps), len(res.Static))
	for _, f := range res.Read {
		w("- %s\n", f)
	}
	w("\n| app | from | server_name | type | runtime | server | needs a person |\n|---|---|---|---|---|---|---|\n")
	for _, a := range res.Apps {
		w("| %s | %s | %s | %s | %s | %s | %d |\n", a.Name, a.At, strings.Join(a.Site.Names, " "), a.Type, a.runtime(), cmpOr(a.Server, "-"), len(a.Notes))
	}
	for _, a := range res.Apps {
		w("\n## %s\n\n", a.Name)
		for _, i := range a.Info {
			w("- %s\n", i)
		}
		if len(a.Notes) > 0 {
			w("\nNeeds a person:\n\n")
			for _, n := range a.Notes {
				w("- [ ] %s\n", n)
			}
		}
		w("\nFiles: apps.d/%s.yaml, build/%s/Dockerfile, nginx/%s.conf\n", a.Name, a.Name, res.siteOf(a))
	}
	if len(res.Static) > 0 {
		w("\n## Left alone (no Passenger)\n\n")
		for _, s := range res.Static {
			w("- %s: server_name %s\n", s.At, strings.Join(s.Names, " "))
		}
	}
	w("\n## Next\n\n```sh\n")
	w("cd %s\n", cmpOr(res.out, "OUTPUT_DIR"))
	w("sact build -c sact.yaml              # the images (--base ruby:2.4=IMAGE for old Rubies)\n")
	w("sact check --deep -c sact.yaml       # images, users and ports, asked of the engine\n")
	w("sudo install -d -m 0755 /etc/sact && sudo cp -r sact.yaml apps.d /etc/sact/\n")
	w("sudo systemctl restart sact          # or: sact serve -c /etc/sact/sact.yaml\n")
	w("# then, site by site: put nginx/NAME.conf in place of its server block(s), and\n")
	w("sudo nginx -t && sudo systemctl reload nginx\n")
	w("```\n\nWhen every site is moved, remove Passenger's http-level directives (passenger_root, passenger_ruby...) and its module.\n")
	return b.String()
}

// Commands returns the next commands for an import written to dir.
func (res *Result) Commands(dir string) []string {
	cfg := filepath.Join(dir, "sact.yaml")
	return []string{
		"sact build -c " + cfg,
		"sact check --deep -c " + cfg,
		"sudo cp -r " + cfg + " " + filepath.Join(dir, "apps.d") + " /etc/sact/ && sudo systemctl restart sact",
		"for each site: replace its server block(s) with " + filepath.Join(dir, "nginx", "NAME.conf") + ", then sudo nginx -t && sudo systemctl reload nginx",
	}
}

// rel is p relative to the main file's directory, for the terminal.
func (res *Result) rel(p Pos) string {
	if r, err := filepath.Rel(filepath.Dir(res.Main), p.File); err == nil && !strings.HasPrefix(r, "..") {
		p.File = r
	}
	return p.String()
}

// siteOf names the nginx file that serves a.
func (res *Result) siteOf(a *App) string {
	for _, g := range res.siteGroups() {
		if slices.Contains(g.apps, a) {
			return g.name
		}
	}
	return a.Name
}
