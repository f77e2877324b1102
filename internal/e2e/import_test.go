package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/testimage"
)

// A Passenger host moved onto sact (issue 14): a Rack app's vhost imported with sact
// import, its image built offline with sact build --base, sact check --deep, then the
// imported sact.yaml served behind real nginx running the generated site: the first
// request is served cold through nginx, an asset is served by nginx while the app sleeps,
// and touching tmp/restart.txt gives a fresh container at the next request.
func TestImportPassengerHost(t *testing.T) {
	needDocker(t)
	nginx := needTool(t, "nginx")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	base, err := testimage.RubyBase(ctx)
	if err != nil {
		if required() {
			t.Fatalf("building the offline Ruby base: %v", err)
		}
		t.Skipf("cannot build the offline Ruby base: %v", err)
	}
	root := t.TempDir()
	name := uniqueName(t, "hello")
	app := filepath.Join(root, "srv", name)
	for _, d := range []string{"public", "tmp", "log"} {
		if err := os.MkdirAll(filepath.Join(app, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	files := map[string]string{
		"config.ru":         "run ->(env) { [200, {\"content-type\" => \"text/plain\"}, [\"hello from rack in #{File.read('/etc/hostname').strip}\"]] }\n",
		"Gemfile":           "source 'https://rubygems.org'\ngem 'rack'\ngem 'unicorn'\n",
		".ruby-version":     "3.1\n",
		"public/asset.css":  "body { color: teal }\n",
		"public/robots.txt": "User-agent: *\n",
	}
	for f, s := range files {
		if err := os.WriteFile(filepath.Join(app, f), []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	// The lockfile of the gems the base has, as `bundle lock` on the Passenger host made
	// it from rubygems.org.
	if out, err := exec.Command("docker", "run", "--rm", "--network", "none", "-v", app+":/w", "-w", "/w", base, "bundle", "lock", "--local").CombinedOutput(); err != nil {
		t.Fatalf("bundle lock in %s: %v: %s", base, err, out)
	}
	front := freeAddr(t)
	nginxDir := filepath.Join(root, "etc", "nginx")
	os.MkdirAll(filepath.Join(nginxDir, "sites-enabled"), 0o755)
	os.WriteFile(filepath.Join(nginxDir, "nginx.conf"), []byte("user www-data;\nevents {}\nhttp {\n  passenger_root /usr/lib/passenger;\n  passenger_pool_idle_time 300;\n  include sites-enabled/*;\n}\n"), 0o644)
	os.WriteFile(filepath.Join(nginxDir, "sites-enabled", name+".conf"), []byte(fmt.Sprintf(`server {
    listen %s;
    server_name hello.test;
    root %s/public;
    passenger_enabled on;
    passenger_ruby /usr/bin/ruby3.1;
    passenger_env_var GREETING hello;
}
`, front, app)), 0o644)
	runDir := filepath.Join(root, "run")
	os.MkdirAll(runDir, 0o755)

	out := filepath.Join(root, "out")
	sact := func(args ...string) string {
		t.Helper()
		b, err := exec.CommandContext(ctx, sactBin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("sact %s: %v\n%s", strings.Join(args, " "), err, b)
		}
		return string(b)
	}
	imported := sact("import", "-o", out, "-socket-dir", runDir, filepath.Join(nginxDir, "nginx.conf"))
	if !strings.Contains(imported, name) || !strings.Contains(imported, "unicorn") {
		t.Fatalf("sact import did not find the unicorn app %s:\n%s", name, imported)
	}
	cfg := filepath.Join(out, "sact.yaml")
	built := sact("build", "-c", cfg, "--base", "ruby:3.1="+base, name)
	if !strings.Contains(built, "1 images built") {
		t.Fatalf("sact build:\n%s", built)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", "-f", "sact-import/"+name+":imported").Run() })
	if deep := sact("check", "--deep", "-c", cfg); !strings.Contains(deep, "deep: every image exists") {
		t.Errorf("sact check --deep:\n%s", deep)
	}

	// What --deep is for: an app that would fail at its first request fails now.
	bad := filepath.Join(root, "bad.yaml")
	os.WriteFile(bad, []byte(fmt.Sprintf(`apps:
  gone:
    image: sact-no-such-image-%[1]s:1
    listen: ["tcp:127.0.0.1:0"]
    port: 80
  nobody:
    image: sact-import/%[1]s:imported
    user: no-such-user:no-such-group
    listen: ["tcp:127.0.0.1:0"]
    port: 80
`, name)), 0o644)
	b, err := exec.CommandContext(ctx, sactBin, "check", "--deep", "-c", bad).CombinedOutput()
	for _, want := range []string{"apps.gone: image sact-no-such-image-" + name + ":1 does not exist", "apps.nobody: user no-such-user does not exist", "group no-such-group does not exist", "exposes no port"} {
		if err == nil || !strings.Contains(string(b), want) {
			t.Errorf("sact check --deep on a bad config: %v, output lacks %q:\n%s", err, want, b)
		}
	}

	d := startSactFile(t, cfg)
	startNginxSite(t, nginx, root, filepath.Join(out, "nginx", name+".conf"))

	// An asset: nginx serves it from public/, the app sleeps on.
	body, err := httpGet(front, "/asset.css")
	if err != nil || !strings.Contains(body, "teal") {
		t.Fatalf("asset through nginx: %q, %v", body, err)
	}
	time.Sleep(300 * time.Millisecond)
	if n := d.countLog(`"msg":"starting app"&&` + name); n != 0 {
		t.Fatalf("an asset request started the app (%d starts)", n)
	}

	// The first request: served cold, through nginx, by unicorn in the new container.
	began := time.Now()
	body, err = httpGetTimeout(front, "/", 60*time.Second)
	if err != nil || !strings.Contains(body, "hello from rack") {
		t.Fatalf("first request through nginx: %q, %v", body, err)
	}
	t.Logf("cold start through nginx: %v", time.Since(began).Round(time.Millisecond))
	first := body

	// A deploy touches tmp/restart.txt: the next request gets a fresh container.
	if err := os.WriteFile(filepath.Join(app, "tmp", "restart.txt"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d.waitLog(`"msg":"restart file touched&&`+name, 5*time.Second)
	deadline := time.Now().Add(30 * time.Second)
	for {
		body, err = httpGetTimeout(front, "/", 60*time.Second)
		if err == nil && strings.Contains(body, "hello from rack") && body != first {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after touching tmp/restart.txt: %q, %v; want a new container's answer (was %q)", body, err, first)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("before the touch %q, after %q", first, body)
}

// startNginxSite runs nginx with one generated site file in its http block.
func startNginxSite(t *testing.T, bin, root, site string) {
	t.Helper()
	dir := filepath.Join(root, "nginx-run")
	os.MkdirAll(dir, 0o755)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr info;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  include %[2]s;
}
`, dir, site)
	path := filepath.Join(dir, "nginx.conf")
	os.WriteFile(path, []byte(conf), 0o644)
	cmd := exec.Command(bin, "-p", dir, "-c", path)
	logs := &logBuffer{}
	cmd.Stdout, cmd.Stderr = logs, logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("nginx log:\n%s", logs.String())
		}
	})
	time.Sleep(300 * time.Millisecond)
}
