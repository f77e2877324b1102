package importer

import (
	"flag"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/kinds"
)

var update = flag.Bool("update", false, "rewrite testdata/golden from the current output")

// host copies testdata/host into a temporary directory, with @ROOT@ in the nginx files
// replaced by that directory, and returns it.
func host(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	src := "testdata/host"
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		dst := filepath.Join(root, rel)
		switch {
		case d.Type()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(target, dst)
		case d.IsDir():
			return os.MkdirAll(dst, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		if strings.HasPrefix(rel, "etc/") {
			b = []byte(strings.ReplaceAll(string(b), "@ROOT@", root))
		}
		return os.WriteFile(dst, b, 0o644)
	})
	if err != nil {
		t.Fatal(err)
	}
	os.MkdirAll(filepath.Join(root, "run"), 0o755)
	return root
}

var digest = regexp.MustCompile(`\(digest [0-9a-f]+\)`)

// normalize makes output independent of where and by whom the test runs.
func normalize(s, root string) string {
	s = strings.ReplaceAll(s, root, "@ROOT@")
	s = digest.ReplaceAllString(s, "(digest @DIGEST@)")
	s = strings.ReplaceAll(s, "uid "+strconv.Itoa(os.Getuid())+" gid "+strconv.Itoa(os.Getgid())+" (owner", "uid @UID@ gid @GID@ (owner")
	return strings.ReplaceAll(s, strconv.Itoa(os.Getuid())+":"+strconv.Itoa(os.Getgid()), "@UID@:@GID@")
}

// TestImportFixture imports a host of a dozen vhosts in several files and compares every
// file written with testdata/golden (regenerate: go test ./internal/importer -update),
// then loads the written sact.yaml as sact check does.
func TestImportFixture(t *testing.T) {
	root := host(t)
	res, err := Import(filepath.Join(root, "etc/nginx/nginx.conf"), Options{SocketDir: filepath.Join(root, "run")})
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	var names []string
	for _, a := range res.Apps {
		names = append(names, a.Name+" "+a.BaseURI)
	}
	want := []string{"shop ", "blog ", "blog-admin /admin", "api ", "legacy ", "crm ", "survey ", "wiki ", "tools "}
	slices.Sort(names)
	slices.Sort(want)
	if diff := cmp.Diff(want, names); diff != "" {
		t.Errorf("apps (-want +got):\n%s", diff)
	}
	if len(res.Static) != 5 {
		t.Errorf("%d sites left alone, want 5 (default, shop's redirect, two static, old.example.com)", len(res.Static))
	}
	out := filepath.Join(root, "out")
	if _, err := res.Write(out); err != nil {
		t.Fatal(err)
	}
	var table strings.Builder
	res.Table(&table)
	os.WriteFile(filepath.Join(out, "table.txt"), []byte(table.String()), 0o644)

	got := map[string]string{}
	filepath.WalkDir(out, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(out, p)
			b, _ := os.ReadFile(p)
			got[rel] = normalize(string(b), root)
		}
		return nil
	})
	const golden = "testdata/golden"
	if *update {
		os.RemoveAll(golden)
		for rel, s := range got {
			os.MkdirAll(filepath.Dir(filepath.Join(golden, rel)), 0o755)
			if err := os.WriteFile(filepath.Join(golden, rel), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	wantFiles := map[string]string{}
	filepath.WalkDir(golden, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(golden, p)
			b, _ := os.ReadFile(p)
			wantFiles[rel] = string(b)
		}
		return nil
	})
	if diff := cmp.Diff(wantFiles, got); diff != "" {
		t.Errorf("written files differ from %s (-want +got); run with -update if intended:\n%s", golden, diff)
	}

	// sact check accepts the result.
	cfg, err := config.Load(filepath.Join(out, "sact.yaml"), config.Options{Kinds: kinds.All})
	if err != nil {
		t.Fatalf("the imported config does not load:\n%v", err)
	}
	if len(cfg.Apps) != len(res.Apps) {
		t.Errorf("config has %d apps, the import %d", len(cfg.Apps), len(res.Apps))
	}
	for _, a := range cfg.Apps {
		if a.Name == "shop" {
			if a.Run.Env["RACK_ENV"] != "production" || a.Run.Env["SECRET_KEY_BASE"] != "9f8e7d6c5b4a" || a.MinRunning != 1 {
				t.Errorf("shop: env %v, min_running %d; want RACK_ENV and the secret from its env_file, min_running 1", a.Run.Env, a.MinRunning)
			}
		}
	}
}

// TestReimportKeepsEdits: a second import leaves a file a person edited alone, and says
// how it differs from what it would write.
func TestReimportKeepsEdits(t *testing.T) {
	root := host(t)
	conf := filepath.Join(root, "etc/nginx/nginx.conf")
	out := filepath.Join(root, "out")
	res, err := Import(conf, Options{SocketDir: filepath.Join(root, "run")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := res.Write(out); err != nil {
		t.Fatal(err)
	}
	shop := filepath.Join(out, "apps.d/shop.yaml")
	b, _ := os.ReadFile(shop)
	edited := strings.Replace(string(b), "    start_timeout: 2m0s", "    start_timeout: 3m", 1)
	if edited == string(b) {
		t.Fatal("shop.yaml has no start_timeout: 2m0s to edit")
	}
	os.WriteFile(shop, []byte(edited), 0o644)

	res, err = Import(conf, Options{SocketDir: filepath.Join(root, "run")})
	if err != nil {
		t.Fatal(err)
	}
	outs, err := res.Write(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range outs {
		switch {
		case o.Path == "apps.d/shop.yaml":
			if o.What != "kept" || !strings.Contains(o.Diff, "-    start_timeout: 3m") || !strings.Contains(o.Diff, "+    start_timeout: 2m0s") {
				t.Errorf("edited shop.yaml: %s, diff %q; want kept, with the difference", o.What, o.Diff)
			}
		case o.Path == "REPORT.md":
		case o.What != "unchanged":
			t.Errorf("%s: %s on a second import of the same host, want unchanged", o.Path, o.What)
		}
	}
	if b, _ := os.ReadFile(shop); string(b) != edited {
		t.Error("the hand-edited shop.yaml was overwritten")
	}
	if _, err := os.Stat(shop + ".new"); err != nil {
		t.Errorf("the new version is not next to it: %v", err)
	}
}

// TestBadInput: input the importer cannot use gets an error naming file and line.
func TestBadInput(t *testing.T) {
	tests := []struct {
		name, conf string
		want       []string
	}{
		{"unparsable", "http {\n  server {\n    listen 80\n  }\n}\n", []string{"nginx.conf", "line 4"}},
		{"unclosed", "http {\n  server {\n    listen 80;\n}\n", []string{"site.conf:1:", "never closed"}},
		{"stray brace", "http {\n}\n}\n", []string{"nginx.conf:3:", "unbalanced"}},
		{"missing include", "http {\n  include missing.conf;\n}\n", []string{"nginx.conf:2:", "no such file"}},
		{"root missing", "http {\n server {\n  server_name a;\n  root /nonexistent/app/public;\n  passenger_enabled on;\n }\n}\n",
			[]string{"site.conf:3:", "root /nonexistent/app/public does not exist"}},
		{"two sites one app", "http {\n server {\n  server_name a.example;\n  root @APP@/public;\n  passenger_enabled on;\n }\n server {\n  server_name b.example;\n  root @APP@/public;\n  passenger_enabled on;\n }\n}\n",
			[]string{"site.conf:9:", "site.conf:4 ", "two sites claim the app directory"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			app := filepath.Join(dir, "app")
			os.MkdirAll(filepath.Join(app, "public"), 0o755)
			conf := strings.ReplaceAll(tt.conf, "@APP@", app)
			main := filepath.Join(dir, "nginx.conf")
			if strings.Contains(conf, "server") && !strings.Contains(tt.name, "unparsable") {
				// the server blocks in an included file, to check that file is named
				os.WriteFile(filepath.Join(dir, "site.conf"), []byte(strings.TrimSuffix(strings.TrimPrefix(conf, "http {\n"), "}\n")), 0o644)
				conf = "http {\n  include site.conf;\n}\n"
			}
			os.WriteFile(main, []byte(conf), 0o644)
			_, err := Import(main, Options{SocketDir: dir})
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

// TestNginxAcceptsSites runs nginx -t on the server blocks written for the fixture
// (those without certificates, which the fixture does not have).
func TestNginxAcceptsSites(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		t.Skip("nginx is not installed")
	}
	root := host(t)
	res, err := Import(filepath.Join(root, "etc/nginx/nginx.conf"), Options{SocketDir: filepath.Join(root, "run")})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(root, "out")
	if _, err := res.Write(out); err != nil {
		t.Fatal(err)
	}
	sites, _ := filepath.Glob(filepath.Join(out, "nginx", "*.conf"))
	conf := "error_log stderr;\npid " + filepath.Join(root, "nginx.pid") + ";\nevents {}\nhttp {\n  access_log off;\n"
	n := 0
	for _, s := range sites {
		if b, _ := os.ReadFile(s); !strings.Contains(string(b), "ssl_certificate") {
			conf += "  include " + s + ";\n"
			n++
		}
	}
	conf += "}\n"
	main := filepath.Join(root, "test-nginx.conf")
	os.WriteFile(main, []byte(conf), 0o644)
	if b, err := exec.Command(nginx, "-t", "-p", root, "-c", main).CombinedOutput(); err != nil {
		t.Fatalf("nginx -t on %d imported sites: %v\n%s", n, err, b)
	}
	if n < 6 {
		t.Errorf("only %d sites tested", n)
	}
}

// TestNginxDump: the output of nginx -T reads like the files it lists, includes and
// lines included; a config that includes itself is an error, not a hang.
func TestNginxDump(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app")
	os.MkdirAll(filepath.Join(app, "public"), 0o755)
	os.WriteFile(filepath.Join(app, "config.ru"), []byte("run App\n"), 0o644)
	dump := "nginx: the configuration file /etc/nginx/nginx.conf syntax is ok\n" +
		"nginx: configuration file /etc/nginx/nginx.conf test is successful\n" +
		"# configuration file /etc/nginx/nginx.conf:\n" +
		"events {}\nhttp {\n  include /etc/nginx/sites-enabled/*;\n}\n\n" +
		"# configuration file /etc/nginx/sites-enabled/app:\n" +
		"server {\n  server_name app.example;\n  root " + app + "/public;\n  passenger_enabled on;\n}\n"
	path := filepath.Join(dir, "dump.txt")
	os.WriteFile(path, []byte(dump), 0o644)
	res, err := Import(path, Options{SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Apps) != 1 || res.Apps[0].At.String() != "/etc/nginx/sites-enabled/app:4" {
		t.Fatalf("apps %v; want app at /etc/nginx/sites-enabled/app:4", res.Apps)
	}

	loop := filepath.Join(dir, "loop.conf")
	os.WriteFile(loop, []byte("http {\n  include loop.conf;\n}\n"), 0o644)
	if _, err := Import(loop, Options{}); err == nil || !strings.Contains(err.Error(), "nested more than") {
		t.Errorf("a config including itself: %v, want an error saying so", err)
	}
	// Files that include every file of their directory: 4 files, 16 levels.
	fan := filepath.Join(dir, "fan")
	os.MkdirAll(fan, 0o755)
	for i := range 4 {
		os.WriteFile(filepath.Join(fan, strconv.Itoa(i)+".conf"), []byte("include "+fan+"/*.conf;\n"), 0o644)
	}
	main := filepath.Join(dir, "fan.conf")
	os.WriteFile(main, []byte("http {\n  include "+fan+"/*.conf;\n}\n"), 0o644)
	began := time.Now()
	if _, err := Import(main, Options{}); err == nil || !strings.Contains(err.Error(), "files read") {
		t.Errorf("includes multiplying: %v, want an error saying so", err)
	}
	if took := time.Since(began); took > 10*time.Second {
		t.Errorf("includes multiplying took %v to refuse", took)
	}
}

// TestHostileAppDir: an app's directory is the app's to write: a Gemfile.lock that is a
// FIFO, or .ruby-version a link to /dev/zero, are skipped, never read without end; nor
// is an nginx include of a device.
func TestHostileAppDir(t *testing.T) {
	dir := t.TempDir()
	app := filepath.Join(dir, "app")
	os.MkdirAll(filepath.Join(app, "public"), 0o755)
	os.WriteFile(filepath.Join(app, "config.ru"), []byte("run App\n"), 0o644)
	if err := syscall.Mkfifo(filepath.Join(app, "Gemfile.lock"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Symlink("/dev/zero", filepath.Join(app, ".ruby-version"))
	main := filepath.Join(dir, "nginx.conf")
	os.WriteFile(main, []byte("http {\n server {\n  server_name a;\n  root "+app+"/public;\n  passenger_enabled on;\n }\n}\n"), 0o644)
	res, err := Import(main, Options{SocketDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if a := res.Apps[0]; a.Ruby != "" {
		t.Errorf("Ruby %q read from a device", a.Ruby)
	}
	os.WriteFile(main, []byte("http {\n include /dev/zero;\n}\n"), 0o644)
	if _, err := Import(main, Options{}); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("include /dev/zero: %v, want an error saying it is not a regular file", err)
	}
}
