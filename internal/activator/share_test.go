package activator

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// sharing is a backlog that shares its sockets with a deploy's new incarnation: Taken
// answers after takeAfter with taken's error; shares false refuses to.
type sharing struct {
	*backlog
	shares    bool
	takeAfter time.Duration
	taken     error

	mu      sync.Mutex
	started []string // Started's instances, by ID
	ended   int
}

func (s *sharing) Shares() bool { return s.shares }
func (s *sharing) Share() Share { return sharingDeploy{s} }

type sharingDeploy struct{ s *sharing }

func (d sharingDeploy) Started(inst *backend.Instance) {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.started = append(d.s.started, inst.ID)
}

func (d sharingDeploy) Taken(ctx context.Context) error {
	t := time.NewTimer(d.s.takeAfter)
	defer t.Stop()
	select {
	case <-t.C:
		return d.s.taken
	case <-ctx.Done():
		return ErrNoTraffic
	}
}

func (d sharingDeploy) End() {
	d.s.mu.Lock()
	defer d.s.mu.Unlock()
	d.s.ended++
}

// serveShared runs a handoff app on rt for src, started by a client in its backlog.
func serveShared(t *testing.T, rt *deployRuntime, p Policy, src *sharing) (*App, func()) {
	p.Spec.Name = "web"
	p.Spec.Handoff = &backend.Handoff{Binary: "/sact", Dir: "/run/sact/handoff/web"}
	a := New(rt, p, Options{Dial: rt.dial})
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Go(func() { a.Run(ctx) })
	wg.Go(func() { a.Serve(ctx, src) })
	if !src.arrive(time.Minute) {
		t.Fatal("Serve took no client")
	}
	for a.State() != Running || src.watching.Load() == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	synctest.Wait() // its first look is in
	return a, func() { cancel(); wg.Wait() }
}

// A handed-off app whose Source shares its sockets is deployed: the new incarnation is
// started, told to the Source, promoted once it took a connection, and the old one is
// retired with the drain timeout as its grace; no cold start.
func TestHandoffDeploySharesSockets(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		rt := newDeployRuntime()
		src := &sharing{backlog: newBacklog(), shares: true, takeAfter: 2 * time.Second}
		a, stop := serveShared(t, rt, Policy{Idle: time.Hour, StopTimeout: 2 * time.Second, DrainTimeout: 7 * time.Second}, src)
		defer stop()
		if err := a.Restart(context.Background()); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		synctest.Wait()
		st := a.Status()
		if st.ColdStarts != 1 || st.Deploys != 1 || st.State != Running || st.LastError != "" {
			t.Fatalf("status after the deploy: %+v", st)
		}
		rt.mu.Lock()
		name, retired, graces := rt.name, strings.Join(rt.retired, ","), rt.graces
		rt.mu.Unlock()
		src.mu.Lock()
		started, ended := strings.Join(src.started, ","), src.ended
		src.mu.Unlock()
		if name != "v2" || retired != "v1" || len(graces) != 1 || graces[0] != 7*time.Second {
			t.Errorf("after the deploy: runs %s, retired %q with grace %v; want v2, v1 within the drain timeout", name, retired, graces)
		}
		if started != "v2" || ended != 1 {
			t.Errorf("the Source was told of %q and %d ends, want v2 and 1", started, ended)
		}
	})
}

// A new incarnation with no new connection to take within start_timeout is deployed
// (nobody waited); one that took none of those that came is retired and the old one
// serves on; a Source that cannot share makes the app restart once idle, the old way.
func TestHandoffDeployVerdicts(t *testing.T) {
	for _, tc := range []struct {
		name    string
		shares  bool
		taken   error
		after   time.Duration
		deploys int
		fails   int
		runs    string
	}{
		{"no traffic", true, nil, time.Hour, 1, 0, "v2"},
		{"took none", true, errors.New("took none of 3"), 3 * time.Second, 0, 1, "v1"},
		{"cannot share", false, nil, 0, 0, 0, "v1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				rt := newDeployRuntime()
				src := &sharing{backlog: newBacklog(), shares: tc.shares, takeAfter: tc.after, taken: tc.taken}
				src.open.Store(1) // a connection keeps it from a restart once idle
				src.busy.Store(1)
				a, stop := serveShared(t, rt, Policy{Idle: time.Hour, StartTimeout: 5 * time.Second}, src)
				defer stop()
				a.Refresh()
				time.Sleep(10 * time.Second)
				synctest.Wait()
				st := a.Status()
				rt.mu.Lock()
				name, gen := rt.name, rt.gen
				rt.mu.Unlock()
				if st.Deploys != tc.deploys || st.DeployFailures != tc.fails || name != tc.runs || st.State != Running || st.ColdStarts != 1 {
					t.Errorf("status %+v, runs %s; want %d deploys, %d failures, %s running", st, name, tc.deploys, tc.fails, tc.runs)
				}
				if !tc.shares && gen != 1 {
					t.Errorf("%d incarnations for an app whose sockets cannot be shared, want 1", gen)
				}
				if tc.fails > 0 && !strings.Contains(st.LastError, "took none of 3") {
					t.Errorf("last error %q, want the Source's word", st.LastError)
				}
			})
		})
	}
}
