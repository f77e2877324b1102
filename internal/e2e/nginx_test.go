package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startNginx runs Debian's nginx in front of a unix socket, as users do (keepalive
// upstream pool included), and returns its address.
func startNginx(t *testing.T, upstreamSock string) string {
	t.Helper()
	return startNginxTo(t, "unix:"+upstreamSock)
}

// startNginxTo is startNginx for an upstream server of nginx's syntax: "unix:PATH" or
// "HOST:PORT".
func startNginxTo(t *testing.T, server string) string {
	t.Helper()
	bin := needTool(t, "nginx")
	dir := t.TempDir()
	addr := freeAddr(t)
	conf := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log stderr info;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  upstream app_sact {
    server %[2]s;
    keepalive 8;
  }
  server {
    listen %[3]s;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Real-IP $remote_addr;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_redirect off;
      proxy_pass http://app_sact;
    }
  }
}
`, dir, server, addr)
	path := filepath.Join(dir, "nginx.conf")
	os.WriteFile(path, []byte(conf), 0o644)
	cmd := exec.Command(bin, "-p", dir, "-c", path)
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("nginx log:\n%s", out.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if c, err := dialOnce(addr); err == nil {
			c.Close()
			return addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx did not come up:\n%s", out.String())
		}
	}
}

// nginx -> sact's unix socket -> the app, relayed and handed off: cold start through
// nginx, idle stop despite nginx's keepalive pool, and the next request after the stop.
func TestNginxInFront(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, mode := range []string{"proxy", "handoff"} {
		t.Run(mode, func(t *testing.T) {
			name := uniqueName(t, "nginx-"+mode)
			sock := filepath.Join(t.TempDir(), "app.sock")
			cfg := fmt.Sprintf(`apps:
  %[1]s:
    image: %[2]s
    env: {NAME: %[1]s, LISTEN: "tcp:0.0.0.0:8080"}
    listen: [{address: "unix:%[3]s", mode: "0666"}]
    port: 8080
    idle: 2s
    stop_timeout: 2s
`, name, testImage, sock)
			if mode == "handoff" {
				cfg = strings.Replace(strings.Replace(cfg, "    port: 8080\n", "    handoff: true\n    network: none\n", 1), `, LISTEN: "tcp:0.0.0.0:8080"`, "", 1)
			}
			d := startSact(t, cfg)
			front := startNginx(t, sock)
			for i := range 2 {
				for range 5 {
					body, err := httpGet(front, "/")
					if err != nil || !strings.Contains(body, "hello from "+name) {
						t.Fatalf("round %d through nginx: %q, %v", i, body, err)
					}
				}
				// nginx keeps its upstream connections open and silent: they must not pin
				// the app.
				d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 15*time.Second)
				waitContainerState(t, name, "exited", 5*time.Second)
				if i == 0 {
					time.Sleep(100 * time.Millisecond)
				}
			}
			if n := d.awaitCount(`"msg":"app ready"&&`+name, 2); n != 2 {
				t.Errorf("%d starts, want 2", n)
			}
		})
	}
}
