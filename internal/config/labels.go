package config

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"regexp"
	"slices"
	"strings"

	"github.com/sact-project/sact/internal/backend"
)

// LabelApp is a container (or whatever its kind runs) that declares itself an app with
// labels (sact.enable=true), so that compose users need not edit sact.yaml: `docker
// compose create` is enough. Kinds that have such apps list them (backend.LabelSource).
type LabelApp = backend.LabelledApp

// Label keys with a meaning of their own; every other "sact.KEY" label is the app key KEY
// (sact.listen, sact.port, sact.hosts, sact.idle, ...).
const (
	LabelEnable = "sact.enable"
	LabelName   = "sact.name" // the app's name; default the container's name
)

// listKeys are app keys whose label value is a comma-separated list.
var listKeys = []string{"listen", "hosts", "depends_on", "keep_warm"}

// flowKeys are app keys whose label value may be a YAML flow mapping written on one line,
// as in the config file: sact.ready={http: /up}.
var flowKeys = []string{"ready"}

// plainScalar is what may be written into YAML unquoted and still mean what it says.
var plainScalar = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/@+-]*$`)

// AddLabelApps adds the apps declared by containers' labels to cfg. Each is checked as
// if written in the config file (with the built-in defaults, not the file's defaults:),
// and must not clash with the file's apps; errors name the container and the label.
func (cfg *Config) AddLabelApps(apps []LabelApp) error {
	var errs Errors
	for _, la := range apps {
		app, err := labelApp(la, cfg.opts)
		if err != nil {
			var es Errors
			if errors.As(err, &es) {
				errs = append(errs, es...)
			} else {
				errs = append(errs, &Error{File: labelSource(la), Msg: err.Error()})
			}
			continue
		}
		if err := cfg.clash(app, labelSource(la)); err != nil {
			errs = append(errs, err)
			continue
		}
		cfg.Apps = append(cfg.Apps, app)
	}
	slices.SortFunc(cfg.Apps, func(a, b *App) int { return strings.Compare(a.Name, b.Name) })
	if len(errs) > 0 {
		return errs
	}
	return nil
}

// labelApp writes the labels as a config with one app, parses it, and turns errors about
// its lines into errors about the labels.
func labelApp(la LabelApp, opts Options) (*App, error) {
	name := la.Labels[LabelName]
	if name == "" {
		name = strings.TrimPrefix(la.Value, "/")
	}
	var b strings.Builder
	lineLabel := map[int]string{}
	fmt.Fprintf(&b, "apps:\n  %s:\n    %s: %s\n", yamlScalar(name), yamlScalar(la.Key), yamlScalar(la.Value))
	line := 4
	for _, k := range slices.Sorted(maps.Keys(la.Labels)) {
		key, ok := strings.CutPrefix(k, "sact.")
		if !ok || k == LabelEnable || k == LabelName || k == "sact.app" || k == "sact.config" {
			continue
		}
		v := la.Labels[k]
		if slices.Contains(listKeys, key) {
			items := []string{}
			for _, it := range strings.Split(v, ",") {
				if it = strings.TrimSpace(it); it != "" {
					items = append(items, it)
				}
			}
			j, _ := json.Marshal(items)
			fmt.Fprintf(&b, "    %s: %s\n", yamlScalar(key), j)
		} else if slices.Contains(flowKeys, key) && isFlowMapping(v) {
			// One line holding one flow node: it cannot add a key beside it.
			fmt.Fprintf(&b, "    %s: %s\n", yamlScalar(key), v)
		} else {
			fmt.Fprintf(&b, "    %s: %s\n", yamlScalar(key), yamlScalar(v))
		}
		lineLabel[line] = k + "=" + v
		line++
	}
	if _, ok := la.Labels["sact.hosts"]; ok {
		// hosts need a front door to be valid; the real one is checked in clash. Last, so
		// that the lines above keep their numbers.
		b.WriteString("http:\n  listen: [\"tcp:127.0.0.1:1\"]\n")
	}
	file := labelSource(la)
	cfg, err := Parse(file, []byte(b.String()), opts)
	if err != nil {
		var es Errors
		if !errors.As(err, &es) {
			return nil, err
		}
		for _, e := range es {
			if l, ok := lineLabel[e.Line]; ok {
				e.Msg = "label " + l + ": " + e.Msg
			}
			e.Line, e.Column = 0, 0
		}
		return nil, es
	}
	return cfg.Apps[0], nil
}

// isFlowMapping reports whether s is written as a YAML flow mapping on a single line.
func isFlowMapping(s string) bool {
	s = strings.TrimSpace(s)
	return strings.HasPrefix(s, "{") && strings.HasSuffix(s, "}") && !strings.ContainsAny(s, "\n\r")
}

// labelSource names where the labels are, for messages: "container shop".
func labelSource(la LabelApp) string { return la.Key + " " + la.Value }

func yamlScalar(s string) string {
	if plainScalar.MatchString(s) {
		return s
	}
	j, _ := json.Marshal(s)
	return string(j)
}

// clash reports an app from labels that collides with one of cfg's.
func (cfg *Config) clash(app *App, source string) *Error {
	e := func(format string, args ...any) *Error {
		return &Error{File: source, Path: "apps." + app.Name, Msg: fmt.Sprintf(format, args...)}
	}
	for _, o := range cfg.Apps {
		if o.Name == app.Name {
			return e("an app named %s exists already (line %d of %s, or another container); set the label %s to another name", app.Name, o.Line, cmp.Or(o.File, cfg.File), LabelName)
		}
		for _, a := range app.Listen {
			for _, b := range o.Listen {
				if sameAddr(a, b) {
					return e("listen %s is apps.%s's already; give the container its own address", a, o.Name)
				}
			}
		}
		for _, h := range app.Hosts {
			if slices.Contains(o.Hosts, h) {
				return e("host %s is served by apps.%s already", h, o.Name)
			}
		}
	}
	for _, a := range app.Listen {
		for _, b := range cfg.HTTP.Listen {
			if sameAddr(a, b) {
				return e("listen %s is the http front door's", a)
			}
		}
	}
	if len(app.Hosts) > 0 && len(cfg.HTTP.Listen) == 0 {
		return e("sact.hosts needs the http front door, which sact.yaml does not set up; add http: {listen: [...]}")
	}
	return nil
}
