package daemon

import (
	"context"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"

	"github.com/sact-project/sact/internal/config"
)

// restartResync is how often the set of watched directories is made again from the apps
// of the running config (a reload may add or remove restart files), and the directories
// re-resolved: a deploy that moves a `current` symlink moves the directory a path like
// current/tmp names. Nothing on disk is polled: touches are seen through inotify.
const restartResync = 2 * time.Second

// restartQuiet is the least time between two restarts of an app by its restart file.
const restartQuiet = time.Second

// watchRestartFiles restarts an app in a new container when its restart_file is touched,
// as Passenger does with tmp/restart.txt (issue 14): the file's time is part of the app's
// spec hash (config.App.Restarted), so the change goes the way of any changed setting in
// a reload: a running app gets a new container beside the old one, which drains
// (activator/deploy.go); a stopped one gets it at its next request. It returns when ctx is done.
func (d *daemon) watchRestartFiles(ctx context.Context) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		d.log.Warn("cannot watch restart files; touching them will not restart apps", "reason", err)
		return
	}
	defer w.Close()
	watched := map[string]string{} // directory as configured -> what it resolved to
	resync := func() {
		apps := d.restartApps()
		if len(apps) == 0 && len(watched) == 0 {
			return // the common case, every restartResync: nothing to look at
		}
		want := map[string][]*config.App{}
		for _, u := range apps {
			want[filepath.Dir(u.RestartFile)] = append(want[filepath.Dir(u.RestartFile)], u)
		}
		for dir := range watched {
			if want[dir] == nil {
				w.Remove(dir)
				delete(watched, dir)
			}
		}
		for dir, units := range want {
			real, err := filepath.EvalSymlinks(dir)
			if err != nil {
				real = ""
			}
			if old, ok := watched[dir]; ok && old == real {
				continue
			}
			w.Remove(dir)
			if err := w.Add(dir); err != nil {
				if _, ok := watched[dir]; !ok {
					d.log.Warn("cannot watch a restart file's directory", "app", units[0].Name, "path", dir, "reason", err)
				}
				watched[dir] = "?" // try again at the next resync
				continue
			}
			watched[dir] = real
			// A new directory (a new release behind current) may hold a file touched
			// before it was watched.
			for _, u := range units {
				d.restartIfTouched(ctx, u.Name, u.RestartFile)
			}
		}
	}
	// A touch is acted on at once, then the app's file is looked at again at most once
	// per restartQuiet: an app that touches its own file in a loop (its tmp/ is its own)
	// costs one restart, one log line, per restartQuiet, not one per touch.
	last := map[string]time.Time{}
	due := make(chan string, 16)
	pending := map[string]bool{}
	touched := func(name, file string) {
		if pending[name] {
			return
		}
		if wait := restartQuiet - time.Since(last[name]); wait > 0 {
			pending[name] = true
			time.AfterFunc(wait, func() {
				select {
				case due <- name:
				case <-ctx.Done():
				}
			})
			return
		}
		last[name] = time.Now()
		d.restartIfTouched(ctx, name, file)
	}
	resync()
	tick := time.NewTicker(restartResync)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case name := <-due:
			delete(pending, name)
			for _, u := range d.restartApps() {
				if u.Name == name {
					touched(name, u.RestartFile)
				}
			}
		case <-tick.C:
			resync()
		case ev, ok := <-w.Events:
			if !ok {
				return
			}
			if ev.Op&(fsnotify.Create|fsnotify.Write|fsnotify.Chmod|fsnotify.Rename) == 0 {
				continue
			}
			for _, u := range d.restartApps() {
				if u.RestartFile == filepath.Clean(ev.Name) {
					touched(u.Name, u.RestartFile)
				}
			}
		case err, ok := <-w.Errors:
			if !ok {
				return
			}
			// An overflowed queue lost events: look at every file once.
			d.log.Warn("watching restart files", "reason", err)
			for _, u := range d.restartApps() {
				d.restartIfTouched(ctx, u.Name, u.RestartFile)
			}
		}
	}
}

// restartIfTouched gives app a new spec if its restart file's time changed since the
// config was read, or since the last touch.
func (d *daemon) restartIfTouched(ctx context.Context, name, file string) {
	mtime := config.RestartFileTime(file)
	if mtime.IsZero() {
		return // removed, or not made yet: nothing to do until it is touched
	}
	// A reload running now reads the file's time too; wait for it rather than change the
	// unit under it. Shutdown takes the lock for good, and ends ctx.
	for !d.reloading.TryLock() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
	}
	defer d.reloading.Unlock()
	d.mu.Lock()
	defer d.mu.Unlock()
	u := d.units[name]
	if u == nil || u.app.RestartFile != file || mtime.Equal(u.app.Restarted) {
		return
	}
	app := *u.app
	app.Restarted = mtime
	d.log.Info("restart file touched; the app gets a new container", "app", name, "path", file)
	d.update(u, &app, u.lns)
}

// restartApps is the apps that have a restart file, as they are now: a reload swaps
// units' apps under d.mu, so this goroutine must not read u.app without it. With none, it
// allocates nothing: it runs every restartResync, and a copy of 1000 apps each time was
// most of what a sleeping sact allocated (1.6 MB a minute, kept until the next
// collection).
func (d *daemon) restartApps() []*config.App {
	d.mu.Lock()
	defer d.mu.Unlock()
	var apps []*config.App
	for _, u := range d.units {
		if u.app.RestartFile != "" {
			apps = append(apps, u.app)
		}
	}
	return apps
}
