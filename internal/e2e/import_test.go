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

// A Passenger host moved onto sact (issue 14): two Rack apps' vhosts, on Ruby 2.7 and
// 3.1, imported with sact import, their images built offline with sact build --base,
// sact check --deep, then the imported sact.yaml served behind real nginx running the
// generated sites: an asset is served by nginx while the app sleeps, the first request is
// served cold through nginx, and touching tmp/restart.txt gives a fresh container at the
// next request.
func TestImportPassengerHost(t *testing.T) {
	t.Parallel()
	needDocker(t)
	nginx := needTool(t, "nginx")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	root := t.TempDir()
	nginxDir := filepath.Join(root, "etc", "nginx")
	os.MkdirAll(filepath.Join(nginxDir, "sites-enabled"), 0o755)
	os.WriteFile(filepath.Join(nginxDir, "nginx.conf"), []byte("user www-data;\nevents {}\nhttp {\n  passenger_root /usr/lib/passenger;\n  passenger_pool_idle_time 300;\n  include sites-enabled/*;\n}\n"), 0o644)
	runDir := filepath.Join(root, "run")
	os.MkdirAll(runDir, 0o755)

	type site struct{ name, ruby, base, app, front string }
	var sites []site
	for _, ruby := range []string{"3.1", "2.7"} {
		base, err := testimage.RubyBase(ctx, ruby)
		if err != nil {
			if required() {
				t.Fatalf("building the offline Ruby %s base: %v", ruby, err)
			}
			t.Skipf("cannot build the offline Ruby %s base: %v", ruby, err)
		}
		s := site{name: uniqueName(t, "rb"+strings.ReplaceAll(ruby, ".", "")), ruby: ruby, base: base, front: freeAddr(t)}
		s.app = filepath.Join(root, "srv", s.name)
		for _, d := range []string{"public", "tmp", "log"} {
			if err := os.MkdirAll(filepath.Join(s.app, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		files := map[string]string{
			"config.ru":        "run ->(env) { [200, {\"content-type\" => \"text/plain\"}, [\"hello from ruby #{RUBY_VERSION} in #{File.read('/etc/hostname').strip}\"]] }\n",
			"Gemfile":          "source 'https://rubygems.org'\ngem 'rack'\ngem 'unicorn'\n",
			".ruby-version":    ruby + "\n",
			"public/asset.css": "body { color: teal }\n",
		}
		for f, body := range files {
			if err := os.WriteFile(filepath.Join(s.app, f), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// The lockfile of the gems the base has, as `bundle lock` on the Passenger host
		// made it from rubygems.org.
		if out, err := exec.Command("docker", "run", "--rm", "--network", "none", "-v", s.app+":/w", "-w", "/w", base, "bundle", "lock", "--local").CombinedOutput(); err != nil {
			t.Fatalf("bundle lock in %s: %v: %s", base, err, out)
		}
		os.WriteFile(filepath.Join(nginxDir, "sites-enabled", s.name+".conf"), []byte(fmt.Sprintf(`server {
    listen %s;
    server_name %s.test;
    root %s/public;
    passenger_enabled on;
    passenger_env_var GREETING hello;
}
`, s.front, s.name, s.app)), 0o644)
		sites = append(sites, s)
	}

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
	cfg := filepath.Join(out, "sact.yaml")
	buildArgs := []string{"build", "-c", cfg}
	for _, s := range sites {
		if !strings.Contains(imported, s.name) || !strings.Contains(imported, "ruby "+s.ruby) {
			t.Fatalf("sact import did not find the Ruby %s app %s:\n%s", s.ruby, s.name, imported)
		}
		buildArgs = append(buildArgs, "--base", "ruby:"+s.ruby+"="+s.base)
		t.Cleanup(func() { exec.Command("docker", "rmi", "-f", "sact-import/"+s.name+":imported").Run() })
	}
	began := time.Now()
	built := sact(buildArgs...)
	if !strings.Contains(built, "2 images built") {
		t.Fatalf("sact build:\n%s", built)
	}
	t.Logf("sact build of 2 apps: %v", time.Since(began).Round(100*time.Millisecond))
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
`, sites[0].name)), 0o644)
	b, err := exec.CommandContext(ctx, sactBin, "check", "--deep", "-c", bad).CombinedOutput()
	for _, want := range []string{"apps.gone: image sact-no-such-image-" + sites[0].name + ":1 does not exist", "apps.nobody: user no-such-user does not exist", "group no-such-group does not exist", "exposes no port"} {
		if err == nil || !strings.Contains(string(b), want) {
			t.Errorf("sact check --deep on a bad config: %v, output lacks %q:\n%s", err, want, b)
		}
	}

	d := startSactFile(t, cfg)
	var confs []string
	for _, s := range sites {
		confs = append(confs, filepath.Join(out, "nginx", s.name+".conf"))
	}
	startNginxSite(t, nginx, root, confs...)

	for _, s := range sites {
		// An asset: nginx serves it from public/, the app sleeps on.
		body, err := httpGet(s.front, "/asset.css")
		if err != nil || !strings.Contains(body, "teal") {
			t.Fatalf("%s: asset through nginx: %q, %v", s.name, body, err)
		}
		time.Sleep(300 * time.Millisecond)
		if n := d.countLog(`"msg":"starting app"&&` + s.name); n != 0 {
			t.Fatalf("%s: an asset request started the app (%d starts)", s.name, n)
		}
		// The first request: served cold, through nginx, by unicorn in the new container.
		began := time.Now()
		body, err = httpGetTimeout(s.front, "/", 60*time.Second)
		if err != nil || !strings.Contains(body, "hello from ruby "+s.ruby) {
			t.Fatalf("%s: first request through nginx: %q, %v; want Ruby %s's answer", s.name, body, err, s.ruby)
		}
		t.Logf("%s: cold start through nginx: %v (%s)", s.name, time.Since(began).Round(time.Millisecond), body)
		first := body

		// A deploy touches tmp/restart.txt: the next request gets a fresh container.
		if err := os.WriteFile(filepath.Join(s.app, "tmp", "restart.txt"), nil, 0o644); err != nil {
			t.Fatal(err)
		}
		d.waitLog(`"msg":"restart file touched&&`+s.name, 5*time.Second)
		deadline := time.Now().Add(30 * time.Second)
		for {
			body, err = httpGetTimeout(s.front, "/", 60*time.Second)
			if err == nil && strings.Contains(body, "hello from ruby") && body != first {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: after touching tmp/restart.txt: %q, %v; want a new container's answer (was %q)", s.name, body, err, first)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s: after the touch: %s", s.name, body)
	}
}

// startNginxSite runs nginx with generated site files in its http block.
func startNginxSite(t *testing.T, bin, root string, sites ...string) {
	t.Helper()
	dir := filepath.Join(root, "nginx-run")
	os.MkdirAll(dir, 0o755)
	includes := ""
	for _, s := range sites {
		includes += "  include " + s + ";\n"
	}
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
%[2]s}
`, dir, includes)
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
