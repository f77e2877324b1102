package cli

import (
	"context"
	"flag"
	"fmt"
	"strings"
)

// details are what `sact help COMMAND` says beyond the one-line usage and the flags.
var details = map[string]string{
	"serve": `Runs the daemon: binds every app's listen: addresses (or takes them from systemd,
LISTEN_FDS, matched by FileDescriptorName= or address), starts an app on its first
connection and stops it after idle:. Signals: SIGHUP reloads the config (as sact reload),
SIGUSR2 restarts on the same sockets (as sact restart), SIGTERM or SIGINT stops accepting,
lets open connections finish (10 s) and exits, leaving the apps running for the next sact
to adopt. Under systemd it sends READY once every listener is bound and pings the watchdog.
Files: -c (default /etc/sact/sact.yaml), -run-dir (sact.pid, admin.sock, handoff
directories; made 0755 if missing), -state-dir (apps' last activity, the admin token).`,
	"restart": `With NAME: restarts that app through the admin API: a running (or paused) app is
stopped, closing its connections, and started again; a stopped one is started. It waits
until the app is ready and fails (exit 1, with the app's last log lines) if it cannot start.

Without NAME, and without systemd: the running sact (found by sact.pid in -run-dir) starts its own
binary again with the same arguments and passes it every listening socket, as nginx
upgrades its binary. The new sact adopts the running apps; once it serves, the old one stops
accepting, lets its open connections finish and exits. No connection is refused. If the new
sact fails, the old one keeps serving and logs why. Under systemd, use
"systemctl restart sact": sact.socket and sact-app@NAME.socket hold the sockets.`,
	"reload": `Asks the running sact to read the config and the container labels again and apply
the difference while serving: unchanged apps keep their sockets, connections and
containers. A config with any problem is refused with the problems listed, and the running
config stays; the exit code is then 1 (so "systemctl reload sact" fails visibly).`,
	"status": `Without NAME: one line per app. With NAME: that app in full, every field the API
gives (state, since, connections, last activity, cold starts, the last start's time, stops
by reason, memory where measured, its kind, listeners and hosts, the days it was used), and
its last error whole, with the app's last log lines. --json prints the API's JSON.`,
	"start": `Starts the app and waits until it is ready (its upstream accepts); a failed start is
exit 1 with why, including the app's last log lines. --all starts every app, -j at once
(default 2; the pool's max_running and start_concurrency still apply, so with more apps than
max_running the first ones are evicted again), and prints a table: app, ok or failed, how
long it took, and the first line of why; then every failure in full. The exit code is 1 if
any failed: a smoke test after an upgrade of the host or of the images.`,
	"logs": `Prints the app's last lines (-n, default 100) with timestamps. -f then goes on with new
lines as the app writes them, until interrupted; when the app stops it waits for its next
start and goes on from there (docker's logs; a command: app has no -f).`,
	"events": `Prints what happens to the apps of the running sact, one JSON object per line, until
interrupted (or until sact stops): {"kind", "app", "time", "reason", "details", "took"}.
Kinds: start, start_failed (details: why, with the app's last log lines), stop (reason:
idle, manual, restart, config changed, ...), evict (stopped to make room: max_running,
memory_budget), exit (the app stopped on its own: reason exited, oom-killed, ...), pause,
deploy. A reader that does not keep up misses
events rather than slowing sact down; a {"kind":"lost","lost":N} line marks where. With
NAME, only that app's events. The same stream is GET /api/events (server-sent events).`,
	"check": `Validates the config as sact serve would read it, without starting anything. Every
problem is listed as file:line: key: what is wrong and how to fix it; the exit code is 1 if
there is any.`,
}

// commandHelp prints the usage, the details and the flags of one command.
func commandHelp(ctx context.Context, e *env, name string) error {
	cmd, ok := commands[name]
	if !ok {
		return errUsage{fmt.Sprintf("unknown command %q; run `sact help` for the list", name)}
	}
	syntax, what := splitUsage(cmd.usage)
	fmt.Fprintf(e.stdout, "usage: sact %s\n\n%s\n", syntax, what)
	if d := details[name]; d != "" {
		fmt.Fprintf(e.stdout, "\n%s\n", d)
	}
	switch name {
	case "help", "shim": // no flags; shim would run
		return nil
	}
	// The command prints its flags on -h, through newFlags's Usage, to stderr: here stdout.
	err := cmd.run(ctx, &env{stdout: e.stdout, stderr: e.stdout, helpOnly: true}, []string{"-h"})
	if err == flag.ErrHelp {
		return nil
	}
	return err
}

// flagsUsage prints a command's flags for -h.
func flagsUsage(e *env, fs *flag.FlagSet, name string) func() {
	return func() {
		out := fs.Output()
		if !e.helpOnly {
			syntax, _ := splitUsage(commands[name].usage)
			fmt.Fprintf(out, "usage: sact %s\n", syntax)
		}
		has := false
		fs.VisitAll(func(*flag.Flag) { has = true })
		if has {
			fmt.Fprintln(out, "\nflags:")
			fs.PrintDefaults()
		}
	}
}

// splitUsage splits a usage line, "restart           what it does", in two.
func splitUsage(u string) (syntax, what string) {
	if i := strings.Index(u, "  "); i >= 0 {
		return u[:i], strings.TrimSpace(u[i:])
	}
	return u, ""
}
