package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/kinds"
	"github.com/sact-project/sact/internal/listen"
)

// parse parses src, failing the test on any error.
func parse(t *testing.T, src string) *Config {
	t.Helper()
	cfg, err := Parse("sact.yaml", []byte(src), testOptions())
	if err != nil {
		t.Fatalf("Parse:\n%v\nconfig:\n%s", err, src)
	}
	return cfg
}

// parseErrors parses src, which must be invalid, and returns the errors.
func parseErrors(t *testing.T, src string) Errors {
	t.Helper()
	cfg, err := Parse("sact.yaml", []byte(src), testOptions())
	var errs Errors
	if !errors.As(err, &errs) || len(errs) == 0 {
		t.Fatalf("Parse = %v, %v; want Errors\nconfig:\n%s", cfg, err, src)
	}
	return errs
}

func TestUnixSocketsInTempDir(t *testing.T) {
	dir := t.TempDir()
	src := fmt.Sprintf(`
admin:
  socket: %[1]s/admin.sock
apps:
  web:
    image: web:1
    listen:
      - unix:%[1]s/web.sock
      - {address: "unix:%[1]s/web-private.sock", mode: "0600", owner: "0", group: "0"}
      - {address: "unix:%[1]s/web-octal.sock", mode: 0640}
    upstream: unix:%[1]s/tmp/app.sock
`, dir)
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := parse(t, src)
	want := []listen.Addr{
		{Network: "unix", Address: dir + "/web.sock"},
		{Network: "unix", Address: dir + "/web-private.sock", Mode: 0o600, Owner: "0", Group: "0"},
		{Network: "unix", Address: dir + "/web-octal.sock", Mode: 0o640},
	}
	app := cfg.Apps[0]
	if diff := cmp.Diff(want, app.Listen); diff != "" {
		t.Errorf("Listen (-want +got):\n%s", diff)
	}
	if want := (backend.Addr{Network: "unix", Address: dir + "/tmp/app.sock"}); app.Upstream != want {
		t.Errorf("Upstream = %v, want %v", app.Upstream, want)
	}
	if cfg.Admin.Socket != dir+"/admin.sock" {
		t.Errorf("Admin.Socket = %q", cfg.Admin.Socket)
	}
}

func TestUnixSocketDirectories(t *testing.T) {
	dir := t.TempDir()
	readOnly := filepath.Join(dir, "ro")
	os.Mkdir(readOnly, 0o755)
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o644)
	stale := filepath.Join(dir, "stale.sock")
	ln, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close() // leaves the socket file behind, as a killed sact would

	// Tests run as root, who may write anywhere: pretend.
	host := readOnlyDir{dir: readOnly}

	tests := map[string]struct {
		listen, upstream string
		wantErr          string // "" for valid
	}{
		"fine":                  {listen: dir + "/a.sock", upstream: dir + "/b.sock"},
		"stale socket":          {listen: stale, upstream: dir + "/b.sock"},
		"missing listen dir":    {listen: dir + "/missing/a.sock", upstream: dir + "/b.sock", wantErr: "directory " + dir + "/missing does not exist; create it (mkdir -p " + dir + "/missing) or choose another path"},
		"read-only listen dir":  {listen: readOnly + "/a.sock", upstream: dir + "/b.sock", wantErr: "directory " + readOnly + " is not writable by sact"},
		"read-only upstream ok": {listen: dir + "/a.sock", upstream: readOnly + "/b.sock"},
		"missing upstream dir":  {listen: dir + "/a.sock", upstream: dir + "/missing/b.sock", wantErr: "directory " + dir + "/missing does not exist; create it (it is usually the app's tmp dir"},
		"listen dir is a file":  {listen: file + "/a.sock", upstream: dir + "/b.sock", wantErr: file + " is not a directory"},
		"listen path is a file": {listen: file, upstream: dir + "/b.sock", wantErr: file + " exists and is not a socket"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			src := fmt.Sprintf("apps:\n  web:\n    image: web:1\n    listen: [\"unix:%s\"]\n    upstream: unix:%s\n", tt.listen, tt.upstream)
			_, err := Parse("sact.yaml", []byte(src), Options{Kinds: kinds.All, Host: host})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Parse: %v", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Parse = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

// readOnlyDir is this machine, but for dir, which sact may not write.
type readOnlyDir struct {
	OS
	dir string
}

func (h readOnlyDir) Writable(d string) error {
	if d == h.dir {
		return fs.ErrPermission
	}
	return nil
}

func TestDefaults(t *testing.T) {
	fakeMachine(t)
	cfg := parse(t, "apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n")
	if diff := cmp.Diff(Admin{Socket: "/run/sact/admin.sock"}, cfg.Admin); diff != "" {
		t.Errorf("Admin = %+v", cfg.Admin)
	}
	if cfg.Pool != (Pool{StartConcurrency: 4}) {
		t.Errorf("Pool = %+v", cfg.Pool)
	}
	a := cfg.Apps[0]
	got := fmt.Sprintf("%v %v %v %v %v %v", a.Idle, a.StartTimeout, a.StopTimeout, a.MaxWaiting, a.OnExit, a.KeepWhileOpen)
	if want := "15m0s 1m0s 10s 1024 keep false"; got != want {
		t.Errorf("app defaults = %s, want %s", got, want)
	}

	numCPU = defaultNumCPU
	if cfg := parse(t, "apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n"); cfg.Pool.StartConcurrency < 1 {
		t.Errorf("StartConcurrency = %d on this machine", cfg.Pool.StartConcurrency)
	}
}

func TestInheritance(t *testing.T) {
	cfg := parse(t, `
defaults:
  image: base:1
  env: {A: "1"}
  memory: 64m
  port: 8080
  idle: 5m
apps:
  own:
    image: own:1
    env: {B: "2"}
    upstream: tcp:127.0.0.1:9000
    listen: ["tcp:127.0.0.1:7001"]
  proc:
    command: [./run]
    listen: ["tcp:127.0.0.1:7002"]
    idle: 1h
  plain:
    listen: ["tcp:127.0.0.1:7003"]
`)
	type summary struct {
		Image, Upstream string
		Command         []string
		Env             map[string]string
		Memory          int64
		Port            int
		Idle            time.Duration
	}
	got := make(map[string]summary)
	for _, a := range cfg.Apps {
		got[a.Name] = summary{a.Run.Image, a.Upstream.String(), a.Run.Command, a.Run.Env, a.Run.Memory, a.Port, a.Idle}
	}
	want := map[string]summary{
		// env merged with defaults.env (issue 14); port not inherited next to its own upstream
		"own": {Image: "own:1", Upstream: "tcp:127.0.0.1:9000", Env: map[string]string{"A": "1", "B": "2"}, Memory: 64 << 20, Idle: 5 * time.Minute},
		// no image next to its own command, no memory for a process; port on loopback
		"proc":  {Upstream: "tcp:127.0.0.1:8080", Command: []string{"./run"}, Env: map[string]string{"A": "1"}, Port: 8080, Idle: time.Hour},
		"plain": {Image: "base:1", Env: map[string]string{"A": "1"}, Memory: 64 << 20, Port: 8080, Idle: 5 * time.Minute},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("apps (-want +got):\n%s", diff)
	}
}

func TestCommandLines(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    []string
		wantErr string
	}{
		"list":           {in: `["unicorn", "-c", "unicorn.rb"]`, want: []string{"unicorn", "-c", "unicorn.rb"}},
		"string":         {in: `unicorn -c unicorn.rb`, want: []string{"unicorn", "-c", "unicorn.rb"}},
		"runs of spaces": {in: `"a   b\tc"`, want: []string{"a", "b", "c"}},
		"list keeps":     {in: `["sh", "-c", "echo 'hi' | cat", ""]`, want: []string{"sh", "-c", "echo 'hi' | cat", ""}},
		"numbers":        {in: `[sleep, 10]`, want: []string{"sleep", "10"}},
		"quotes":         {in: `sh -c 'echo hi'`, wantErr: "holds shell syntax"},
		"pipe":           {in: `"a | b"`, wantErr: "holds shell syntax"},
		"variable":       {in: `"echo $HOME"`, wantErr: "holds shell syntax"},
		"empty string":   {in: `""`, wantErr: "empty"},
		"empty list":     {in: `[]`, wantErr: "empty list"},
		"mapping":        {in: `{a: b}`, wantErr: "expected a list of strings, or one string, got a mapping"},
		"nested":         {in: `[[a]]`, wantErr: "expected a string, got a list"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			src := "apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n    cmd: " + tt.in + "\n"
			cfg, err := Parse("sact.yaml", []byte(src), testOptions())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), "sact.yaml:6: apps.web.cmd") || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Parse = %v; want an error at sact.yaml:6: apps.web.cmd containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, cfg.Apps[0].Run.Cmd); diff != "" {
				t.Errorf("Cmd (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEnvForms(t *testing.T) {
	for _, env := range []string{
		`{A: "1", B: x=y, C: "", D: true}`,
		`[A=1, B=x=y, C=, D=true]`,
		`{A: 1, B: "x=y", C: "", D: true}`,
	} {
		cfg := parse(t, "apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n    env: "+env+"\n")
		want := map[string]string{"A": "1", "B": "x=y", "C": "", "D": "true"}
		if diff := cmp.Diff(want, cfg.Apps[0].Run.Env); diff != "" {
			t.Errorf("env: %s (-want +got):\n%s", env, diff)
		}
	}
}

func TestErrorsType(t *testing.T) {
	errs := parseErrors(t, "apps:\n  web:\n    idle: soon\n    imgae: x:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n")
	want := Errors{
		{File: "sact.yaml", Line: 2, Column: 3, Path: "apps.web", Msg: errs[0].Msg},
		{File: "sact.yaml", Line: 3, Column: 11, Path: "apps.web.idle", Msg: `"soon" is not a duration; write a duration like 90s, 15m or 1h30m`},
		{File: "sact.yaml", Line: 4, Column: 5, Path: "apps.web.imgae", Msg: `unknown key; did you mean "image"?`},
	}
	if diff := cmp.Diff(want, errs); diff != "" {
		t.Errorf("Errors (-want +got):\n%s", diff)
	}
	wantText := `sact.yaml:3: apps.web.idle: "soon" is not a duration; write a duration like 90s, 15m or 1h30m`
	if got := errs[1].Error(); got != wantText {
		t.Errorf("Error() = %q, want %q", got, wantText)
	}
	if lines := strings.Split(errs.Error(), "\n"); len(lines) != 3 || lines[1] != wantText {
		t.Errorf("Errors.Error() =\n%s", errs.Error())
	}
	if got := (&Error{File: "f.yaml", Msg: "m"}).Error(); got != "f.yaml: m" {
		t.Errorf("Error() without line and path = %q", got)
	}
}

// Every error reaches the user: a mistake early in the file does not hide later ones.
func TestAllErrorsReported(t *testing.T) {
	var b strings.Builder
	b.WriteString("apps:\n")
	for i := range 20 {
		fmt.Fprintf(&b, "  app%d:\n    image: a:1\n    listen: [\"tcp:127.0.0.1:%d\"]\n    port: 80\n    idle: %dfoo\n", i, 7000+i, i)
	}
	errs := parseErrors(t, b.String())
	if len(errs) != 20 {
		t.Fatalf("got %d errors, want 20:\n%v", len(errs), errs)
	}
	for i, e := range errs {
		if want := 6 + 5*i; e.Line != want {
			t.Errorf("error %d on line %d, want %d: %v", i, e.Line, want, e)
		}
	}
}

func TestLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sact.yaml")
	os.WriteFile(path, []byte("apps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:8080\"]\n    port: 80\n"), 0o644)
	cfg, err := Load(path, testOptions())
	if err != nil {
		t.Fatal(err)
	}
	if cfg.File != path || len(cfg.Apps) != 1 || cfg.Apps[0].Name != "web" || cfg.Apps[0].Line != 2 {
		t.Errorf("Load = %+v", cfg)
	}

	missing := filepath.Join(t.TempDir(), "nope.yaml")
	_, err = Load(missing, testOptions())
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 {
		t.Fatalf("Load(missing, testOptions()) = %v, want one Error", err)
	}
	if want := missing + ": cannot read the config: no such file or directory; check the path given with -c"; err.Error() != want {
		t.Errorf("Load(missing, testOptions()) = %q, want %q", err, want)
	}
}

func TestAppsSorted(t *testing.T) {
	cfg := parse(t, `
apps:
  zeta: {image: a:1, listen: ["tcp:127.0.0.1:7001"], port: 80}
  alpha: {image: a:1, listen: ["tcp:127.0.0.1:7002"], port: 80}
  mid.dle: {image: a:1, listen: ["tcp:127.0.0.1:7003"], port: 80}
`)
	var names []string
	for _, a := range cfg.Apps {
		names = append(names, fmt.Sprintf("%s@%d", a.Name, a.Line))
	}
	if got, want := strings.Join(names, " "), "alpha@4 mid.dle@5 zeta@3"; got != want {
		t.Errorf("apps = %s, want %s", got, want)
	}
}

func TestSpec(t *testing.T) {
	base := `apps:
  web:
    image: web:1
    cmd: [serve]
    env: {A: "1", B: "2"}
    labels: {team: x}
    volumes: ["/a:/a"]
    listen: ["tcp:127.0.0.1:8080"]
    port: 80
`
	cfg := parse(t, base)
	app := cfg.Apps[0]
	spec := app.Spec()
	want := backend.Spec{
		Name: "web", Image: "web:1", Cmd: []string{"serve"}, Env: map[string]string{"A": "1", "B": "2"},
		Labels: map[string]string{"team": "x"}, Volumes: []string{"/a:/a"}, Port: 80, Hash: spec.Hash,
	}
	if diff := cmp.Diff(want, spec); diff != "" {
		t.Errorf("Spec (-want +got):\n%s", diff)
	}
	if !regexp.MustCompile(`^[0-9a-f]{16}$`).MatchString(spec.Hash) {
		t.Errorf("Hash = %q, want 16 hex digits", spec.Hash)
	}

	// The spec is a copy: a runtime that changes it does not change the config.
	spec.Cmd[0], spec.Env["A"], spec.Volumes[0] = "x", "x", "x"
	if app.Run.Cmd[0] != "serve" || app.Run.Env["A"] != "1" || app.Run.Volumes[0] != "/a:/a" {
		t.Errorf("changing the Spec changed the App: %+v", app)
	}

	// The hash follows what shapes the container, and only that.
	same := []string{
		"    idle: 1h\n",
		"    max_waiting: 5\n",
		"    on_exit: stop\n",
		"    keep_while_open: true\n",
		"    stop_timeout: 1s\n",
	}
	different := []string{
		"    entrypoint: [x]\n",
		"    user: \"1\"\n",
		"    network: web\n",
		"    memory: 1g\n",
		"    cpus: 2\n",
	}
	for _, extra := range same {
		if h := parse(t, base+extra).Apps[0].Spec().Hash; h != spec.Hash {
			t.Errorf("adding %q changed the hash", extra)
		}
	}
	for _, extra := range different {
		if h := parse(t, base+extra).Apps[0].Spec().Hash; h == spec.Hash {
			t.Errorf("adding %q left the hash alone", extra)
		}
	}
	for _, change := range [][2]string{
		{"web:1", "web:2"}, {"[serve]", "[serve, -v]"}, {`B: "2"`, `B: "3"`}, {"team: x", "team: y"},
		{`"/a:/a"`, `"/a:/b"`}, {"port: 80", "port: 81"},
	} {
		if h := parse(t, strings.Replace(base, change[0], change[1], 1)).Apps[0].Spec().Hash; h == spec.Hash {
			t.Errorf("changing %s to %s left the hash alone", change[0], change[1])
		}
	}
	// Map order in the file does not matter.
	if h := parse(t, strings.Replace(base, `{A: "1", B: "2"}`, `[B=2, A=1]`, 1)).Apps[0].Spec().Hash; h != spec.Hash {
		t.Errorf("writing env in another order or form changed the hash")
	}
}

// The example config in doc.go must stay valid: apart from paths that exist only on a
// server and features this version lacks.
func TestDocExample(t *testing.T) {
	doc, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var example []string
	in := false
	for _, line := range strings.Split(string(doc), "\n") {
		switch {
		case strings.HasPrefix(line, "//\tadmin:"):
			in = true
		case in && !strings.HasPrefix(line, "//\t"):
			in = false
		}
		if in {
			example = append(example, strings.TrimPrefix(line, "//\t"))
		}
	}
	if len(example) < 20 {
		t.Fatalf("found no example config in doc.go")
	}
	dir := t.TempDir()
	for _, d := range []string{"run/sact", "apps/blog/tmp/sockets", "srv/legacy"} {
		os.MkdirAll(filepath.Join(dir, d), 0o755)
	}
	src := strings.Join(example, "\n")
	for _, d := range []string{"/run/sact", "/apps/blog", "/srv/legacy"} {
		src = strings.ReplaceAll(src, d, dir+d)
	}
	src = strings.ReplaceAll(src, "www-data", "0")

	_, err = Parse("doc.go", []byte(src), testOptions())
	var errs Errors
	errors.As(err, &errs)
	for _, e := range errs {
		if !strings.Contains(e.Msg, "not supported by this version of sact yet") {
			t.Errorf("%v", e)
		}
	}
	allFeatures(t)
	if _, err := Parse("doc.go", []byte(src), testOptions()); err != nil {
		t.Errorf("with every feature: %v", err)
	}
}

// TestNotYetSupportedKeys keeps the list honest: every key in it is a real setting.
func TestNotYetSupportedKeys(t *testing.T) {
	for key, how := range notYetSupported {
		top, _, nested := strings.Cut(key, ".")
		if !slices.Contains(topKeys, top) && appKeys[key] == nil || nested && appKeys[top] != nil {
			t.Errorf("notYetSupported[%q]: no such setting", key)
		}
		if how == "" {
			t.Errorf("notYetSupported[%q] does not say what to do instead", key)
		}
	}
}
