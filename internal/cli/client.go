package cli

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/sact-project/sact/internal/admin"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/daemon"
)

// adminFlags are the flags that find a running sact's admin socket.
type adminFlags struct {
	config, socket, runDir *string
}

func newAdminFlags(fs *flag.FlagSet) adminFlags {
	return adminFlags{
		config: configFlag(fs),
		socket: fs.String("socket", "", "the admin socket (default: admin.socket of the config)"),
		runDir: fs.String("run-dir", envOr("SACT_RUN_DIR", "/run/sact"), "the run directory sact serve was given; $SACT_RUN_DIR"),
	}
}

// client returns an HTTP client speaking to the admin socket.
func (f adminFlags) client() (*http.Client, string, error) {
	sock := *f.socket
	if sock == "" {
		// Only admin.socket is read: the file may have been edited into an invalid
		// state, which `sact reload` must still be able to report.
		s, err := config.AdminSocketOf(*f.config)
		if err != nil {
			return nil, "", fmt.Errorf("finding the admin socket: %w (or give --socket)", err)
		}
		sock = daemon.AdminSocket(&config.Config{Admin: config.Admin{Socket: s}}, *f.runDir)
	}
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	return c, sock, nil
}

// unreachableError is a request that found no sact at the admin socket.
type unreachableError struct {
	sock string
	err  error
}

func (e *unreachableError) Error() string {
	return fmt.Sprintf("cannot reach sact at %s: %v; is `sact serve` running, and may you use its socket?", e.sock, e.err)
}

func (e *unreachableError) Unwrap() error { return e.err }

// call does one API request and decodes a JSON answer into out (if not nil).
func call(ctx context.Context, f adminFlags, method, path string, out any) error {
	c, sock, err := f.client()
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://sact"+path, nil)
	if err != nil {
		return err
	}
	resp, err := c.Do(req)
	if err != nil {
		return &unreachableError{sock: sock, err: err}
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode >= 300 {
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return fmt.Errorf("%s", e.Error)
		}
		return fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	if out == nil {
		return nil
	}
	if s, ok := out.(*string); ok {
		*s = string(body)
		return nil
	}
	return json.Unmarshal(body, out)
}

func status(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "status")
	af := newAdminFlags(fs)
	asJSON := fs.Bool("json", false, "print the API's JSON")
	// Flags may come before or after the name: sact status web -c /etc/sact/sact.yaml.
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		name := fs.Arg(0)
		if err := parse(fs, fs.Args()[1:]); err != nil {
			return err
		}
		return statusOne(ctx, e, af, name, *asJSON)
	}
	var list struct {
		Apps []admin.AppStatus `json:"apps"`
	}
	if *asJSON {
		var raw string
		if err := call(ctx, af, "GET", "/api/apps", &raw); err != nil {
			return err
		}
		fmt.Fprint(e.stdout, raw)
		return nil
	}
	if err := call(ctx, af, "GET", "/api/apps", &list); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	// A NODE column only when an app runs elsewhere (a swarm node): the table of a
	// single host stays as it was.
	nodes := slices.ContainsFunc(list.Apps, func(a admin.AppStatus) bool { return a.Node != "" })
	head := "APP\tSTATE\tSINCE\tOPEN\tMEMORY\tLAST ACTIVITY\tCOLD STARTS\tLAST START\tLAST STOP"
	if nodes {
		head += "\tNODE"
	}
	fmt.Fprintln(tw, head)
	now := time.Now()
	for _, a := range list.Apps {
		last := "never"
		if a.LastActivity != nil {
			last = ago(now, *a.LastActivity)
		}
		took := "-"
		if a.LastStartTook != "" {
			took = a.LastStartTook
		}
		stop := a.StopReason
		if stop == "" {
			stop = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%d\t%s\t%s", a.Name, a.State, ago(now, a.Since), a.Open, bytesText(a.Memory), last, a.ColdStarts, took, stop)
		if nodes {
			node := a.Node
			if node == "" {
				node = "-"
			}
			fmt.Fprintf(tw, "\t%s", node)
		}
		fmt.Fprintln(tw)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	// A broken app's reason is what its operator needs first; the table has no room.
	for _, a := range list.Apps {
		if a.State == "broken" && a.LastError != "" {
			fmt.Fprintf(e.stdout, "%s is broken: %s\n", a.Name, a.LastError)
		}
		if a.State != "broken" && a.DeployFailures > 0 && strings.HasPrefix(a.LastError, "deploy failed") {
			// The old version serves on: the new one's reason, its first line (the
			// new one's log lines are in sact status -json and the log).
			first, _, _ := strings.Cut(a.LastError, "\n")
			fmt.Fprintf(e.stdout, "%s: %s\n", a.Name, first)
		}
	}
	return nil
}

// bytesText writes a measured memory use for the table: "-" if unknown, else MiB (KiB
// below one).
func bytesText(n int64) string {
	switch {
	case n <= 0:
		return "-"
	case n < 1<<20:
		return fmt.Sprintf("%d KiB", n>>10)
	case n < 100<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

func ago(now, t time.Time) string {
	if t.IsZero() {
		return "-" // never: not 106751 days ago
	}
	d := now.Sub(t)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh ago", int(d.Hours()))
	}
	return fmt.Sprintf("%dd ago", int(d.Hours()/24))
}

// appCommand is start, stop and logs: one app name.
func appCommand(name, method, action string) func(ctx context.Context, e *env, args []string) error {
	return func(ctx context.Context, e *env, args []string) error {
		fs := newFlags(e, name)
		af := newAdminFlags(fs)
		tail := 100
		var follow, all bool
		parallel := 2
		if action == "logs" {
			fs.IntVar(&tail, "n", 100, "how many of the last lines")
			fs.BoolVar(&follow, "f", false, "follow: print new lines as they come, across the app's restarts, until interrupted")
		}
		if action == "start" {
			fs.BoolVar(&all, "all", false, "start every app, as a smoke test; prints ok or failed (with why) and the time of each; exit code 1 if any failed")
			fs.IntVar(&parallel, "j", 2, "with --all: how many apps to start at once")
		}
		// Flags may come before or after the name: sact stop web -c /etc/sact/sact.yaml.
		if err := fs.Parse(args); err != nil {
			return err
		}
		if all {
			if err := parse(fs, fs.Args()); err != nil {
				return errUsage{"--all starts every app: give no name with it"}
			}
			return startAll(ctx, e, af, parallel)
		}
		if fs.NArg() == 0 {
			return errUsage{"give one app name, like: sact " + name + " web"}
		}
		name := fs.Arg(0)
		app := url.PathEscape(name)
		if err := parse(fs, fs.Args()[1:]); err != nil {
			return err
		}
		if action == "logs" && follow {
			return followLogs(ctx, e, af, name, tail)
		}
		if action == "logs" {
			var text string
			if err := call(ctx, af, "GET", fmt.Sprintf("/api/apps/%s/logs?tail=%d", app, tail), &text); err != nil {
				return err
			}
			fmt.Fprint(e.stdout, text)
			return nil
		}
		var st admin.AppStatus
		if err := call(ctx, af, method, "/api/apps/"+app+"/"+action, &st); err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "%s: %s\n", st.Name, st.State)
		return nil
	}
}

// reload asks the running sact to re-read its config and prints what changed; a refused
// config is an error (exit 1) with the reasons, and the old config keeps running.
func reload(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "reload")
	af := newAdminFlags(fs)
	if err := parse(fs, args); err != nil {
		return err
	}
	var res admin.ReloadResult
	if err := call(ctx, af, "POST", "/api/reload", &res); err != nil {
		var unreachable *unreachableError
		if errors.As(err, &unreachable) {
			// Say what is wrong with the file, if anything, rather than only that sact
			// was not found.
			if _, cerr := config.Load(*af.config, configOptions); cerr != nil {
				return fmt.Errorf("%w\n(and %v)", cerr, err)
			}
			return err
		}
		return fmt.Errorf("%w\nthe running config was kept", err)
	}
	list := func(names []string) string {
		if len(names) == 0 {
			return "-"
		}
		return strings.Join(names, ", ")
	}
	fmt.Fprintf(e.stdout, "reloaded: added %s; changed %s; removed %s; %d unchanged\n",
		list(res.Added), list(res.Changed), list(res.Removed), res.Unchanged)
	for _, r := range res.Restart {
		fmt.Fprintf(e.stdout, "not applied until sact restarts: %s\n", r)
	}
	return nil
}
