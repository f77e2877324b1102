package daemon

import (
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
)

// A state file of an earlier sact (last_activity only) loads; apps it does not name are
// known from now, not silent forever; daily counts go by UTC day, survive a save and a
// load, and are kept for HistoryDays.
func TestHistory(t *testing.T) {
	path := filepath.Join(t.TempDir(), "activity.json")
	last := time.Date(2026, 8, 1, 10, 0, 0, 0, time.UTC)
	if err := os.WriteFile(path, []byte(`{"apps": {"old": {"last_activity": "2026-08-01T10:00:00Z"}}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 12, 1, 23, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	acts := map[string]*activator.App{}
	for _, n := range []string{"old", "new"} {
		acts[n] = activator.New(nil, activator.Policy{Spec: backend.Spec{Name: n}}, activator.Options{})
	}
	h := newHistory(clock)
	h.load(path, acts, slog.New(slog.DiscardHandler))
	if got := acts["old"].Status().LastActivity; !got.Equal(last) {
		t.Errorf("old's last activity %v, want %v", got, last)
	}
	if got := h.of("new", activator.Status{}).KnownSince; !got.Equal(now) {
		t.Errorf("new app known since %v, want now", got)
	}

	h.sample(map[string]activity{"old": {LastActivity: last}, "new": {Accepted: 3, LastActivity: now}})
	now = now.Add(2 * time.Hour) // the next UTC day
	h.sample(map[string]activity{"old": {LastActivity: last}, "new": {Accepted: 5, LastActivity: now}})
	got := h.of("new", activator.Status{Accepted: 6, LastActivity: now}) // one not sampled yet
	if len(got.Days) != HistoryDays || got.Days[HistoryDays-2] != 3 || got.Days[HistoryDays-1] != 3 {
		t.Errorf("new's last days %v, want ... 3 3", got.Days[HistoryDays-3:])
	}
	if d := h.of("old", activator.Status{LastActivity: last}).Days; d[HistoryDays-1] != 0 {
		t.Errorf("old counted activity it did not have: %v", d[HistoryDays-3:])
	}
	if err := h.save(path, map[string]activity{"old": {LastActivity: last}, "new": {Accepted: 5, LastActivity: now}}); err != nil {
		t.Fatal(err)
	}

	// The next sact, 100 days later.
	born := h.of("new", activator.Status{}).KnownSince
	h2 := newHistory(clock)
	h2.load(path, acts, slog.New(slog.DiscardHandler))
	if got := h2.of("new", activator.Status{}); !got.KnownSince.Equal(born) || got.Days[HistoryDays-1] != 2 {
		t.Errorf("after a load: known since %v (want %v), today %d (want 2)", got.KnownSince, born, got.Days[HistoryDays-1])
	}
	now = now.AddDate(0, 0, 100)
	h2.sample(map[string]activity{"new": {}})
	for _, n := range h2.of("new", activator.Status{}).Days {
		if n != 0 {
			t.Fatalf("days older than %d kept: %v", HistoryDays, h2.apps["new"].daily)
		}
	}
	if len(h2.apps["new"].daily) != 0 || h2.apps["old"] != nil {
		t.Errorf("kept: %v, old %v", h2.apps["new"].daily, h2.apps["old"])
	}
}
