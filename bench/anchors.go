package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The front door's anchors next to nginx (issue 17): the reverse proxies users know, each
// from Debian, configured as a user would put it in front of one always-running container:
// keep-alive to the upstream, no access log, as many workers or threads as cores.

// caddy runs Debian's caddy as `reverse_proxy` from addr to upstream. Its HTTP transport
// keeps upstream connections alive by default.
func (b *bench) caddy(addr, upstream string) (stop func(), err error) {
	dir := filepath.Join(b.dir, "caddy")
	host, port, _ := strings.Cut(addr, ":")
	conf := fmt.Sprintf(`{
	admin off
	auto_https off
	storage file_system %[1]s
}
:%[3]s {
	bind %[2]s
	reverse_proxy %[4]s
}
`, dir, host, port, upstream)
	return runProxy("caddy", dir, addr, "Caddyfile", conf, func(path string) *exec.Cmd {
		cmd := exec.Command("caddy", "run", "--config", path, "--adapter", "caddyfile")
		// Its data and config directories, which it would otherwise make in $HOME.
		cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_DATA_HOME="+dir, "XDG_CONFIG_HOME="+dir)
		return cmd
	})
}

// haproxy runs Debian's haproxy in HTTP mode from addr to upstream, with its default
// connection reuse to the server (http-reuse safe) and one thread per core (its default).
func (b *bench) haproxy(addr, upstream string) (stop func(), err error) {
	dir := filepath.Join(b.dir, "haproxy")
	conf := fmt.Sprintf(`global
	pidfile %[1]s/haproxy.pid
defaults
	mode http
	option http-keep-alive
	option forwardfor
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend bench
	bind %[2]s
	default_backend app
backend app
	server app %[3]s
`, dir, addr, upstream)
	return runProxy("haproxy", dir, addr, "haproxy.cfg", conf, func(path string) *exec.Cmd {
		return exec.Command("haproxy", "-db", "-f", path) // -db: foreground, no daemon
	})
}

// runProxy writes conf as file in dir, runs the proxy command made from its path in the
// foreground and waits until it listens on addr.
func runProxy(name, dir, addr, file, conf string, command func(path string) *exec.Cmd) (stop func(), err error) {
	if _, err := exec.LookPath(name); err != nil {
		return nil, fmt.Errorf("%s is missing (apt-get install %s, see scripts/install-deps): %w", name, name, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("making %s's directory: %w", name, err)
	}
	path := filepath.Join(dir, file)
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, fmt.Errorf("writing %s's config: %w", name, err)
	}
	cmd := command(path)
	out := &strings.Builder{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	stop = func() { cmd.Process.Signal(os.Interrupt); cmd.Wait() }
	if !waitListening(addr) {
		stop()
		return nil, fmt.Errorf("%s never listened on %s: %s", name, addr, tail([]byte(out.String()), 2000))
	}
	return stop, nil
}

// version is the first word that looks like a version in `name arg`'s output, or "".
func version(name, arg string) string {
	out, err := exec.Command(name, arg).Output()
	if err != nil {
		return ""
	}
	for _, f := range strings.Fields(string(out)) {
		f = strings.TrimPrefix(f, "v")
		if f != "" && f[0] >= '0' && f[0] <= '9' && strings.Contains(f, ".") {
			return f
		}
	}
	return ""
}
