// Package swarm runs apps as Docker Swarm services, on whichever node of the swarm the
// scheduler puts them: sact keeps a service at 0 replicas while its app sleeps, scales it
// to 1 on the first connection of a cold period, and back to 0 when idle.
//
// A task is reached on the node it runs on, through a port published in host mode: the
// host port is in the task's Status.PortStatus, the node's address in its Status.Addr.
// The routing mesh (ingress) and overlay networks are not needed, and are not used.
//
// Two kinds of service (kind.go; the keys are decoded here, the config only routes them):
//
//   - made by sact from image: and swarm: settings, named "sact-NAME" and labelled
//     sact.app=NAME, sact.config=HASH; its spec is replaced at a start when the app's
//     settings changed.
//   - made elsewhere (service: NAME): sact only scales it between 0 and 1. Its port:
//     must be published in host mode (docker service create --publish
//     mode=host,target=PORT); its other settings are its own.
//
// swarm: takes constraints (as --constraint: node.role==worker), preferences (spread
// over a node attribute: node.labels.zone), reserve_memory and reserve_cpus; memory: and
// cpus: are the task's limits. handoff, pause_after, ready: healthcheck and upstream:
// are refused by sact check, with the reason: a socket cannot cross hosts, swarm has no
// pause, and the address is the task's.
//
// Exits are learnt from event streams, not by polling. A manager's stream carries service
// and node events but no task events, so each one is followed by a look at the tasks of
// the services sact watches. A task's container dying is an event on its node's engine
// only: sact follows the engine it talks to (a manager, itself a node) and the engine of
// each node whose label sact.engine names its address (unix:///path or tcp://host:port,
// set by a swarm administrator: docker node update --label-add sact.engine=...). A task on
// a node without that label is checked every NodeCheckEvery instead, and sact says so in
// its log once.
//
// When a watched task dies without sact asking, the service is scaled back to 0 before the
// exit is reported (before swarm's restart delay ends, for the services sact makes): the service runs exactly while sact counts its app as running, which
// is what max_running and memory_budget count, across the swarm.
package swarm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// Labels on the services sact makes (the same as the docker kind's containers), and the
// node label that names a node's engine.
const (
	LabelApp    = "sact.app"
	LabelConfig = "sact.config"
	LabelEngine = "sact.engine"
	// labelTask is on every task's container: swarm's own.
	labelTask = "com.docker.swarm.task.id"
)

// NodeCheckEvery is how often a task on a node whose engine sact cannot follow is looked
// at, the fallback when the node has no sact.engine label.
var NodeCheckEvery = 5 * time.Second

// Settings are an app's swarm settings, in backend.Spec.Extra.
type Settings struct {
	// Service names a service made elsewhere; "" for one sact makes from Spec.Image.
	Service string `json:"service,omitempty"`
	// Constraints are placement constraints, as docker service create --constraint takes
	// them: "node.role==worker", "node.labels.zone==a".
	Constraints []string `json:"constraints,omitempty"`
	// Preferences are spread preferences: "node.labels.zone" spreads over its values.
	Preferences []string `json:"preferences,omitempty"`
	// ReserveMemory and ReserveCPUs are what the scheduler reserves on the node for the
	// task (Spec.Memory and Spec.CPUs are the limits).
	ReserveMemory int64   `json:"reserve_memory,omitempty"`
	ReserveCPUs   float64 `json:"reserve_cpus,omitempty"`
}

// SettingsOf returns the swarm settings of spec.
func SettingsOf(spec backend.Spec) Settings {
	switch s := spec.Extra.(type) {
	case Settings:
		return s
	case *Settings:
		if s != nil {
			return *s
		}
	}
	return Settings{}
}

// ServiceName is the name of the service of spec: its own, or "sact-"+Name.
func ServiceName(spec backend.Spec) string {
	if s := SettingsOf(spec).Service; s != "" {
		return s
	}
	return "sact-" + spec.Name
}

// Options configure the runtime.
type Options struct {
	Logger *slog.Logger
	// Host is the manager engine's address; "" takes DOCKER_HOST, or the local socket.
	Host string
}

// Runtime is a backend.Runtime on a swarm manager.
type Runtime struct {
	cli  *client.Client
	log  *slog.Logger
	self string // the node ID of the engine cli talks to

	startMu sync.Map // service name -> *sync.Mutex: one start or stop of a service at a time

	mu      sync.Mutex
	watches map[string]*watch  // by task ID
	nodes   map[string]*node   // by node ID
	engines map[string]*engine // followed node engines, by node ID
	wake    chan struct{}      // a look at the watched tasks is due
	// dirty are the services and nodes whose watched tasks the checker looks at next;
	// all means every watched task (after a stream was down).
	dirty  map[string]bool
	all    bool
	live   chan struct{}   // closed once the manager's event stream is first up
	wg     sync.WaitGroup  // the engines' followers
	runCtx context.Context // Run's, for the followers; nil before Run
}

type node struct {
	addr   string // Status.Addr
	engine string // label sact.engine
}

// engine follows one node's engine for its tasks' containers dying.
type engine struct {
	host   string
	cancel context.CancelFunc
}

// watch waits for one task to stop running.
type watch struct {
	app, service, task, node string
	sact                     bool // sact made the service
	exited                   chan backend.Exit
	once                     sync.Once
	stopping                 bool // sact scales it down: no scale-down of its own (guarded by Runtime.mu)
}

func (w *watch) deliver(e backend.Exit) {
	w.once.Do(func() { w.exited <- e; close(w.exited) })
}

// New connects to the swarm manager named by opts.Host or the environment.
func New(ctx context.Context, opts Options) (*Runtime, error) {
	copts := []client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}
	if opts.Host != "" {
		copts = append(copts, client.WithHost(opts.Host))
	}
	cli, err := client.New(copts...)
	if err != nil {
		return nil, fmt.Errorf("making a Docker client: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	info, err := cli.Info(pctx, client.InfoOptions{})
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot reach the Docker engine at %s: %w; is dockerd running, and may sact use its socket?", cli.DaemonHost(), err)
	}
	if !info.Info.Swarm.ControlAvailable {
		cli.Close()
		return nil, fmt.Errorf("the Docker engine at %s is not a swarm manager (swarm state %q); swarm apps need sact to talk to a manager (docker swarm init, or DOCKER_HOST naming one)", cli.DaemonHost(), info.Info.Swarm.LocalNodeState)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Runtime{
		cli: cli, log: log, self: info.Info.Swarm.NodeID,
		watches: make(map[string]*watch),
		nodes:   make(map[string]*node),
		engines: make(map[string]*engine),
		wake:    make(chan struct{}, 1),
		dirty:   make(map[string]bool),
		live:    make(chan struct{}),
	}, nil
}

// Run follows the manager's event stream until ctx ends, and the node engines' streams
// it started meanwhile.
func (r *Runtime) Run(ctx context.Context) error {
	defer r.cli.Close()
	r.mu.Lock()
	r.runCtx = ctx
	r.mu.Unlock()
	defer r.wg.Wait()
	r.wg.Add(1)
	go func() { defer r.wg.Done(); r.checker(ctx) }()
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
		Add("event", string(events.ActionUpdate), string(events.ActionRemove), string(events.ActionDie), string(events.ActionDestroy))
}

// follow reads one event stream until it fails, handing each message to handle.
func (r *Runtime) follow(ctx context.Context, cli *client.Client, since time.Time, f client.Filters, first *bool, handle func(events.Message)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := cli.Events(ctx, client.EventsListOptions{Since: strconv.FormatInt(since.Unix(), 10), Filters: f})
	if first != nil && *first {
		// "since" replays what the request going out in the background misses.
		*first = false
		close(r.live)
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-res.Err:
			if err == nil {
				err = errors.New("stream ended")
			}
			return err
		case m := <-res.Messages:
			handle(m)
		}
	}
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
		Add("event", string(events.ActionDie), string(events.ActionDestroy)).Add("label", labelTask)
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

func (r *Runtime) lockService(name string) func() {
	m, _ := r.startMu.LoadOrStore(name, &sync.Mutex{})
	mu := m.(*sync.Mutex)
	mu.Lock()
	return mu.Unlock
}

// Start scales the app's service to 1 (creating it, or replacing its spec if the app's
// settings changed, when sact makes it) and waits until its task runs. Racing starts of
// one app give one scale-up.
func (r *Runtime) Start(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	select {
	case <-r.live:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if spec.Port == 0 {
		return nil, fmt.Errorf("app %s has no port:; a swarm app needs the port its task listens on, published in host mode", spec.Name)
	}
	name := ServiceName(spec)
	defer r.lockService(name)()
	set := SettingsOf(spec)
	for attempt := 0; ; attempt++ {
		res, err := r.cli.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
		switch {
		case cerrdefs.IsNotFound(err) && set.Service != "":
			return nil, fmt.Errorf("service %q does not exist; create it (docker service create --replicas 0 --publish mode=host,target=%d ...) or fix the app's service:", name, spec.Port)
		case cerrdefs.IsNotFound(err):
			if err := r.create(ctx, spec); err != nil {
				return nil, err
			}
			return r.await(ctx, spec, name, map[string]bool{})
		case err != nil:
			return nil, fmt.Errorf("inspecting service %s: %w", name, err)
		}
		svc := res.Service
		if err := owned(spec, svc); err != nil {
			return nil, err
		}
		want := svc.Spec
		up := false
		// The tasks before this start: one of them that failed is no failure of this start.
		tasks, err := r.tasks(ctx, name)
		if err != nil {
			return nil, err
		}
		old := make(map[string]bool, len(tasks))
		for _, t := range tasks {
			old[t.ID] = true
		}
		if replicas(svc) > 0 {
			// At 1 already: a racing start did it, or someone else. But a task that died
			// (restart policy none) leaves the service at 1 with nothing to come: then a
			// forced update makes a new task.
			if !slices.ContainsFunc(tasks, liveTask) {
				want.TaskTemplate.ForceUpdate++
				up = true
			}
		} else {
			setReplicas(&want, 1)
			up = true
			if set.Service == "" && svc.Spec.Labels[LabelConfig] != spec.Hash {
				want = serviceSpec(spec, 1)
				r.log.Info("replacing the service's spec", "app", spec.Name, "service", name, "reason", "the app's settings changed", "old_config", svc.Spec.Labels[LabelConfig], "config", spec.Hash)
			}
		}
		if up {
			_, err = r.cli.ServiceUpdate(ctx, svc.ID, client.ServiceUpdateOptions{Version: svc.Version, Spec: want})
			if isOutOfSequence(err) && attempt < 5 {
				continue // changed meanwhile (docker service update elsewhere): look again
			}
			if err != nil {
				return nil, fmt.Errorf("scaling service %s to 1: %w", name, err)
			}
			r.log.Debug("scaled service to 1", "app", spec.Name, "service", name)
		}
		return r.await(ctx, spec, name, old)
	}
}

func isOutOfSequence(err error) bool {
	return err != nil && strings.Contains(err.Error(), "out of sequence")
}

// owned checks that the service is the app's: a service named sact-NAME that sact did not
// make for the app is someone else's.
func owned(spec backend.Spec, svc swarm.Service) error {
	if SettingsOf(spec).Service != "" {
		if svc.Spec.Mode.Replicated == nil {
			return fmt.Errorf("service %s is not replicated (mode global or a job); sact scales replicated services between 0 and 1", svc.Spec.Name)
		}
		return nil
	}
	if svc.Spec.Labels[LabelApp] != spec.Name {
		return fmt.Errorf("a service named %s exists but was not made by sact for app %q (label %s); rename or remove it", svc.Spec.Name, spec.Name, LabelApp)
	}
	return nil
}

func replicas(svc swarm.Service) uint64 {
	if m := svc.Spec.Mode.Replicated; m != nil && m.Replicas != nil {
		return *m.Replicas
	}
	return 0
}

func setReplicas(s *swarm.ServiceSpec, n uint64) {
	if s.Mode.Replicated == nil {
		s.Mode.Replicated = &swarm.ReplicatedService{}
	}
	s.Mode.Replicated.Replicas = &n
}

// create makes the app's service, at 1 replica.
func (r *Runtime) create(ctx context.Context, spec backend.Spec) error {
	res, err := r.cli.ServiceCreate(ctx, client.ServiceCreateOptions{Spec: serviceSpec(spec, 1)})
	if err != nil {
		return fmt.Errorf("creating service %s: %w", ServiceName(spec), err)
	}
	r.log.Info("created service", "app", spec.Name, "service", ServiceName(spec), "id", shortID(res.ID), "config", spec.Hash)
	return nil
}

// serviceSpec is the spec of the service sact makes for spec.
func serviceSpec(spec backend.Spec, n uint64) swarm.ServiceSpec {
	set := SettingsOf(spec)
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = make(map[string]string)
	}
	labels[LabelApp] = spec.Name
	labels[LabelConfig] = spec.Hash
	env := make([]string, 0, len(spec.Env))
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	cs := &swarm.ContainerSpec{
		Image: spec.Image, Command: spec.Entrypoint, Args: spec.Cmd, Env: env, User: spec.User,
		Labels: map[string]string{LabelApp: spec.Name},
		Mounts: mounts(spec.Volumes),
	}
	res := &swarm.ResourceRequirements{}
	if spec.Memory > 0 || spec.CPUs > 0 {
		res.Limits = &swarm.Limit{MemoryBytes: spec.Memory, NanoCPUs: nanoCPUs(spec.CPUs)}
	}
	if set.ReserveMemory > 0 || set.ReserveCPUs > 0 {
		res.Reservations = &swarm.Resources{MemoryBytes: set.ReserveMemory, NanoCPUs: nanoCPUs(set.ReserveCPUs)}
	}
	pl := &swarm.Placement{Constraints: slices.Clone(set.Constraints)}
	for _, p := range set.Preferences {
		pl.Preferences = append(pl.Preferences, swarm.PlacementPreference{Spread: &swarm.SpreadOver{SpreadDescriptor: strings.TrimPrefix(p, "spread=")}})
	}
	ts := swarm.TaskSpec{
		ContainerSpec: cs, Resources: res, Placement: pl,
		// Not "none": after a dead task under "none" swarm keeps its slot, and a scale from
		// 0 to 1 then makes no task (20.10). The delay lets sact's scale to 0 after a
		// death (Runtime.ended) come first: sact starts the app at its next connection.
		RestartPolicy: &swarm.RestartPolicy{Condition: swarm.RestartPolicyConditionAny, Delay: &restartDelay},
	}
	if spec.Network != "" {
		ts.Networks = []swarm.NetworkAttachmentConfig{{Target: spec.Network}}
	}
	s := swarm.ServiceSpec{
		Annotations:  swarm.Annotations{Name: ServiceName(spec), Labels: labels},
		TaskTemplate: ts,
		EndpointSpec: &swarm.EndpointSpec{Ports: []swarm.PortConfig{{
			Protocol: network.TCP, TargetPort: uint32(spec.Port), PublishMode: swarm.PortConfigPublishModeHost,
		}}},
	}
	setReplicas(&s, n)
	return s
}

var restartDelay = 5 * time.Second

func nanoCPUs(c float64) int64 { return int64(math.Round(c * 1e9)) }

// mounts turns "/host:/ctr[:ro]" and "name:/ctr[:ro]" into swarm mounts; a bind's source
// is on whichever node the task runs.
func mounts(vols []string) []mount.Mount {
	var out []mount.Mount
	for _, v := range vols {
		parts := strings.Split(v, ":")
		if len(parts) < 2 {
			continue
		}
		m := mount.Mount{Source: parts[0], Target: parts[1], Type: mount.TypeVolume}
		if strings.HasPrefix(parts[0], "/") {
			m.Type = mount.TypeBind
		}
		if len(parts) > 2 && slices.Contains(strings.Split(parts[2], ","), "ro") {
			m.ReadOnly = true
		}
		out = append(out, m)
	}
	return out
}

// await waits until a task of the service runs with its host port, and returns it as the
// instance. The wait polls the task list (a manager's events have no task state), from
// 2 ms up to 50 ms apart: every ms here is added to the first request.
func (r *Runtime) await(ctx context.Context, spec backend.Spec, name string, old map[string]bool) (*backend.Instance, error) {
	delay := 2 * time.Millisecond
	for {
		inst, failed, err := r.running(ctx, spec, name, old)
		if inst != nil || err != nil {
			return inst, err
		}
		if failed != nil {
			// The task died as it started (restart policy none: nothing else will come).
			msg := failed.Status.Err
			if msg == "" {
				msg = failed.Status.Message
			}
			return nil, fmt.Errorf("the task of service %s %s as it started: %s", name, failed.Status.State, msg)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("waiting for a task of service %s to run: %w", name, ctx.Err())
		case <-t.C:
		}
		delay = min(delay*3/2+time.Millisecond, 50*time.Millisecond)
	}
}

// running returns the instance of the service's running task if it has one, or a task
// not in old that failed (only for a service sact made, whose tasks are not restarted;
// nil old: none).
func (r *Runtime) running(ctx context.Context, spec backend.Spec, name string, old map[string]bool) (*backend.Instance, *swarm.Task, error) {
	tasks, err := r.tasks(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	var failed *swarm.Task
	for i := range tasks {
		t := &tasks[i]
		switch {
		case t.Status.State == swarm.TaskStateRunning && t.DesiredState == swarm.TaskStateRunning:
			return r.instance(ctx, spec, name, t)
		case terminal(t.Status.State) && old != nil && !old[t.ID] && SettingsOf(spec).Service == "" && failed == nil:
			failed = t
		}
	}
	return nil, failed, nil
}

// tasks lists the service's tasks, the newest first.
func (r *Runtime) tasks(ctx context.Context, name string) ([]swarm.Task, error) {
	res, err := r.cli.TaskList(ctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", name)})
	if err != nil {
		return nil, fmt.Errorf("listing the tasks of service %s: %w", name, err)
	}
	tasks := res.Items
	slices.SortFunc(tasks, func(a, b swarm.Task) int { return b.Meta.CreatedAt.Compare(a.Meta.CreatedAt) })
	return tasks, nil
}

// liveTask reports whether t runs or is on its way to.
func liveTask(t swarm.Task) bool {
	return t.DesiredState == swarm.TaskStateRunning && !terminal(t.Status.State)
}

// failed reports whether a task ended by itself (or its container was killed on its
// node), not on swarm's word.
func failed(s swarm.TaskState) bool {
	return s == swarm.TaskStateFailed || s == swarm.TaskStateComplete || s == swarm.TaskStateRejected
}

func terminal(s swarm.TaskState) bool {
	switch s {
	case swarm.TaskStateComplete, swarm.TaskStateShutdown, swarm.TaskStateFailed, swarm.TaskStateRejected, swarm.TaskStateRemove, swarm.TaskStateOrphaned:
		return true
	}
	return false
}

// instance describes a running task, and watches it.
func (r *Runtime) instance(ctx context.Context, spec backend.Spec, name string, t *swarm.Task) (*backend.Instance, *swarm.Task, error) {
	port := 0
	for _, p := range t.Status.PortStatus.Ports {
		if p.TargetPort == uint32(spec.Port) && p.PublishMode == swarm.PortConfigPublishModeHost && p.PublishedPort != 0 {
			port = int(p.PublishedPort)
			break
		}
	}
	if port == 0 {
		return nil, nil, fmt.Errorf("the task of service %s publishes no host port for target port %d; publish it in host mode (docker service update --publish-add mode=host,target=%d %s)", name, spec.Port, spec.Port, name)
	}
	n, err := r.nodeOf(ctx, t.NodeID)
	if err != nil {
		return nil, nil, err
	}
	if n.addr == "" {
		return nil, nil, fmt.Errorf("node %s of the task of service %s has no address", t.NodeID, name)
	}
	w := r.addWatch(&watch{
		app: spec.Name, service: t.ServiceID, task: t.ID, node: t.NodeID,
		sact: SettingsOf(spec).Service == "", exited: make(chan backend.Exit, 1),
	})
	return &backend.Instance{
		ID:       shortID(t.ID),
		Node:     n.addr,
		Upstream: backend.Addr{Network: "tcp", Address: n.addr + ":" + strconv.Itoa(port)},
		Exited:   w.exited,
	}, nil, nil
}

func (r *Runtime) addWatch(w *watch) *watch {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old := r.watches[w.task]; old != nil {
		return old
	}
	r.watches[w.task] = w
	return w
}

// scale sets the service's replicas to n, if not already.
func (r *Runtime) scale(ctx context.Context, service string, n uint64) error {
	for attempt := 0; ; attempt++ {
		res, err := r.cli.ServiceInspect(ctx, service, client.ServiceInspectOptions{})
		if err != nil {
			return err
		}
		if replicas(res.Service) == n {
			return nil
		}
		s := res.Service.Spec
		setReplicas(&s, n)
		_, err = r.cli.ServiceUpdate(ctx, res.Service.ID, client.ServiceUpdateOptions{Version: res.Service.Version, Spec: s})
		if isOutOfSequence(err) && attempt < 5 {
			continue
		}
		if err != nil {
			return fmt.Errorf("scaling service %s to %d: %w", service, n, err)
		}
		return nil
	}
}

// Stop scales the app's service to 0 and waits until its tasks stopped. Swarm gives a
// task the service's stop grace period (its own setting, 10 s by default): grace bounds
// the wait, with some margin, not the task.
func (r *Runtime) Stop(ctx context.Context, spec backend.Spec, grace time.Duration) error {
	name := ServiceName(spec)
	defer r.lockService(name)()
	r.mu.Lock()
	for _, w := range r.watches {
		if w.app == spec.Name {
			w.stopping = true
		}
	}
	r.mu.Unlock()
	if err := r.scale(ctx, name, 0); err != nil {
		if cerrdefs.IsNotFound(err) {
			return nil
		}
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, grace+10*time.Second)
	defer cancel()
	delay := 5 * time.Millisecond
	for {
		res, err := r.cli.TaskList(wctx, client.TaskListOptions{Filters: make(client.Filters).Add("service", name)})
		if err != nil {
			return fmt.Errorf("waiting for the tasks of service %s to stop: %w", name, err)
		}
		up := false
		for _, t := range res.Items {
			if t.Status.State == swarm.TaskStateRunning || t.Status.State == swarm.TaskStateStarting {
				up = true
			}
		}
		if !up {
			r.fireApp(spec.Name, backend.Exit{Code: 0, Reason: "stopped", Killed: true})
			return nil
		}
		select {
		case <-wctx.Done():
			return fmt.Errorf("the tasks of service %s still run %v after it was scaled to 0", name, grace+10*time.Second)
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// fireApp reports the exit of every watched task of app (after sact's own stop).
func (r *Runtime) fireApp(app string, e backend.Exit) {
	r.mu.Lock()
	var ws []*watch
	for id, w := range r.watches {
		if w.app == app {
			ws = append(ws, w)
			delete(r.watches, id)
		}
	}
	r.mu.Unlock()
	for _, w := range ws {
		w.deliver(e)
	}
}

// Running returns the app's instance if its service is at 1 replica or more and has a
// running task (sact was restarted while it served). A service at 1 whose task is not up
// yet is not running: the first connection's Start waits for it.
func (r *Runtime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	name := ServiceName(spec)
	res, err := r.cli.ServiceInspect(ctx, name, client.ServiceInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting service %s: %w", name, err)
	}
	if err := owned(spec, res.Service); err != nil {
		return nil, err
	}
	if replicas(res.Service) == 0 || spec.Port == 0 {
		return nil, nil
	}
	inst, _, err := r.running(ctx, spec, name, nil)
	return inst, err
}

// Logs returns the service's last n log lines (backend.LogReader), as swarm gathers them
// from the nodes.
func (r *Runtime) Logs(ctx context.Context, spec backend.Spec, n int) (string, error) {
	res, err := r.cli.ServiceLogs(ctx, ServiceName(spec), client.ServiceLogsOptions{ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n), Timestamps: true})
	if err != nil {
		return "", fmt.Errorf("reading the logs of service %s: %w", ServiceName(spec), err)
	}
	defer res.Close()
	var b bytes.Buffer
	if _, err := stdcopy.StdCopy(&b, &b, res); err != nil && b.Len() == 0 {
		return "", err
	}
	return b.String(), nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
