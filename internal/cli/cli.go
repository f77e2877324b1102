// Package cli implements sact's command line: flags and subcommands, nothing else. Each
// subcommand hands over to the package that does the work.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"slices"
	"sort"
	"syscall"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/daemon"
	"github.com/sact-project/sact/internal/handoff"
	"github.com/sact-project/sact/internal/kinds"
	"github.com/sact-project/sact/internal/listen"
	"github.com/sact-project/sact/internal/sockdiag/bpfwatch"
)

// DefaultConfig is where sact looks for its config when -c is not given.
const DefaultConfig = "/etc/sact/sact.yaml"

type command struct {
	usage string
	run   func(ctx context.Context, env *env, args []string) error
}

var commands map[string]command

func init() {
	// Filled here rather than in the declaration because help refers to the map itself.
	commands = map[string]command{
		"serve":   {"serve [-c FILE]   run the daemon", serve},
		"check":   {"check [-c FILE]   validate the config; errors name file:line", check},
		"demo":    {"demo              build a tiny image offline, serve it, show a cold start and an idle stop", demo},
		"help":    {"help [COMMAND]    show this help, or one command's", help},
		"shim":    {"shim -- CMD...    (inside a container) receive the listening sockets, then exec CMD", shim},
		"status":  {"status [-c FILE] [NAME]  table of apps: state, since, open connections, last activity, cold starts; with NAME, that app in full", status},
		"start":   {"start NAME | --all  start an app and wait until it is ready; --all: every app, as a smoke test, with a summary", appCommand("start", "POST", "start")},
		"stop":    {"stop NAME         stop an app, closing its connections", appCommand("stop", "POST", "stop")},
		"pause":   {"pause NAME        freeze a running app; the next connection thaws it", appCommand("pause", "POST", "pause")},
		"logs":    {"logs [-n N] [-f] NAME  the app's last log lines; -f: and then new ones as they come", appCommand("logs", "GET", "logs")},
		"events":  {"events [NAME]     what happens to apps, as JSON lines, until interrupted: starts, stops, failures, evictions, deploys", eventsCmd},
		"reload":  {"reload [-c FILE]  re-read the config: apps added, changed, removed; open connections kept", reload},
		"restart": {"restart [NAME]    with NAME, restart that app; without, (without systemd) start sact anew on the same sockets: nothing refused, running apps adopted", restart},
		"import":  {"import [-o DIR] NGINX_CONF  sact config, Dockerfiles and nginx sites for the Passenger apps of an nginx config", importCmd},
		"build":   {"build [--base IMAGE=OTHER]... [NAME...]  build the images of the apps sact import wrote next to the config (-c)", build},
	}
}

// env is what a subcommand may touch of the outside world.
type env struct {
	stdout, stderr io.Writer
	helpOnly       bool // sact help COMMAND: -h prints only the flags
}

// errUsage makes Run exit 2 after the message is printed.
type errUsage struct{ msg string }

func (e errUsage) Error() string { return e.msg }

// Run runs sact with args (without the program name) and returns the exit code.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if toJournal() && stderr == os.Stderr {
		stderr = &errPrefixer{w: stderr}
	}
	e := &env{stdout: stdout, stderr: stderr}
	if len(args) == 0 {
		help(ctx, e, nil)
		return 2
	}
	cmd, ok := commands[args[0]]
	if !ok {
		if args[0] == "-h" || args[0] == "--help" {
			help(ctx, e, nil)
			return 0
		}
		fmt.Fprintf(stderr, "sact: unknown command %q; run `sact help` for the list\n", args[0])
		return 2
	}
	err := cmd.run(ctx, e, args[1:])
	var usage errUsage
	var code exitCode
	switch {
	case errors.As(err, &code):
		return int(code)
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.As(err, &usage):
		fmt.Fprintf(stderr, "sact %s: %s\n", args[0], usage.msg)
		return 2
	default:
		fmt.Fprintf(stderr, "sact %s: %v\n", args[0], err)
		return 1
	}
}

// shim is the container side of handoff mode. It must run before anything opens a file or
// socket, which is why it gets no flags of its own.
func shim(_ context.Context, e *env, args []string) error {
	err := handoff.Shim(args, os.Environ())
	fmt.Fprintf(e.stderr, "sact shim: %v\n", err)
	return exitCode(handoff.ExitCode(err))
}

// exitCode makes Run exit with a specific code, having printed nothing more.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit code %d", int(c)) }

func help(ctx context.Context, e *env, args []string) error {
	if len(args) > 0 {
		return commandHelp(ctx, e, args[0])
	}
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintln(e.stdout, "sact: socket activation for Docker containers\n\nusage: sact COMMAND [flags]")
	for _, n := range names {
		fmt.Fprintf(e.stdout, "  sact %s\n", commands[n].usage)
	}
	fmt.Fprintln(e.stdout, "\n`sact help COMMAND` describes one command and its flags.")
	return nil
}

func newFlags(e *env, name string) *flag.FlagSet {
	fs := flag.NewFlagSet("sact "+name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = flagsUsage(e, fs, name)
	return fs
}

func configFlag(fs *flag.FlagSet) *string {
	def := DefaultConfig
	if v := os.Getenv("SACT_CONFIG"); v != "" {
		def = v
	}
	p := fs.String("c", def, "config file (env SACT_CONFIG)")
	fs.StringVar(p, "config", def, "config file (same as -c)")
	return p
}

func parse(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return errUsage{fmt.Sprintf("unexpected argument %q", fs.Arg(0))}
	}
	return nil
}

func check(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "check")
	path := configFlag(fs)
	labels := labelsFlag(fs)
	deep := fs.Bool("deep", false, "also ask the engine whether each image exists, each user exists in it and each port is exposed")
	if err := parse(fs, args); err != nil {
		return err
	}
	cfg, err := config.Load(*path, configOptions)
	if err != nil {
		return configError(e, err)
	}
	if err := trustedConfigFile(*path); err != nil {
		return err // sact serve would refuse it
	}
	if *deep {
		if err := deepCheck(ctx, e, cfg); err != nil {
			return err
		}
	}
	labelled, err := addLabelApps(ctx, cfg, *labels)
	if err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			return configError(e, err)
		}
		fmt.Fprintf(e.stderr, "note: apps declared by container labels were not checked: %v\n", err)
	}
	fmt.Fprintf(e.stdout, "%s: ok, %d apps (%d from container labels)\n", *path, len(cfg.Apps), labelled)
	if slices.ContainsFunc(cfg.Apps, func(a *config.App) bool { return a.Handoff }) {
		checkCounters(e)
	}
	return nil
}

// checkCounters says how sact, run as this user here, will judge handoff apps idle: from
// the kernel's count of every connection (eBPF), or from sock_diag snapshots.
func checkCounters(e *env) {
	switch err := bpfwatch.Check(bpfwatch.Options{}); {
	case err == nil:
		fmt.Fprintln(e.stdout, "handoff: every connection and byte of handoff apps is counted in the kernel (eBPF)")
	case errors.Is(err, bpfwatch.ErrUnixUnsupported):
		fmt.Fprintf(e.stdout, "note: connections to handoff apps' unix sockets cannot be counted in the kernel here (%v); they will be judged from sock_diag snapshots and CPU time (Linux 6.7 or later counts them)\n", err)
	default:
		fmt.Fprintf(e.stdout, "note: handoff apps will be judged idle from sock_diag snapshots, which miss connections that open and close between two looks, so a busy app may be stopped: %v; sact counts every connection when it runs as root on Linux 5.7 or later with BTF\n", err)
	}
}

// configOptions parse sact's config: every kind this build has, on this machine.
var configOptions = config.Options{Kinds: kinds.All, Host: config.OS{}}

// addLabelApps adds the apps that containers declare with labels (sact.enable=true), of
// every kind that has such apps (backend.LabelSource). A config.Errors error is about the
// labels; any other, about reaching the engine.
func addLabelApps(ctx context.Context, cfg *config.Config, selector string) (int, error) {
	if selector == "" {
		return 0, nil
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var apps []config.LabelApp
	for _, k := range kinds.All {
		if src, ok := k.(backend.LabelSource); ok {
			la, err := src.Labelled(lctx, selector)
			if err != nil {
				return 0, err
			}
			apps = append(apps, la...)
		}
	}
	return len(apps), cfg.AddLabelApps(apps)
}

// configError prints every config problem on its own line and returns a short summary.
func configError(e *env, err error) error {
	var errs config.Errors
	if errors.As(err, &errs) {
		for _, x := range errs {
			fmt.Fprintln(e.stderr, x)
		}
		return fmt.Errorf("%d problem(s) in the config; nothing was changed", len(errs))
	}
	return err
}

func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, errUsage{fmt.Sprintf("-log-level %q: use debug, info, warn or error", level)}
	}
	o := &slog.HandlerOptions{Level: lv, ReplaceAttr: readableDurations}
	switch logFormat(format) {
	case "text":
		return slog.New(slog.NewTextHandler(w, o)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, o)), nil
	case "journal":
		return slog.New(newJournalHandler(w, o)), nil
	}
	return nil, errUsage{fmt.Sprintf("-log-format %q: use text, json or journal", format)}
}

// trustedConfigFile refuses a config that a user other than root (or sact's own) may
// change: whoever writes sact.yaml runs commands and containers as root. It looks through
// configOptions.Host, as parsing does, and apart from it: parsing checks no ownership.
func trustedConfigFile(path string) error {
	fi, err := configOptions.Host.Stat(path)
	if err != nil {
		return nil // config.Load says what is wrong with it
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if st.Uid != 0 && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%s belongs to uid %d: whoever may write the config runs commands and containers as root; chown root %s", path, st.Uid, path)
	}
	if fi.Mode().Perm()&0o002 != 0 {
		return fmt.Errorf("%s is writable by every user (mode %#o): whoever may write the config runs commands and containers as root; chmod o-w %s", path, fi.Mode().Perm(), path)
	}
	return nil
}

func serve(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "serve")
	path := configFlag(fs)
	format := fs.String("log-format", "", "log format: text (logfmt), json (for log shippers), or journal (logfmt without a timestamp, with syslog priorities); default journal when stderr is systemd's journal (JOURNAL_STREAM), else text")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	runDir := fs.String("run-dir", envOr("SACT_RUN_DIR", "/run/sact"), "directory for sact's runtime state (handoff sockets); $SACT_RUN_DIR")
	labels := labelsFlag(fs)
	stateDir := fs.String("state-dir", envOr("SACT_STATE_DIR", "/var/lib/sact"), "directory for state kept across restarts (apps' last activity); $SACT_STATE_DIR")
	if err := parse(fs, args); err != nil {
		return err
	}
	handedOver := takeHandover() // before anything takes the sockets
	log, err := newLogger(e.stderr, *format, *level)
	if err != nil {
		return err
	}
	// A unix socket exists with the umask's mode between bind and the chmod that follows:
	// never one that lets other users connect (and be trusted) in that moment.
	syscall.Umask(syscall.Umask(0o022) | 0o022)
	if err := trustedConfigFile(*path); err != nil {
		return err
	}
	// Absolute, since handoff mounts paths in it into containers; made if missing (after a
	// reboot /run is empty) with a mode that lets nginx reach the sockets in it.
	if *runDir, err = filepath.Abs(*runDir); err != nil {
		return fmt.Errorf("-run-dir: %w", err)
	}
	if err := os.MkdirAll(*runDir, 0o755); err != nil {
		return fmt.Errorf("making the run dir: %w; give -run-dir a directory sact may create", err)
	}
	cfg, err := config.Load(*path, configOptions)
	if err != nil {
		return configError(e, err)
	}
	if err := trustedConfigFiles(cfg); err != nil {
		return err
	}
	if n, err := addLabelApps(ctx, cfg, *labels); err != nil {
		var errs config.Errors
		if errors.As(err, &errs) {
			return configError(e, err)
		}
		log.Warn("cannot look for apps declared by container labels", "reason", err)
	} else if n > 0 {
		log.Info("apps declared by container labels", "count", n)
	}
	// A reload reads the file and the labels again; unlike at startup, labels that
	// cannot be listed fail the reload, or their apps would be removed.
	load := func(ctx context.Context) (*config.Config, error) {
		cfg, err := config.Load(*path, configOptions)
		if err != nil {
			return nil, err
		}
		if err := trustedConfigFiles(cfg); err != nil {
			return nil, err
		}
		if _, err := addLabelApps(ctx, cfg, *labels); err != nil {
			return nil, fmt.Errorf("apps declared by container labels: %w", err)
		}
		return cfg, nil
	}
	if os.Getenv("GOGC") == "" {
		// sact's heap is a few MB; collecting it at 5x instead of 2x its live size costs
		// little memory and measurably less CPU per proxied request (BENCHMARKS.md).
		debug.SetGCPercent(400)
	}
	// SIGTERM or SIGINT: stop. Under systemd, the sockets sact bound itself go into its
	// file descriptor store first, so that `systemctl restart sact` refuses nothing on them.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	// The watchdog's SIGABRT (sact stopped answering) stores them too, then crashes with
	// the goroutine dump as Go does on SIGABRT.
	term := make(chan os.Signal, 1)
	signal.Notify(term, syscall.SIGTERM, syscall.SIGINT)
	defer signal.Stop(term)
	abort := make(chan os.Signal, 1)
	if os.Getenv("NOTIFY_SOCKET") != "" {
		signal.Notify(abort, syscall.SIGABRT)
	}
	stopped := ctx // ctx is replaced below, while this goroutine runs
	go func() {
		select {
		case <-term:
		case <-abort:
			if n, err := listen.StoreInSystemd(); err == nil && n > 0 {
				log.Error("watchdog: sact did not answer in time; its listening sockets are kept in systemd for the next sact", "count", n)
			}
			signal.Reset(syscall.SIGABRT)
			syscall.Kill(os.Getpid(), syscall.SIGABRT)
			return
		case <-stopped.Done():
			return
		}
		if n, err := listen.StoreInSystemd(); err != nil {
			log.Warn("cannot keep the listening sockets in systemd across the restart; connections are refused until sact is back", "reason", err, "hint", "set FileDescriptorStoreMax= in sact.service")
		} else if n > 0 {
			listen.KeepSocketFiles() // the stored unix sockets keep their paths
			log.Info("listening sockets kept in systemd's file descriptor store", "count", n)
		}
		stop()
	}()
	// SIGUSR2 (sact restart): hand the sockets over to a new sact, then exit as on SIGTERM.
	ctx, exitForNew := context.WithCancel(ctx)
	defer exitForNew()
	usr2 := make(chan os.Signal, 1)
	signal.Notify(usr2, syscall.SIGUSR2)
	defer signal.Stop(usr2)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-usr2:
			}
			if err := handOver(log); err != nil {
				log.Error("cannot restart; this sact keeps serving", "reason", err)
				continue
			}
			log.Info("new sact serves; this one stops accepting and exits once its connections end")
			listen.KeepSocketFiles()
			exitForNew()
			return
		}
	}()
	defer removePidFile(*runDir)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default: // one is pending already: it reads the newest file
			}
		}
	}()
	inherited := listen.FromSystemd
	if handedOver != nil {
		inherited = listen.FromHandover
	}
	return daemon.Run(ctx, cfg, daemon.Options{
		Logger: log, RunDir: *runDir,
		StateFile: filepath.Join(*stateDir, "activity.json"),
		Inherited: inherited(), Notify: true,
		Load: load, Reload: reload,
		Ready: func(map[string][]net.Addr) {
			if err := writePidFile(*runDir); err != nil {
				log.Warn("cannot write the pid file; sact restart will not find this sact", "path", filepath.Join(*runDir, pidFileName), "reason", err)
			}
			if handedOver != nil {
				handedOver()
			}
		},
	})
}

// readableDurations writes durations as "1.5s" in JSON too, not as nanoseconds: log lines
// are read by people first.
func readableDurations(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		return slog.String(a.Key, a.Value.Duration().String())
	}
	return a
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func labelsFlag(fs *flag.FlagSet) *string {
	return fs.String("labels", "sact.enable=true", `containers with this label are apps too (their sact.* labels are their settings); "" turns it off`)
}
