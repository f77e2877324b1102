package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/admin"
)

// The activity file keeps each app's last activity across restarts of sact, so that "no
// traffic for 90 days" on the dashboard means 90 days, not "since sact last started".
// It also keeps when sact first saw each app (known_since: an app never used since then is
// silent since then, not forever; issue 17) and how many connections it had on each of
// the last HistoryDays days (UTC), for the dashboard's activity chart. A file written by
// an earlier sact (last_activity only) loads: its apps are known from the time it is read.

// HistoryDays is how many days of daily counts are kept.
const HistoryDays = 90

type savedApp struct {
	LastActivity time.Time `json:"last_activity"`
	KnownSince   time.Time `json:"known_since,omitzero"`
	// Daily counts connections (or front-door requests) by UTC day, "2006-01-02".
	Daily map[string]int `json:"daily,omitempty"`
}

type savedState struct {
	Apps map[string]savedApp `json:"apps"`
}

const dayLayout = "2006-01-02"

// history is every app's known_since and daily counts, fed by samples of the apps'
// statuses.
type history struct {
	mu   sync.Mutex
	now  func() time.Time
	apps map[string]*appHistory
	// dirty is whether a known_since or a daily count changed since the last save (an
	// app came or went, a connection was counted, a day was dropped). A last activity
	// that changed is told by appHistory.saved.
	dirty bool
}

type appHistory struct {
	knownSince time.Time
	daily      map[string]int
	// accepted and last are the connections counted and the last activity at the last
	// sample: the next one adds what came since.
	accepted int
	last     time.Time
	// saved is the last activity the file holds, once saved.
	saved time.Time
}

// activity is what the history takes of an app's status. Small, so that a map of 1000
// holds them in place: a map of Status (larger than a map keeps inline) allocated each
// one anew at every minute's sample.
type activity struct {
	Accepted, Open int
	LastActivity   time.Time
}

func activityOf(st activator.Status) activity {
	return activity{Accepted: st.Accepted, Open: st.Open, LastActivity: st.LastActivity}
}

func newHistory(now func() time.Time) *history {
	if now == nil {
		now = time.Now
	}
	return &history{now: now, apps: make(map[string]*appHistory)}
}

// app returns name's record, made (known from now) if missing. Called with h.mu held.
func (h *history) app(name string) *appHistory {
	a := h.apps[name]
	if a == nil {
		a = &appHistory{knownSince: h.now(), daily: make(map[string]int)}
		h.apps[name] = a
		h.dirty = true
	}
	return a
}

// pending is what st adds to a since its last sample: connections, or 1 for bytes moved
// on a connection that stayed open. A start by hand is no traffic. Called with h.mu held.
func (a *appHistory) pending(st activity) int {
	n := st.Accepted - a.accepted
	if n < 0 { // a new activator (the app was replaced by a reload) counts from 0
		n = st.Accepted
	}
	if n == 0 && st.Open > 0 && st.LastActivity.After(a.last) {
		n = 1
	}
	return n
}

// sample adds what the apps did since the last sample to today's counts, and forgets
// the apps that are gone and the days that are too old.
func (h *history) sample(sts map[string]activity) {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := h.now().UTC()
	today := now.Format(dayLayout)
	oldest := now.AddDate(0, 0, -(HistoryDays - 1)).Format(dayLayout)
	for name, st := range sts {
		a := h.app(name)
		if n := a.pending(st); n > 0 {
			a.daily[today] += n
			h.dirty = true
		}
		a.accepted = st.Accepted
		if st.LastActivity.After(a.last) {
			a.last = st.LastActivity
		}
		for d := range a.daily {
			if d < oldest {
				delete(a.daily, d)
				h.dirty = true
			}
		}
	}
	for name := range h.apps {
		if _, ok := sts[name]; !ok {
			delete(h.apps, name)
			h.dirty = true
		}
	}
}

// changed says whether the file, as the last save wrote it, differs from what a save of
// sts would write.
func (h *history) changed(sts map[string]activity) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.dirty || len(sts) != len(h.apps) {
		return true
	}
	for name, st := range sts {
		if a := h.apps[name]; a == nil || !a.saved.Equal(st.LastActivity) {
			return true
		}
	}
	return false
}

// of returns name's known_since and its counts of the last HistoryDays days, oldest
// first, today's including what st adds since the last sample.
func (h *history) of(name string, st activator.Status) admin.History {
	h.mu.Lock()
	defer h.mu.Unlock()
	a := h.app(name)
	now := h.now().UTC()
	days := make([]int, HistoryDays)
	for i := range days {
		days[i] = a.daily[now.AddDate(0, 0, i-(HistoryDays-1)).Format(dayLayout)]
	}
	days[HistoryDays-1] += a.pending(activityOf(st))
	return admin.History{KnownSince: a.knownSince, Days: days}
}

// load reads the activity file into h and hands each app its remembered last activity.
func (h *history) load(path string, acts map[string]*activator.App, log *slog.Logger) {
	h.mu.Lock()
	defer h.mu.Unlock()
	defer func() {
		for name := range acts {
			h.app(name) // known from now if the file did not know it
		}
	}()
	b, err := os.ReadFile(path)
	if err != nil {
		if !os.IsNotExist(err) {
			log.Warn("cannot read the activity file; last activity starts from now", "file", path, "reason", err)
		}
		return
	}
	var st savedState
	if err := json.Unmarshal(b, &st); err != nil {
		log.Warn("cannot parse the activity file; last activity starts from now", "file", path, "reason", err)
		return
	}
	for name, s := range st.Apps {
		a := acts[name]
		if a == nil {
			continue
		}
		a.Remember(s.LastActivity)
		rec := h.app(name)
		if !s.KnownSince.IsZero() {
			rec.knownSince = s.KnownSince
		}
		rec.last = s.LastActivity
		for d, n := range s.Daily {
			if _, err := time.Parse(dayLayout, d); err == nil && n > 0 {
				rec.daily[d] = n
			}
		}
	}
}

// save writes the activity file atomically.
func (h *history) save(path string, sts map[string]activity) error {
	h.mu.Lock()
	st := savedState{Apps: make(map[string]savedApp, len(sts))}
	for name, s := range sts {
		rec := h.app(name)
		st.Apps[name] = savedApp{LastActivity: s.LastActivity, KnownSince: rec.knownSince, Daily: rec.daily}
	}
	b, err := json.MarshalIndent(st, "", "  ")
	h.mu.Unlock()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for name, s := range sts {
		if rec := h.apps[name]; rec != nil {
			rec.saved = s.LastActivity
		}
	}
	h.dirty = false
	return nil
}

// keep samples the apps and saves the activity file every minute until ctx ends, and
// once more then. A minute in which nothing changed writes nothing: a sleeping sact's
// save of 1000 apps was a megabyte of garbage a minute, kept until the next collection.
// activities fills the map it is given with every app's activity.
func (h *history) keep(ctx context.Context, path string, activities func(map[string]activity), log *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	warned := false
	sts := make(map[string]activity) // reused, as the minute's garbage would be
	for {
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		clear(sts)
		activities(sts)
		h.sample(sts)
		if path == "" || !h.changed(sts) {
			// No state file (the history lasts as long as this sact), or nothing to add.
		} else if err := h.save(path, sts); err != nil && !warned {
			log.Warn("cannot save the activity file; the dashboard's idle-days reset when sact restarts", "file", path, "reason", err)
			warned = true
		}
		if ctx.Err() != nil {
			return
		}
	}
}
