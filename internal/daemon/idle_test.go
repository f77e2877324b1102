package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/config"
)

// sleepingDaemon is a daemon of n apps that never ran, as far as its periodic chores go.
func sleepingDaemon(n int) *daemon {
	rt := &fake.Runtime{}
	d := &daemon{units: make(map[string]*unit, n), hist: newHistory(nil)}
	for i := range n {
		name := fmt.Sprintf("app%d", i)
		d.units[name] = &unit{app: &config.App{Name: name}, rt: rt,
			act: activator.New(rt, activator.Policy{Spec: backend.Spec{Name: name}}, activator.Options{})}
	}
	return d
}

// TestSleepingMinuteAllocatesLittle: what a sleeping sact does every minute (30 looks at
// the restart files, 6 memory samples, one activity sample) allocates next to nothing per
// app. It allocated 3 MB a minute with 1000 apps, garbage that a sleeping sact collects
// only every two minutes: the bench's 1000 idle apps were 3 MB bigger after a minute.
func TestSleepingMinuteAllocatesLittle(t *testing.T) {
	const n = 1000
	d := sleepingDaemon(n)
	path := filepath.Join(t.TempDir(), "activity.json")
	var units []*unit
	sts := make(map[string]activity)
	minute := func() {
		for range 30 {
			for _, app := range d.restartApps() {
				_ = app.RestartFile
			}
		}
		for range 6 {
			units = d.appendUnits(units[:0])
			for _, u := range units {
				d.sampleMemory(context.Background(), u, nil) // fake: no meter; none runs
			}
			clear(units)
		}
		clear(sts)
		d.activities(sts)
		d.hist.sample(sts)
		if d.hist.changed(sts) {
			if err := d.hist.save(path, sts); err != nil {
				t.Fatal(err)
			}
		}
	}
	minute() // the first saves every app's known_since
	least := uint64(1 << 62)
	for range 3 {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		minute()
		runtime.ReadMemStats(&after)
		least = min(least, after.TotalAlloc-before.TotalAlloc)
	}
	if per := least / n; per > 128 {
		t.Errorf("a sleeping minute allocates %d bytes per app (%d in all)", per, least)
	}
}

// TestUnchangedMinuteWritesNothing: the activity file is written in a minute in which an
// app's known_since, last activity or counts changed, and not in one when nothing did.
func TestUnchangedMinuteWritesNothing(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "activity.json")
		h := newHistory(nil)
		var accepted atomic.Int64 // read by keep's goroutine
		activities := func(sts map[string]activity) {
			n := accepted.Load()
			sts["web"] = activity{Accepted: int(n), LastActivity: time.Unix(1e9, 0).Add(time.Duration(n) * time.Second)}
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); h.keep(ctx, path, activities, slog.New(slog.DiscardHandler)) }()
		written := func() bool {
			time.Sleep(time.Minute)
			synctest.Wait()
			_, err := os.Stat(path)
			os.Remove(path)
			return err == nil
		}
		if !written() {
			t.Error("the first minute wrote no file: web's known_since is lost")
		}
		if written() {
			t.Error("a minute in which nothing changed wrote the file")
		}
		accepted.Add(1)
		if !written() {
			t.Error("a minute with a connection wrote no file")
		}
		cancel()
		<-done
	})
}
