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
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
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
	// labelTask and labelService are on every task's container: swarm's own.
	labelTask    = "com.docker.swarm.task.id"
	labelService = "com.docker.swarm.service.name"
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
	// starting wakes the start waiting for a task of a service (by name) when a task's
	// container starts on a followed engine.
	starting map[string]chan struct{}
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
		watches:  make(map[string]*watch),
		nodes:    make(map[string]*node),
		engines:  make(map[string]*engine),
		wake:     make(chan struct{}, 1),
		dirty:    make(map[string]bool),
		starting: make(map[string]chan struct{}),
		live:     make(chan struct{}),
	}, nil
}

// lockService serializes the starts and stops of one service: a start that finds it at 1
// replica before its task exists must not force a second task.
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

// await waits until a task of the service runs with its host port, and returns it as the
// instance. The wait polls the task list (a manager's events have no task state), from
// 2 ms up to 50 ms apart, and again from 2 ms when the task's container starts on a
// followed engine (the manager learns it a little later): every ms here is added to the
// first request. Starts of one service are serialized (lockService): one waiter.
func (r *Runtime) await(ctx context.Context, spec backend.Spec, name string, old map[string]bool) (*backend.Instance, error) {
	started := make(chan struct{}, 1)
	r.mu.Lock()
	r.starting[name] = started
	r.mu.Unlock()
	defer func() {
		r.mu.Lock()
		delete(r.starting, name)
		r.mu.Unlock()
	}()
	delay := 2 * time.Millisecond
	for {
		inst, failed, err := r.running(ctx, spec, name, old)
		if inst != nil || err != nil {
			return inst, err
		}
		if failed != nil {
			// The task died as it started: swarm's next try comes after its restart
			// delay, and the activator reports the failure and backs off meanwhile.
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
		case <-started:
			t.Stop()
			delay = 2 * time.Millisecond
			continue
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
