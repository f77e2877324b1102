package main

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// front compares sact's HTTP front door with nginx's proxy_pass (keepalive upstream),
// Caddy's reverse_proxy and HAProxy to the same warm container, and all with the container
// directly.
func (b *bench) front() error {
	app := fmt.Sprintf("bench-front-%d", os.Getpid())
	defer exec.Command("docker", "rm", "-f", "sact-"+app).Run()
	frontAddr := freeAddr()
	d, err := b.startSact(fmt.Sprintf(`http:
  listen: ["tcp:%[3]s"]
apps:
  %[1]s:
    image: %[2]s
    env: {NAME: front, LISTEN: "tcp:0.0.0.0:8080"}
    hosts: ["front.bench"]
    port: 8080
    idle: 1h
    stop_timeout: 2s
`, app, b.image, frontAddr))
	if err != nil {
		return err
	}
	defer d.stop()
	c := &http.Client{}
	req, _ := http.NewRequest("GET", "http://"+frontAddr+"/", nil)
	req.Host = "front.bench"
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	direct, err := b.containerAddr("sact-" + app)
	if err != nil {
		return err
	}

	nginxAddr := freeAddr()
	stop, err := b.nginx(nginxAddr, direct)
	if err != nil {
		return err
	}
	defer stop()
	caddyAddr, haproxyAddr := freeAddr(), freeAddr()
	stopCaddy, err := b.caddy(caddyAddr, direct)
	if err != nil {
		return err
	}
	defer stopCaddy()
	stopHAProxy, err := b.haproxy(haproxyAddr, direct)
	if err != nil {
		return err
	}
	defer stopHAProxy()

	targets := []target{
		{"direct to the container", direct},
		{"sact front door (Host routing)", frontAddr},
		{"nginx proxy_pass, keepalive upstream", nginxAddr},
		{"Caddy reverse_proxy", caddyAddr},
		{"HAProxy, mode http", haproxyAddr},
	}
	rounds, dur := b.wrkRounds()
	results, err := wrkAll(targets, rounds, dur, "-H", "Host: front.bench")
	if err != nil {
		return err
	}
	fmt.Fprintf(&b.md, "## HTTP front door\n\n")
	fmt.Fprintf(&b.md, "`wrk -t2 -c32 -d%s --latency -H 'Host: front.bench'`, keep-alive, `GET /` answering 16 bytes, to one warm container; %d round(s), interleaved; medians (min-max of requests/s in brackets). nginx runs `worker_processes auto` with `keepalive 32` to the container's IP; Caddy %s runs `reverse_proxy` (its transport keeps upstream connections alive), HAProxy %s `mode http` with its default `http-reuse safe` and one thread per core; none logs requests.\n\n", dur, rounds, version("caddy", "version"), version("haproxy", "-v"))
	fmt.Fprintf(&b.md, "| path | requests/s | vs direct | vs nginx | p50 | p99 |\n| --- | ---: | ---: | ---: | ---: | ---: |\n")
	base, ngx := medianF(results[0].rps), medianF(results[2].rps)
	for i, t := range targets {
		rps := medianF(results[i].rps)
		fmt.Fprintf(&b.md, "| %s | %.0f%s | %.2f | %.2f | %.2f ms | %.2f ms |\n", t.name, rps, spread(results[i].rps), rps/base, rps/ngx, medianF(results[i].p50), medianF(results[i].p99))
	}
	fd := medianF(results[1].rps)
	b.goal("HTTP front door at or above nginx proxy_pass (requests/s)", "≥ 1.00×", fd >= ngx, fmt.Sprintf("%.2f×", fd/ngx))
	b.md.WriteString("\n")
	return nil
}

// nginx runs Debian's nginx as a reverse proxy from addr to upstream, with a keepalive
// pool, as a user would put it in front of an always-running container.
func (b *bench) nginx(addr, upstream string) (stop func(), err error) {
	dir := filepath.Join(b.dir, "nginx")
	return runNginx(dir, addr, fmt.Sprintf(`worker_processes auto;
daemon off;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s;
  proxy_temp_path %[1]s;
  fastcgi_temp_path %[1]s;
  uwsgi_temp_path %[1]s;
  scgi_temp_path %[1]s;
  upstream app { server %[2]s; keepalive 32; }
  server {
    listen %[3]s;
    location / {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_pass http://app;
    }
  }
}
`, dir, upstream, addr))
}

// runNginx runs nginx in the foreground on conf, kept in dir, and waits until it listens
// on addr.
func runNginx(dir, addr, conf string) (stop func(), err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("making nginx's directory: %w", err)
	}
	path := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("writing nginx's config: %w", err)
	}
	cmd := exec.Command("nginx", "-p", dir, "-c", path)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting nginx: %w", err)
	}
	stop = func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
	if !waitListening(addr) {
		stop()
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		return nil, fmt.Errorf("nginx never listened on %s: %s%s", addr, out, tail(log, 2000))
	}
	return stop, nil
}
