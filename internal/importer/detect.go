package importer

import (
	"bufio"
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// Detected is what the app's own files say about it.
type Detected struct {
	// Type is rack, rails, node or python.
	Type string
	// Ruby is the Ruby version ("2.7.8", or "2.7"), from RubyFrom; "" if none was found.
	Ruby     string
	RubyFrom string // ".ruby-version", "Gemfile.lock", "passenger_ruby"
	// Node is the Node major version, from NodeFrom.
	Node     string
	NodeFrom string
	// Python is the Python version from passenger_python, if any.
	Python string
	// Bundler is the lockfile's BUNDLED WITH.
	Bundler string
	// Server is "unicorn" or "puma" when the lockfile has it, with ServerVersion.
	Server        string
	ServerVersion string
	// Rails is the rails version in the lockfile.
	Rails string
	// Lockfile: the app has a Gemfile.lock; Gemfile: a Gemfile.
	Lockfile, Gemfile bool
	// Procfile is its web: line, if any.
	Procfile string
	// StartupFile is the file the app starts from (config.ru, app.js, passenger_wsgi.py).
	StartupFile string
}

// detect reads the app directory dir (the live one: `current` is followed).
// passengerRuby and friends are the interpreter paths Passenger was given.
func detect(dir, appType, startup, passengerRuby, passengerNode, passengerPython string) Detected {
	var d Detected
	exists := func(name string) bool { _, err := os.Stat(filepath.Join(dir, name)); return err == nil }
	read := func(name string) []byte { b, _ := readSmall(filepath.Join(dir, name)); return b }

	d.Gemfile, d.Lockfile = exists("Gemfile"), exists("Gemfile.lock")
	if d.Lockfile {
		lockfile(read("Gemfile.lock"), &d)
	}
	if v := strings.TrimSpace(string(read(".ruby-version"))); v != "" {
		if m := rubyVersion.FindString(v); m != "" {
			d.Ruby, d.RubyFrom = m, ".ruby-version"
		}
	}
	if d.Ruby == "" && passengerRuby != "" {
		if m := rubyInPath.FindStringSubmatch(passengerRuby); m != nil {
			d.Ruby, d.RubyFrom = m[1], "passenger_ruby"
		}
	}
	if m := procfileWeb.FindSubmatch(read("Procfile")); m != nil {
		d.Procfile = strings.TrimSpace(string(m[1]))
	}

	switch {
	case appType != "":
		d.Type = map[string]string{"rack": "rack", "node": "node", "wsgi": "python", "python": "python", "meteor": "node"}[appType]
	case exists("config/environment.rb"):
		d.Type = "rails"
	case exists("config.ru"):
		d.Type = "rack"
	case exists("passenger_wsgi.py"):
		d.Type = "python"
	case exists("package.json") || exists("app.js"):
		d.Type = "node"
	}
	if d.Type == "rack" && exists("config/environment.rb") {
		d.Type = "rails"
	}
	switch d.Type {
	case "node":
		d.StartupFile = "app.js"
		var pkg struct {
			Main    string            `json:"main"`
			Engines map[string]string `json:"engines"`
		}
		if json.Unmarshal(read("package.json"), &pkg) == nil {
			if m := nodeMajor.FindStringSubmatch(pkg.Engines["node"]); m != nil {
				d.Node, d.NodeFrom = m[1], "package.json engines.node"
			}
		}
		if v := strings.TrimSpace(string(read(".nvmrc"))); d.Node == "" && v != "" {
			if m := nodeMajor.FindStringSubmatch(v); m != nil {
				d.Node, d.NodeFrom = m[1], ".nvmrc"
			}
		}
		if m := nodeInPath.FindStringSubmatch(passengerNode); d.Node == "" && m != nil {
			d.Node, d.NodeFrom = m[1], "passenger_nodejs"
		}
	case "python":
		d.StartupFile = "passenger_wsgi.py"
		if m := pythonInPath.FindStringSubmatch(passengerPython); m != nil {
			d.Python = m[1]
		}
	default:
		d.StartupFile = "config.ru"
	}
	if startup != "" {
		d.StartupFile = startup
	}
	return d
}

var (
	rubyVersion  = regexp.MustCompile(`\d+\.\d+(\.\d+)?`)
	rubyInPath   = regexp.MustCompile(`(?:ruby-|rubies/|versions/|ruby/)(\d+\.\d+(?:\.\d+)?)`)
	nodeMajor    = regexp.MustCompile(`v?(\d+)`)
	nodeInPath   = regexp.MustCompile(`node(?:js)?[/-]v?(\d+)(?:\.\d+)*`)
	pythonInPath = regexp.MustCompile(`python(\d+(?:\.\d+)?)`)
	procfileWeb  = regexp.MustCompile(`(?m)^web:(.*)$`)
	lockSpec     = regexp.MustCompile(`^    ([A-Za-z0-9_.-]+) \(([^)]+)\)$`)
)

// lockfile reads a Gemfile.lock's RUBY VERSION, BUNDLED WITH and the specs that matter.
func lockfile(b []byte, d *Detected) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	section := ""
	for sc.Scan() {
		line := sc.Text()
		if line != "" && line[0] != ' ' {
			section = strings.TrimSpace(line)
			continue
		}
		text := strings.TrimSpace(line)
		switch section {
		case "RUBY VERSION":
			if m := rubyVersion.FindString(text); m != "" && d.Ruby == "" {
				d.Ruby, d.RubyFrom = m, "Gemfile.lock"
			}
		case "BUNDLED WITH":
			if text != "" {
				d.Bundler = text
			}
		case "GEM":
			m := lockSpec.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			switch m[1] {
			case "unicorn", "puma":
				if d.Server == "" || m[1] == "unicorn" {
					d.Server, d.ServerVersion = m[1], m[2]
				}
			case "rails", "railties":
				if d.Rails == "" {
					d.Rails = m[2]
				}
			}
		}
	}
}

// rubyMinor returns "2.7" of "2.7.8".
func rubyMinor(v string) string {
	parts := strings.Split(v, ".")
	if len(parts) < 2 {
		return v
	}
	return parts[0] + "." + parts[1]
}

// oldestRubyImage is the oldest Ruby whose minor version the importer assumes has a
// ruby:X.Y image on Docker Hub; older ones need --base with an image someone made.
const oldestRubyImage = "2.0"

// olderThan reports whether version a is older than b (both "X.Y[.Z]").
func olderThan(a, b string) bool {
	pa, pb := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < len(pa) && i < len(pb); i++ {
		x, _ := strconv.Atoi(pa[i])
		y, _ := strconv.Atoi(pb[i])
		if x != y {
			return x < y
		}
	}
	return len(pa) < len(pb)
}

// secretName matches environment variable names that usually hold credentials.
var secretName = regexp.MustCompile(`(?i)(SECRET|PASSWORD|PASSWD|PASS$|TOKEN|API_?KEY|PRIVATE|CREDENTIAL|ACCESS_KEY|AUTH)`)

// credentialURL matches URLs with a password in them (postgres://user:pw@host/db).
var credentialURL = regexp.MustCompile(`^[a-z][a-z0-9+.-]*://[^/:@\s]+:[^/@\s]+@`)

// looksSecret reports whether an environment variable looks like it holds a credential.
func looksSecret(key, val string) bool {
	return secretName.MatchString(key) || credentialURL.MatchString(val)
}
