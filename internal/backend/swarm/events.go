package swarm

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/docker"
)

// Run follows the manager's event stream until ctx ends, and the node engines' streams
// it started meanwhile.
func (r *Runtime) Run(ctx context.Context) error {
	defer r.cli.Close()
	r.mu.Lock()
	r.runCtx = ctx
	r.mu.Unlock()
	defer r.wg.Wait()
	r.wg.Add(2)
	go func() { defer r.wg.Done(); r.checker(ctx) }()
	go func() { defer r.wg.Done(); r.learnNodes(ctx) }()
	first := true
	since := time.Now().Add(-time.Second)
	delay := 100 * time.Millisecond
	for {
		err := r.follow(ctx, r.cli, since, swarmFilter(), &first, r.handleSwarm)
		if ctx.Err() != nil {
			return nil
		}
		since = time.Now().Add(-time.Second)
		r.log.Warn("swarm event stream interrupted; resuming", "reason", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
		r.kick() // what happened meanwhile is in the task list
	}
}

func swarmFilter() client.Filters {
	return make(client.Filters).Add("type", string(events.ServiceEventType), string(events.NodeEventType), string(events.ContainerEventType)).
		Add("event", string(events.ActionUpdate), string(events.ActionRemove), string(events.ActionStart), string(events.ActionDie), string(events.ActionDestroy))
}

// follow reads one event stream until it fails, handing each message to handle; the
// first stream of the manager's says the runtime is live.
func (r *Runtime) follow(ctx context.Context, cli *client.Client, since time.Time, f client.Filters, first *bool, handle func(events.Message)) error {
	up := func() {
		if first != nil && *first {
			*first = false
			close(r.live)
		}
	}
	return docker.FollowEvents(ctx, cli, since, f, up, handle)
}

// handleSwarm handles the manager engine's events: its own containers (it is a node), and
// the swarm's services and nodes.
func (r *Runtime) handleSwarm(m events.Message) {
	switch m.Type {
	case events.ContainerEventType:
		r.handleContainer(r.self, m)
	case events.NodeEventType:
		r.mu.Lock()
		delete(r.nodes, m.Actor.ID) // its address or engine label may have changed
		r.mu.Unlock()
		r.kickFor(m.Actor.ID)
	case events.ServiceEventType:
		r.kickFor(m.Actor.ID)
	}
}

// handleContainer handles a container event from the engine of node: the death of a
// watched task's container there is its exit. A node's engine is believed only about the
// tasks that run on it.
func (r *Runtime) handleContainer(nodeID string, m events.Message) {
	task := m.Actor.Attributes[labelTask]
	if task == "" {
		return
	}
	if m.Action == events.ActionStart {
		// A task's container started: a start waiting for it looks at once.
		r.mu.Lock()
		ch := r.starting[m.Actor.Attributes[labelService]]
		r.mu.Unlock()
		if ch != nil {
			select {
			case ch <- struct{}{}:
			default:
			}
		}
		return
	}
	r.mu.Lock()
	w := r.watches[task]
	if w == nil || w.node != nodeID {
		r.mu.Unlock()
		return
	}
	delete(r.watches, task)
	r.mu.Unlock()
	code := -1
	if c, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
		code = c
	}
	reason := "exited"
	if m.Action == events.ActionDestroy {
		reason = "removed"
	}
	r.ended(w, backend.Exit{Code: code, Reason: reason})
}

// ended reports w's exit, after scaling its service to 0 unless sact is stopping it: a
// task that died must not come back without sact (swarm restarts the tasks of a service
// made elsewhere), nor the service stay at 1 with nothing running. The scale is an API
// call: it runs beside the event stream, which must not wait for it. Called by Run's
// goroutines only, so that Run's wait covers it.
func (r *Runtime) ended(w *watch, e backend.Exit) {
	r.mu.Lock()
	stopping := w.stopping
	r.mu.Unlock()
	if stopping {
		w.deliver(e)
		return
	}
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := r.scale(ctx, w.service, 0); err != nil && !cerrdefs.IsNotFound(err) {
			r.log.Warn("cannot scale the service of an exited task to 0", "app", w.app, "service", w.service, "reason", err)
		}
		w.deliver(e)
	}()
}

// kick asks the checker for a look at every watched task.
func (r *Runtime) kick() {
	r.mu.Lock()
	r.all = true
	r.mu.Unlock()
	r.wakeChecker()
}

// kickFor asks the checker for a look at the watched tasks of a service or on a node
// (one ID or the other: both are swarm object IDs).
func (r *Runtime) kickFor(id string) {
	r.mu.Lock()
	r.dirty[id] = true
	r.mu.Unlock()
	r.wakeChecker()
}

func (r *Runtime) wakeChecker() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// checker looks at the watched tasks when kicked, and every NodeCheckEvery while a
// watched task runs on a node whose engine is not followed.
func (r *Runtime) checker(ctx context.Context) {
	t := time.NewTicker(NodeCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
			r.recheck(ctx, false)
		case <-t.C:
			r.recheck(ctx, true)
		}
	}
}

// recheck fires the watches whose task no longer runs: those the events marked dirty, or
// (unfollowed) those on nodes whose engine is not followed.
func (r *Runtime) recheck(ctx context.Context, unfollowed bool) {
	r.mu.Lock()
	var ws []*watch
	for _, w := range r.watches {
		if unfollowed && r.engines[w.node] == nil && w.node != r.self ||
			!unfollowed && (r.all || r.dirty[w.service] || r.dirty[w.node]) {
			ws = append(ws, w)
		}
	}
	if !unfollowed {
		r.all = false
		clear(r.dirty)
	}
	r.mu.Unlock()
	for _, w := range ws {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err := r.cli.TaskInspect(cctx, w.task, client.TaskInspectOptions{})
		cancel()
		var e backend.Exit
		switch {
		case cerrdefs.IsNotFound(err):
			e = backend.Exit{Code: -1, Reason: "removed"}
		case err != nil:
			continue
		case res.Task.Status.State == swarm.TaskStateRunning && res.Task.DesiredState == swarm.TaskStateRunning:
			continue
		default:
			t := res.Task
			e = backend.Exit{Code: -1, Reason: "exited"}
			if t.Status.ContainerStatus != nil && t.Status.State != swarm.TaskStateRunning {
				e.Code = t.Status.ContainerStatus.ExitCode
			}
			switch {
			case t.DesiredState == swarm.TaskStateRemove && !failed(t.Status.State):
				e.Reason = "removed" // its service was removed
			case t.Status.State == swarm.TaskStateShutdown || !terminal(t.Status.State) && t.DesiredState != swarm.TaskStateRunning:
				// Swarm shuts it down (scaled down, updated, its node drained) on someone
				// else's word: stopped from outside, not failed.
				e.Reason, e.Killed = "killed", true
			}
			e.Logs = t.Status.Err
		}
		r.mu.Lock()
		if r.watches[w.task] != w {
			r.mu.Unlock()
			continue
		}
		delete(r.watches, w.task)
		r.mu.Unlock()
		r.ended(w, e)
	}
}

// learnNodes looks up every node once, so that the engines named by sact.engine labels
// are followed from the start: the first start on a node then hears its task's container
// start, and an exit there is an event from the first task on.
func (r *Runtime) learnNodes(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	res, err := r.cli.NodeList(lctx, client.NodeListOptions{})
	if err != nil {
		r.log.Warn("cannot list the swarm's nodes; each is looked up at its first task", "reason", err)
		return
	}
	for _, n := range res.Items {
		if _, err := r.nodeOf(lctx, n.ID); err != nil {
			r.log.Warn("cannot look up a swarm node", "node_id", n.ID, "reason", err)
		}
	}
}

// nodeOf returns what sact knows of a node, looking it up on first use, and starts
// following its engine if it names one.
func (r *Runtime) nodeOf(ctx context.Context, id string) (*node, error) {
	r.mu.Lock()
	n := r.nodes[id]
	r.mu.Unlock()
	if n != nil {
		return n, nil
	}
	res, err := r.cli.NodeInspect(ctx, id, client.NodeInspectOptions{})
	if err != nil {
		return nil, fmt.Errorf("inspecting node %s: %w", id, err)
	}
	n = &node{addr: res.Node.Status.Addr, engine: res.Node.Spec.Labels[LabelEngine]}
	r.mu.Lock()
	r.nodes[id] = n
	r.mu.Unlock()
	r.followEngine(id, n.engine, res.Node.Description.Hostname)
	return n, nil
}

// followEngine follows the container events of node id's engine at host, if not already.
func (r *Runtime) followEngine(id, host, hostname string) {
	if id == r.self {
		return // the manager's own stream has them
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if e := r.engines[id]; e != nil {
		if e.host == host {
			return
		}
		e.cancel() // its label changed
		delete(r.engines, id)
	}
	if host == "" {
		r.log.Warn("node has no sact.engine label: a task dying there is noticed within "+NodeCheckEvery.String()+", not at once; label it with its engine's address (docker node update --label-add sact.engine=tcp://ADDR:2375 NODE)", "node", hostname, "node_id", id, "reason", "no engine label")
		return
	}
	if r.runCtx == nil {
		return
	}
	if !strings.HasPrefix(host, "unix://") && !strings.HasPrefix(host, "tcp://") {
		r.log.Warn("node's sact.engine label is no unix:// or tcp:// address; not followed", "node", hostname, "engine", host, "reason", "bad engine label")
		return
	}
	cli, err := client.New(client.WithHost(host), client.WithAPIVersionNegotiation())
	if err != nil {
		r.log.Warn("cannot follow a node's engine", "node", hostname, "engine", host, "reason", err)
		return
	}
	ctx, cancel := context.WithCancel(r.runCtx)
	r.engines[id] = &engine{host: host, cancel: cancel}
	f := make(client.Filters).Add("type", string(events.ContainerEventType)).
		Add("event", string(events.ActionStart), string(events.ActionDie), string(events.ActionDestroy)).Add("label", labelTask)
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		defer cli.Close()
		since := time.Now().Add(-time.Second)
		delay := 100 * time.Millisecond
		for {
			err := r.follow(ctx, cli, since, f, nil, func(m events.Message) { r.handleContainer(id, m) })
			if ctx.Err() != nil {
				return
			}
			since = time.Now().Add(-time.Second)
			r.log.Warn("node engine's event stream interrupted; resuming", "node", hostname, "engine", host, "reason", err, "retry_in", delay)
			select {
			case <-ctx.Done():
				return
			case <-time.After(delay):
			}
			delay = min(2*delay, 5*time.Second)
			r.kick()
		}
	}()
	r.log.Info("following a node's engine", "node", hostname, "engine", host)
}
