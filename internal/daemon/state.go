package daemon

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/sact-project/sact/internal/activator"
)

// The activity file keeps each app's last activity across restarts of sact, so that "no
// traffic for 90 days" on the dashboard means 90 days, not "since sact last started".

type savedApp struct {
	LastActivity time.Time `json:"last_activity"`
}

type savedState struct {
	Apps map[string]savedApp `json:"apps"`
}

// loadActivity reads the activity file and hands each app its remembered last activity.
func loadActivity(path string, acts map[string]*activator.App, log *slog.Logger) {
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
		if a := acts[name]; a != nil {
			a.Remember(s.LastActivity)
		}
	}
}

// saveActivity writes the activity file atomically.
func saveActivity(path string, acts map[string]*activator.App) error {
	st := savedState{Apps: make(map[string]savedApp, len(acts))}
	for name, a := range acts {
		if t := a.Status().LastActivity; !t.IsZero() {
			st.Apps[name] = savedApp{LastActivity: t}
		}
	}
	b, err := json.MarshalIndent(st, "", "  ")
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
	return os.Rename(tmp, path)
}

// keepActivity saves the activity file every minute until ctx ends, and once more then.
func keepActivity(ctx context.Context, path string, acts func() map[string]*activator.App, log *slog.Logger) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
		case <-t.C:
		}
		if err := saveActivity(path, acts()); err != nil && !warned {
			log.Warn("cannot save the activity file; the dashboard's idle-days reset when sact restarts", "file", path, "reason", err)
			warned = true
		}
		if ctx.Err() != nil {
			return
		}
	}
}
