package cli

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"sync"
	"text/tabwriter"
	"time"

	"github.com/sact-project/sact/internal/admin"
)

// open does one API request whose answer is read as it comes (logs -f, events); the
// caller closes the body.
func open(ctx context.Context, f adminFlags, path string) (io.ReadCloser, error) {
	c, sock, err := f.client()
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, "GET", "http://sact"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return nil, &unreachableError{sock: sock, err: err}
	}
	if resp.StatusCode >= 300 {
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		var e struct{ Error string }
		if json.Unmarshal(body, &e) == nil && e.Error != "" {
			return nil, fmt.Errorf("%s", e.Error)
		}
		return nil, fmt.Errorf("%s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	return resp.Body, nil
}

// events prints the running sact's events as JSON lines until interrupted.
func eventsCmd(ctx context.Context, e *env, args []string) error {
	fs := newFlags(e, "events")
	af := newAdminFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	path := "/api/events"
	if fs.NArg() > 0 {
		path += "?app=" + url.QueryEscape(fs.Arg(0))
		if err := parse(fs, fs.Args()[1:]); err != nil {
			return err
		}
	}
	body, err := open(ctx, af, path)
	if err != nil {
		return err
	}
	defer body.Close()
	sc := bufio.NewScanner(body)
	sc.Buffer(make([]byte, 64<<10), 4<<20) // an event holds a failed start's log lines
	for sc.Scan() {
		if data, ok := strings.CutPrefix(sc.Text(), "data: "); ok {
			if _, err := fmt.Fprintln(e.stdout, data); err != nil {
				return nil // stdout closed (| head): done
			}
		}
	}
	if ctx.Err() != nil {
		return nil
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading the event stream: %w", err)
	}
	return fmt.Errorf("sact ended the event stream (it stopped or restarted)")
}

// followLogs prints an app's log lines as they come until interrupted.
func followLogs(ctx context.Context, e *env, af adminFlags, app string, tail int) error {
	body, err := open(ctx, af, fmt.Sprintf("/api/apps/%s/logs?follow=1&tail=%d", url.PathEscape(app), tail))
	if err != nil {
		return err
	}
	defer body.Close()
	if _, err := io.Copy(e.stdout, body); err != nil && ctx.Err() == nil {
		return fmt.Errorf("following the logs: %w", err)
	}
	return nil
}

// statusOne prints one app in full: every field the API gives, in its order, times
// with how long ago, the last error whole.
func statusOne(ctx context.Context, e *env, af adminFlags, app string, asJSON bool) error {
	var raw string
	if err := call(ctx, af, "GET", "/api/apps/"+url.PathEscape(app), &raw); err != nil {
		return err
	}
	if asJSON {
		fmt.Fprint(e.stdout, raw)
		return nil
	}
	dec := json.NewDecoder(strings.NewReader(raw))
	dec.UseNumber()
	if t, err := dec.Token(); err != nil || t != json.Delim('{') {
		return fmt.Errorf("the API's answer is not an object: %.200s", raw)
	}
	now := time.Now()
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	var long []string // multi-line values go after the table
	for dec.More() {
		k, err := dec.Token()
		if err != nil {
			return err
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			return err
		}
		key := fmt.Sprint(k)
		text := showValue(key, v, now)
		if strings.Contains(text, "\n") {
			long = append(long, fmt.Sprintf("%s:\n  %s", key, strings.ReplaceAll(strings.TrimRight(text, "\n"), "\n", "\n  ")))
			text = "(below)"
		}
		fmt.Fprintf(tw, "%s:\t%s\n", key, text)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, l := range long {
		fmt.Fprintf(e.stdout, "\n%s\n", l)
	}
	return nil
}

// showValue is one field of sact status NAME.
func showValue(key string, v any, now time.Time) string {
	switch x := v.(type) {
	case nil:
		return "-"
	case string:
		if t, err := time.Parse(time.RFC3339Nano, x); err == nil && len(x) >= 20 {
			return fmt.Sprintf("%s (%s)", t.Local().Format("2006-01-02 15:04:05"), ago(now, t))
		}
		if x == "" {
			return "-"
		}
		return x
	case json.Number:
		if strings.HasSuffix(key, "_bytes") || key == "memory" {
			if n, err := x.Int64(); err == nil {
				return fmt.Sprintf("%s (%.1f MiB)", x, float64(n)/(1<<20))
			}
		}
		return x.String()
	case []any:
		if key == "activity_days" {
			total, active := 0, 0
			var last []string
			for i, d := range x {
				n, _ := d.(json.Number).Int64()
				total += int(n)
				if n > 0 {
					active++
				}
				if i >= len(x)-7 {
					last = append(last, d.(json.Number).String())
				}
			}
			return fmt.Sprintf("%d connections on %d of the last %d days; the last 7 days: %s", total, active, len(x), strings.Join(last, " "))
		}
		parts := make([]string, len(x))
		for i, p := range x {
			parts[i] = showValue("", p, now)
		}
		return strings.Join(parts, ", ")
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		parts := make([]string, len(keys))
		for i, k := range keys {
			parts[i] = k + "=" + showValue(k, x[k], now)
		}
		return strings.Join(parts, " ")
	}
	return fmt.Sprint(v)
}

// startAll starts every app, at most parallel at once, as a smoke test, and prints a
// summary table; any failure makes the exit code 1.
func startAll(ctx context.Context, e *env, af adminFlags, parallel int) error {
	var list struct {
		Apps []admin.AppStatus `json:"apps"`
	}
	if err := call(ctx, af, "GET", "/api/apps", &list); err != nil {
		return err
	}
	type result struct {
		name string
		took time.Duration
		err  error
	}
	results := make([]result, len(list.Apps))
	sem := make(chan struct{}, max(parallel, 1))
	var wg sync.WaitGroup
	for i, a := range list.Apps {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			began := time.Now()
			var st admin.AppStatus
			err := call(ctx, af, "POST", "/api/apps/"+url.PathEscape(a.Name)+"/start", &st)
			results[i] = result{name: a.Name, took: time.Since(began), err: err}
		})
	}
	wg.Wait()
	tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "APP\tRESULT\tTIME\tREASON")
	failed := 0
	var details bytes.Buffer
	for _, r := range results {
		res, reason := "ok", ""
		if r.err != nil {
			failed++
			res = "failed"
			// "start NAME: " repeats the row's name.
			reason, _, _ = strings.Cut(strings.TrimPrefix(r.err.Error(), "start "+r.name+": "), "\n")
			fmt.Fprintf(&details, "\n%s:\n  %s\n", r.name, strings.ReplaceAll(strings.TrimSpace(r.err.Error()), "\n", "\n  "))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.name, res, r.took.Round(time.Millisecond), reason)
	}
	tw.Flush()
	if failed > 0 {
		fmt.Fprintf(e.stdout, "\nwhy they failed, in full:%s", details.String())
	}
	fmt.Fprintf(e.stdout, "\n%d apps: %d ok, %d failed\n", len(results), len(results)-failed, failed)
	if failed > 0 {
		return exitCode(1)
	}
	return nil
}
