package admin

import (
	"context"
	"encoding/csv"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

const (
	// maxStreams bounds the open event streams and log follows: each holds a
	// goroutine and a queue, and a loopback peer needs no credential for events.
	maxStreams = 64
	// keepAlive is how often an idle event stream sends a comment, so that proxies and
	// clients see it alive and a gone client is noticed.
	keepAlive = 20 * time.Second
	// writeWait bounds one write to a stream's client: one that does not read is dropped.
	writeWait = 10 * time.Second
)

// flushWriter writes to an HTTP response and flushes after each write, each bounded by
// writeWait.
type flushWriter struct {
	rc *http.ResponseController
	w  http.ResponseWriter
}

func (f flushWriter) Write(p []byte) (int, error) {
	f.rc.SetWriteDeadline(time.Now().Add(writeWait))
	n, err := f.w.Write(p)
	if err == nil {
		err = f.rc.Flush()
	}
	return n, err
}

// stream takes one of the maxStreams slots, or answers 503 and returns false.
func (s *Server) stream(w http.ResponseWriter) (release func(), ok bool) {
	if s.streams.Add(1) > maxStreams {
		s.streams.Add(-1)
		writeJSON(w, http.StatusServiceUnavailable, map[string]string{"error": fmt.Sprintf("%d event streams and log follows are open already; close one", maxStreams)})
		return nil, false
	}
	return func() { s.streams.Add(-1) }, true
}

// events streams GET /api/events as server-sent events: one "data:" line of JSON per
// event (?app=NAME: only that app's, and the "lost" markers). A client that does not
// keep up loses events, marked by a "lost" event; it never slows sact down.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if s.opts.Events == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "this sact has no event stream"})
		return
	}
	release, ok := s.stream(w)
	if !ok {
		return
	}
	defer release()
	only := r.URL.Query().Get("app")
	sub := s.opts.Events.Subscribe(0)
	defer sub.Close()
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no") // nginx in front must not hold it back
	w.WriteHeader(http.StatusOK)
	out := flushWriter{rc: http.NewResponseController(w), w: w}
	if _, err := io.WriteString(out, ": sact events\n\n"); err != nil {
		return
	}
	s.log.Debug("event stream opened", "remote", r.RemoteAddr, "app", only)
	defer s.log.Debug("event stream closed", "remote", r.RemoteAddr, "app", only)
	for id := 1; ; {
		ctx, cancel := context.WithTimeout(r.Context(), keepAlive)
		e, err := sub.Next(ctx)
		cancel()
		if r.Context().Err() != nil {
			return
		}
		var msg string
		switch {
		case err != nil:
			msg = ": keep-alive\n\n"
		case only != "" && e.App != only && e.App != "":
			continue
		default:
			b, _ := json.Marshal(e)
			msg = fmt.Sprintf("id: %d\ndata: %s\n\n", id, b)
			id++
		}
		if _, err := io.WriteString(out, msg); err != nil {
			return
		}
	}
}

// followLogs answers logs?follow=1: the last lines, then the new ones as they come.
func (s *Server) followLogs(w http.ResponseWriter, r *http.Request, app string, tail int) {
	if s.opts.FollowLogs == nil {
		writeJSON(w, http.StatusNotImplemented, map[string]string{"error": "this app's runtime cannot follow logs; use sact logs without -f"})
		return
	}
	release, ok := s.stream(w)
	if !ok {
		return
	}
	defer release()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Accel-Buffering", "no")
	out := flushWriter{rc: http.NewResponseController(w), w: w}
	if err := s.opts.FollowLogs(r.Context(), app, tail, out); err != nil && r.Context().Err() == nil {
		// The status is sent already: the error goes in the text, where the reader is.
		fmt.Fprintf(out, "\nsact: following the logs of %s ended: %v\n", app, err)
	}
}

// silentDays is how many days an app has had no traffic: since its last activity, or
// since sact first saw it if it never had any. ok is false if sact knows neither.
func silentDays(a AppStatus, now time.Time) (days float64, ok bool) {
	var t time.Time
	switch {
	case a.LastActivity != nil:
		t = *a.LastActivity
	case a.KnownSince != nil:
		t = *a.KnownSince
	default:
		return 0, false
	}
	return now.Sub(t).Hours() / 24, true
}

// csv answers GET /api/apps.csv: every app, or with ?dead=DAYS those without traffic for
// at least that many days.
func (s *Server) csv(w http.ResponseWriter, r *http.Request) {
	dead := -1.0
	if v := r.URL.Query().Get("dead"); v != "" {
		d, err := strconv.ParseFloat(v, 64)
		if err != nil || d < 0 {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "dead=DAYS: a number of days, like dead=90"})
			return
		}
		dead = d
	}
	now := s.opts.Now()
	list := s.listing(s.opts.Apps())
	w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	name := "sact-apps.csv"
	if dead >= 0 {
		name = fmt.Sprintf("sact-dead-%gd.csv", dead)
	}
	w.Header().Set("Content-Disposition", `attachment; filename="`+name+`"`)
	cw := csv.NewWriter(w)
	cw.Write([]string{"app", "state", "last_activity", "known_since", "days_without_traffic", "connections_90d", "cold_starts", "kind", "listen", "hosts"})
	stamp := func(t *time.Time) string {
		if t == nil {
			return ""
		}
		return t.UTC().Format(time.RFC3339)
	}
	for _, a := range list.Apps {
		days, known := silentDays(a, now)
		if dead >= 0 && (!known || days < dead) {
			continue
		}
		silent := ""
		if known {
			silent = strconv.Itoa(int(days))
		}
		total := 0
		for _, n := range a.ActivityDays {
			total += n
		}
		cw.Write([]string{cell(a.Name), a.State, stamp(a.LastActivity), stamp(a.KnownSince), silent, strconv.Itoa(total),
			strconv.Itoa(a.ColdStarts), cell(a.Kind), cell(strings.Join(a.Listen, " ")), cell(strings.Join(a.Hosts, " "))})
	}
	cw.Flush()
}

// cell keeps a spreadsheet from reading a value as a formula (CSV injection): the config
// is trusted, but the file may be opened by someone who does not expect that.
func cell(v string) string {
	if v != "" && strings.ContainsRune("=+-@\t\r", rune(v[0])) {
		return "'" + v
	}
	return v
}
