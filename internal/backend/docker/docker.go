// Package docker runs apps as Docker containers through the Engine API.
//
// A container is created once, named "sact-NAME" and labelled sact.app=NAME and
// sact.config=HASH, and afterwards only started and stopped: creating costs the engine far
// more than starting. A container whose sact.config label differs from the app's current
// settings is removed and created anew at its next start, never while it runs; a running
// one is replaced by a deploy instead (deploy.go), whose new container takes the name
// "sact-NAME" once it serves.
//
// Exits are learnt from the engine's event stream, one stream for all apps. The stream is
// resumed with "since" after any interruption, so an exit that happened while it was down
// is still seen; and each watch ignores events older than its own start, so an exit of an
// earlier incarnation is never mistaken for one of the current.
package docker

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
	"sync/atomic"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// Labels sact puts on the containers it creates.
const (
	LabelApp    = "sact.app"
	LabelConfig = "sact.config"
)

// Options configure the runtime.
type Options struct {
	Logger *slog.Logger
	// LogLines is how many of a container's last log lines an Exit carries. Default 20.
	LogLines int
}

// Runtime is a backend.Runtime and backend.Pauser on a Docker engine.
type Runtime struct {
	cli      *client.Client
	log      *slog.Logger
	logLines int

	mu      sync.Mutex
	watches map[string]*watch // by container ID
	// known remembers the container of each app and the settings it was made from, so a
	// cold start is one API call (start) instead of two: every millisecond here is added
	// to the first request. A destroy event forgets the entry.
	known map[string]made // by container name
	since time.Time       // resume point of the event stream
	live  chan struct{}   // closed once the event stream is first up
	// subs are the Watch subscriptions, by app name.
	subs map[string][]chan backend.WatchEvent
	// deployNames are the names of the deploy incarnations (sact-NAME-Next, -Old) on the
	// engine: listed at New, kept up by the create, rename and destroy events. An app's
	// first look (Running) inspects only those for leftovers, not two names per app: with
	// 1000 apps, 2000 engine requests at startup. Nil if the list failed: every name is
	// inspected then.
	deployNames map[string]bool

	// writable are the host sources of every container's read-write mounts, for
	// WritableDirs: listed at New, added to on each create event; never shrunk.
	writable atomic.Pointer[[]string]
}

type made struct{ id, hash string }

// watch waits for one incarnation of a container to exit.
type watch struct {
	app     string
	started time.Time // events before this belong to an earlier incarnation
	exited  chan backend.Exit
	once    sync.Once
	killed  bool   // a kill event came first: docker stop, kill or restart (guarded by Runtime.mu)
	health  health // the HEALTHCHECK's last word (guarded by Runtime.mu)
}

func (w *watch) deliver(e backend.Exit) {
	w.once.Do(func() { w.exited <- e; close(w.exited) })
}

// New connects to the engine named by the environment (DOCKER_HOST, default the local
// socket), negotiating the API version so that old engines (20.10, API 1.41) work too.
func New(ctx context.Context, opts Options) (*Runtime, error) {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, fmt.Errorf("making a Docker client: %w", err)
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Ping(pctx, client.PingOptions{NegotiateAPIVersion: true}); err != nil {
		cli.Close()
		return nil, fmt.Errorf("cannot reach the Docker engine at %s: %w; is dockerd running, and may sact use its socket?", cli.DaemonHost(), err)
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	n := opts.LogLines
	if n <= 0 {
		n = 20
	}
	r := &Runtime{
		cli: cli, log: log, logLines: n,
		watches: make(map[string]*watch),
		known:   make(map[string]made),
		since:   time.Now().Add(-time.Second),
		live:    make(chan struct{}),
		subs:    make(map[string][]chan backend.WatchEvent),
	}
	if res, err := cli.ContainerList(pctx, client.ContainerListOptions{All: true}); err != nil {
		log.Warn("cannot list the containers' mounts; only the apps' volumes count as written by containers", "reason", err)
	} else {
		r.deployNames = make(map[string]bool)
		for _, c := range res.Items {
			r.addMounts(c.Mounts)
			for _, n := range c.Names {
				if n = strings.TrimPrefix(n, "/"); isDeployName(n) {
					r.deployNames[n] = true
				}
			}
		}
	}
	return r, nil
}

// WritableDirs returns the host sources of the read-write mounts of every container on
// the engine (backend.HostDirs).
func (r *Runtime) WritableDirs() []string {
	if p := r.writable.Load(); p != nil {
		return *p
	}
	return nil
}

// addMounts adds the sources of ms that their container can write.
func (r *Runtime) addMounts(ms []container.MountPoint) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var dirs []string
	if p := r.writable.Load(); p != nil {
		dirs = *p
	}
	grown := false
	for _, m := range ms {
		if m.RW && strings.HasPrefix(m.Source, "/") && !slices.Contains(dirs, m.Source) {
			if !grown {
				dirs = slices.Clone(dirs)
				grown = true
			}
			dirs = append(dirs, m.Source)
		}
	}
	if grown {
		r.writable.Store(&dirs)
	}
}

// ContainerName is the name of the container sact creates for app.
func ContainerName(app string) string { return "sact-" + app }

func containerRef(spec backend.Spec) string {
	if spec.Container != "" {
		return spec.Container
	}
	return ContainerName(spec.Name)
}

// Run follows the engine's event stream until ctx ends, resuming it after errors (the
// engine restarted, say) with growing pauses.
func (r *Runtime) Run(ctx context.Context) error {
	defer r.cli.Close()
	delay := 100 * time.Millisecond
	first := true
	for {
		r.mu.Lock()
		since := r.since
		r.mu.Unlock()
		err := r.follow(ctx, since, &first)
		if ctx.Err() != nil {
			return nil
		}
		r.log.Warn("docker event stream interrupted; resuming", "reason", err, "retry_in", delay)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(delay):
		}
		delay = min(2*delay, 5*time.Second)
		r.recheck(ctx)
	}
}

func (r *Runtime) follow(ctx context.Context, since time.Time, first *bool) error {
	f := make(client.Filters).Add("type", "container", "image").
		Add("event", string(events.ActionDie), string(events.ActionDestroy), string(events.ActionCreate), string(events.ActionKill), string(events.ActionTag), string(events.ActionStart), string(events.ActionRename),
			// A prefix: the engine matches "health_status: healthy" and the others by it.
			string(events.ActionHealthStatus))
	up := func() {
		if *first {
			*first = false
			close(r.live)
		}
	}
	return FollowEvents(ctx, r.cli, since, f, up, func(m events.Message) { r.handle(ctx, m) })
}

// FollowEvents reads one stream of the engine's events from since until it fails or ctx
// ends, handing each message to handle. up is called once the request is made: it goes
// out in the background, and "since" replays what it misses, so being up is as good as
// being connected. Runtimes of the engine's kinds (docker, swarm) share it.
func FollowEvents(ctx context.Context, cli *client.Client, since time.Time, f client.Filters, up func(), handle func(events.Message)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := cli.Events(ctx, client.EventsListOptions{Since: strconv.FormatInt(since.Unix(), 10), Filters: f})
	if up != nil {
		up()
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

// handle delivers an exit to the watch of the event's container, if any.
func (r *Runtime) handle(ctx context.Context, m events.Message) {
	t := time.Unix(0, m.TimeNano)
	r.mu.Lock()
	if t.After(r.since) {
		// Seconds granularity on resume: the replay overlaps, which watches tolerate.
		r.since = t
	}
	if m.Type == events.ImageEventType {
		if m.Action == events.ActionTag {
			// An image was built or tagged anew: a container made from an earlier image
			// of that name must be checked at its next start (issue 17: a rebuilt image is
			// used). Rare, so forgetting all is simpler than matching names.
			clear(r.known)
			r.notifyRunning(backend.ImageChanged)
		}
		r.mu.Unlock()
		return
	}
	r.noteDeployName(m)
	if m.Action == events.ActionRename {
		r.mu.Unlock()
		return
	}
	if m.Action == events.ActionStart {
		if r.watches[m.Actor.ID] == nil {
			// Not a start of sact's own (each adds its watch first): someone started an
			// app's container by hand (deploy.go).
			r.startedOutside(m)
		}
		r.mu.Unlock()
		return
	}
	if m.Action == events.ActionCreate {
		// A container's mounts are fixed at create: note those it can write.
		r.mu.Unlock()
		go func() {
			ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			if ins, err := r.cli.ContainerInspect(ictx, m.Actor.ID, client.ContainerInspectOptions{}); err == nil {
				r.addMounts(ins.Container.Mounts)
			}
		}()
		return
	}
	if m.Action == events.ActionDestroy {
		for name, k := range r.known {
			if k.id == m.Actor.ID {
				delete(r.known, name)
			}
		}
	}
	w := r.watches[m.Actor.ID]
	if w == nil || t.Before(w.started) {
		r.mu.Unlock()
		return
	}
	if isHealth(m.Action) {
		w.health.set(m.Action)
		r.mu.Unlock()
		return
	}
	if m.Action == events.ActionKill {
		// Someone sent the container a signal through the engine (sact's own stops too,
		// which the activator knows as its own): the die that follows is no crash.
		w.killed = true
		r.mu.Unlock()
		return
	}
	delete(r.watches, m.Actor.ID)
	killed := w.killed
	r.mu.Unlock()

	code := -1
	if c, err := strconv.Atoi(m.Actor.Attributes["exitCode"]); err == nil {
		code = c
	}
	reason := "exited"
	if m.Action == events.ActionDestroy {
		reason = "removed"
	}
	go func() {
		e := backend.Exit{Code: code, Reason: reason, Killed: killed}
		ictx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if reason == "exited" {
			if ins, err := r.cli.ContainerInspect(ictx, m.Actor.ID, client.ContainerInspectOptions{}); err == nil && ins.Container.State != nil && ins.Container.State.OOMKilled {
				e.Reason = "oom-killed"
			}
		}
		e.Logs = r.tail(ictx, m.Actor.ID)
		w.deliver(e)
	}()
}

// recheck looks at every watched container after the event stream was down, in case its
// replay was incomplete.
func (r *Runtime) recheck(ctx context.Context) {
	r.mu.Lock()
	ids := slices.Collect(maps.Keys(r.watches))
	r.mu.Unlock()
	for _, id := range ids {
		ins, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
		switch {
		case cerrdefs.IsNotFound(err):
			r.fire(id, backend.Exit{Code: -1, Reason: "removed"})
		case err == nil && ins.Container.State != nil && !ins.Container.State.Running:
			r.fire(id, backend.Exit{Code: ins.Container.State.ExitCode, Reason: "exited"})
		}
	}
}

func (r *Runtime) fire(id string, e backend.Exit) {
	r.mu.Lock()
	w := r.watches[id]
	delete(r.watches, id)
	r.mu.Unlock()
	if w != nil {
		w.deliver(e)
	}
}

// tail returns the container's last log lines.
func (r *Runtime) tail(ctx context.Context, id string) string {
	s, _ := r.logs(ctx, id, r.logLines, false)
	return strings.TrimSpace(s)
}

func (r *Runtime) logs(ctx context.Context, id string, n int, timestamps bool) (string, error) {
	rc, err := r.cli.ContainerLogs(ctx, id, client.ContainerLogsOptions{
		ShowStdout: true, ShowStderr: true, Tail: strconv.Itoa(n), Timestamps: timestamps,
	})
	if err != nil {
		return "", err
	}
	defer rc.Close()
	var buf bytes.Buffer
	if _, err := stdcopy.StdCopy(&buf, &buf, rc); err != nil && buf.Len() == 0 {
		return "", err
	}
	return buf.String(), nil
}

// Logs returns the last n lines the app's container wrote, with timestamps.
func (r *Runtime) Logs(ctx context.Context, spec backend.Spec, n int) (string, error) {
	s, err := r.logs(ctx, containerRef(spec), n, true)
	if err != nil {
		return "", fmt.Errorf("reading the logs of container %s: %w", containerRef(spec), err)
	}
	return s, nil
}

func (r *Runtime) addWatch(id, app string, started time.Time) *watch {
	w := &watch{app: app, started: started, exited: make(chan backend.Exit, 1), health: newHealth()}
	r.mu.Lock()
	if old := r.watches[id]; old != nil {
		r.mu.Unlock()
		return old
	}
	r.watches[id] = w
	r.mu.Unlock()
	return w
}

func (r *Runtime) dropWatch(id string) {
	r.mu.Lock()
	delete(r.watches, id)
	r.mu.Unlock()
}

// Start creates the app's container if it does not exist or was made from other settings,
// and starts it.
func (r *Runtime) Start(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	// Exits are only seen once the event stream is up; it is started with the daemon, so
	// this waits only for the first start after boot, and not long.
	select {
	case <-r.live:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ref := containerRef(spec)
	r.mu.Lock()
	k, ok := r.known[ref]
	r.mu.Unlock()
	if ok && (spec.Container != "" || k.hash == spec.Hash) {
		inst, err := r.start(ctx, spec, k.id)
		if err == nil || !cerrdefs.IsNotFound(err) {
			return inst, err
		}
		r.forget(ref) // removed behind sact's back, and the event not seen yet
	}
	ins, err := r.cli.ContainerInspect(ctx, ref, client.ContainerInspectOptions{})
	switch {
	case cerrdefs.IsNotFound(err):
		if spec.Container != "" {
			return nil, fmt.Errorf("container %q does not exist; create it (docker compose create) or fix the app's container:", spec.Container)
		}
		id, err := r.create(ctx, spec)
		if err != nil {
			return nil, err
		}
		return r.start(ctx, spec, id)
	case err != nil:
		return nil, fmt.Errorf("inspecting container %s: %w", ref, err)
	}
	c := ins.Container
	if c.Config != nil {
		r.remember(ref, c.ID, c.Config.Labels[LabelConfig])
	}
	outdated := ""
	if spec.Container == "" && c.Config != nil && c.Config.Labels[LabelConfig] != spec.Hash {
		outdated = "the app's settings changed"
	} else if spec.Container == "" && spec.Image != "" && (c.State == nil || !c.State.Running) {
		// The same tag may name a rebuilt image: the container must be made from the
		// image the tag names now.
		if img, err := r.cli.ImageInspect(ctx, spec.Image); err == nil && img.ID != "" && img.ID != c.Image {
			outdated = "its image was rebuilt"
		}
	}
	if outdated != "" {
		if c.State != nil && c.State.Running {
			// Running outside sact's knowledge: adopt it rather than cut it off.
			return r.instance(spec, c)
		}
		r.log.Info("recreating container", "app", spec.Name, "container", ref, "reason", outdated, "old_config", c.Config.Labels[LabelConfig], "config", spec.Hash)
		if _, err := r.cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("removing outdated container %s: %w", ref, err)
		}
		id, err := r.create(ctx, spec)
		if err != nil {
			return nil, err
		}
		return r.start(ctx, spec, id)
	}
	if c.State != nil && c.State.Running {
		if c.State.Paused {
			if _, err := r.cli.ContainerUnpause(ctx, c.ID, client.ContainerUnpauseOptions{}); err != nil {
				return nil, fmt.Errorf("unpausing container %s: %w", ref, err)
			}
		}
		return r.instance(spec, c)
	}
	return r.start(ctx, spec, c.ID)
}

func (r *Runtime) remember(ref, id, hash string) {
	r.mu.Lock()
	r.known[ref] = made{id: id, hash: hash}
	r.mu.Unlock()
}

func (r *Runtime) forget(ref string) {
	r.mu.Lock()
	delete(r.known, ref)
	r.mu.Unlock()
}

func (r *Runtime) start(ctx context.Context, spec backend.Spec, id string) (*backend.Instance, error) {
	w := r.addWatch(id, spec.Name, time.Now().Add(-time.Millisecond))
	if _, err := r.cli.ContainerStart(ctx, id, client.ContainerStartOptions{}); err != nil {
		r.dropWatch(id)
		// %w keeps NotFound visible to Start's fallback.
		return nil, fmt.Errorf("starting container %s: %w", containerRef(spec), err)
	}
	up, pid, err := r.upstream(ctx, spec, id)
	if err != nil {
		// A container that exits at once has lost its address by the time it is
		// inspected; its exit, which the event stream reports with the code and the
		// last log lines, is the reason to give, not the missing address.
		t := time.NewTimer(2 * time.Second)
		defer t.Stop()
		select {
		case e, ok := <-w.exited:
			if ok {
				err = fmt.Errorf("container %s exited as it started: %s", containerRef(spec), e)
				if e.Logs != "" {
					err = fmt.Errorf("%w; last log lines:\n%s", err, e.Logs)
				}
			}
		case <-t.C:
		case <-ctx.Done():
		}
		return nil, err
	}
	return &backend.Instance{ID: shortID(id), Upstream: up, Pid: pid, Exited: w.exited}, nil
}

// instance describes a container that already runs.
func (r *Runtime) instance(spec backend.Spec, c container.InspectResponse) (*backend.Instance, error) {
	w := r.addWatch(c.ID, spec.Name, time.Now().Add(-time.Millisecond))
	up, err := upstreamOf(spec, c)
	if err != nil {
		return nil, err
	}
	// Exited before the watch existed? Then no event will come for it.
	pid := 0
	if c.State != nil {
		pid = c.State.Pid
	}
	return &backend.Instance{ID: shortID(c.ID), Upstream: up, Pid: pid, Exited: w.exited}, nil
}

// upstream is where the started container accepts connections: spec.Upstream, or Port on
// the container's own address, which only exists once it runs; and then its process.
func (r *Runtime) upstream(ctx context.Context, spec backend.Spec, id string) (backend.Addr, int, error) {
	if spec.Port == 0 {
		return spec.Upstream, 0, nil
	}
	ins, err := r.cli.ContainerInspect(ctx, id, client.ContainerInspectOptions{})
	if err != nil {
		return backend.Addr{}, 0, fmt.Errorf("finding the address of container %s: %w", containerRef(spec), err)
	}
	up, err := upstreamOf(spec, ins.Container)
	pid := 0
	if ins.Container.State != nil {
		pid = ins.Container.State.Pid
	}
	return up, pid, err
}

func upstreamOf(spec backend.Spec, c container.InspectResponse) (backend.Addr, error) {
	if spec.Port == 0 {
		return spec.Upstream, nil
	}
	if c.NetworkSettings != nil {
		names := slices.Sorted(maps.Keys(c.NetworkSettings.Networks))
		if spec.Network != "" && c.NetworkSettings.Networks[spec.Network] != nil {
			names = []string{spec.Network}
		}
		for _, n := range names {
			ep := c.NetworkSettings.Networks[n]
			if ep != nil && ep.IPAddress.IsValid() {
				return backend.Addr{Network: "tcp", Address: ep.IPAddress.String() + ":" + strconv.Itoa(spec.Port)}, nil
			}
		}
	}
	return backend.Addr{}, fmt.Errorf("container %s has no IP address to reach port %d on (network %q); use a bridge or user-defined network, or set upstream: instead", containerRef(spec), spec.Port, spec.Network)
}

// Labels are the labels of what sact makes for spec (a container, a service): the
// app's own, and sact's, by which it finds and checks it again.
func Labels(spec backend.Spec) map[string]string {
	labels := maps.Clone(spec.Labels)
	if labels == nil {
		labels = make(map[string]string)
	}
	labels[LabelApp] = spec.Name
	labels[LabelConfig] = spec.Hash
	return labels
}

// Env is spec's environment as the Engine API takes it, in a stable order.
func Env(spec backend.Spec) []string {
	env := make([]string, 0, len(spec.Env))
	for _, k := range slices.Sorted(maps.Keys(spec.Env)) {
		env = append(env, k+"="+spec.Env[k])
	}
	return env
}

// create makes the app's container from spec.
func (r *Runtime) create(ctx context.Context, spec backend.Spec) (string, error) {
	return r.createAs(ctx, spec, ContainerName(spec.Name))
}

// createAs makes a container from spec named name: the app's own, or its next incarnation
// during a deploy (deploy.go), which only Promote makes the app's.
func (r *Runtime) createAs(ctx context.Context, spec backend.Spec, name string) (string, error) {
	labels, env := Labels(spec), Env(spec)
	cfg := &container.Config{
		Image:      spec.Image,
		Cmd:        spec.Cmd,
		Entrypoint: spec.Entrypoint,
		Env:        env,
		User:       spec.User,
		Labels:     labels,
	}
	hc := &container.HostConfig{
		Binds:       slices.Clone(spec.Volumes),
		NetworkMode: container.NetworkMode(spec.Network),
	}
	if h := spec.Handoff; h != nil {
		argv, err := r.command(ctx, spec)
		if err != nil {
			return "", err
		}
		cfg.Entrypoint = []string{ShimPath}
		cfg.Cmd = append([]string{"shim", "--"}, argv...)
		// Both read-only: a container that runs as root is root on its bind mounts, and
		// connect(2) to the handoff socket needs no write access to the mount.
		hc.Binds = append(hc.Binds, h.Binary+":"+ShimPath+":ro", h.Dir+":"+ShimDir+":ro")
	}
	hc.Memory = spec.Memory
	if spec.CPUs > 0 {
		hc.NanoCPUs = int64(math.Round(spec.CPUs * 1e9))
	}
	res, err := r.cli.ContainerCreate(ctx, client.ContainerCreateOptions{
		Name: name, Config: cfg, HostConfig: hc,
	})
	if err != nil {
		if cerrdefs.IsNotFound(err) {
			return "", fmt.Errorf("creating container %s: image %q not found in the local engine (%v); build or load it first (docker build -t %s . / docker load), sact never pulls", name, spec.Image, err, spec.Image)
		}
		return "", fmt.Errorf("creating container %s: %w", name, err)
	}
	if name == ContainerName(spec.Name) {
		r.remember(name, res.ID, spec.Hash)
	}
	r.log.Info("created container", "app", spec.Name, "container", name, "id", shortID(res.ID), "config", spec.Hash)
	return res.ID, nil
}

// Where the shim and its socket directory are mounted in a handoff container.
const (
	ShimPath = "/sact"
	ShimDir  = "/run/sact-handoff"
)

// command is the command line the container would run without the shim: setting the
// entrypoint drops the image's CMD in Docker, so it is rebuilt from the image's config
// with docker's rules (an entrypoint given by the app drops the image's CMD too).
func (r *Runtime) command(ctx context.Context, spec backend.Spec) ([]string, error) {
	entrypoint, cmd := spec.Entrypoint, spec.Cmd
	if entrypoint == nil || cmd == nil {
		img, err := r.cli.ImageInspect(ctx, spec.Image)
		if cerrdefs.IsNotFound(err) {
			return nil, fmt.Errorf("creating container %s: image %q not found in the local engine; build or load it first, sact never pulls", ContainerName(spec.Name), spec.Image)
		}
		if err != nil {
			return nil, fmt.Errorf("inspecting image %s: %w", spec.Image, err)
		}
		if c := img.Config; c != nil {
			if entrypoint == nil {
				entrypoint = c.Entrypoint
				if cmd == nil {
					cmd = c.Cmd
				}
			}
			if spec.User == "" && c.User != "" && c.User != "0" && c.User != "root" {
				return nil, fmt.Errorf("image %s runs as user %q, and handoff must know the uid to give the socket to; set user: to the numeric uid", spec.Image, c.User)
			}
		}
	}
	argv := append(slices.Clone(entrypoint), cmd...)
	if len(argv) == 0 {
		return nil, fmt.Errorf("image %s has neither ENTRYPOINT nor CMD; set cmd: for the app", spec.Image)
	}
	return argv, nil
}

// Pid returns the host pid of the container's first process (the shim, in handoff mode),
// or 0 if it does not run.
func (r *Runtime) Pid(ctx context.Context, spec backend.Spec) (int, error) {
	ins, err := r.cli.ContainerInspect(ctx, containerRef(spec), client.ContainerInspectOptions{})
	if err != nil {
		return 0, fmt.Errorf("inspecting container %s: %w", containerRef(spec), err)
	}
	if ins.Container.State == nil {
		return 0, nil
	}
	return ins.Container.State.Pid, nil
}

// Stop stops the app's container: SIGTERM, SIGKILL after grace.
func (r *Runtime) Stop(ctx context.Context, spec backend.Spec, grace time.Duration) error {
	secs := int(math.Ceil(grace.Seconds()))
	_, err := r.cli.ContainerStop(ctx, containerRef(spec), client.ContainerStopOptions{Timeout: &secs})
	if err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("stopping container %s: %w", containerRef(spec), err)
	}
	return nil
}

// Running returns the app's container if it runs (sact was restarted while it served).
func (r *Runtime) Running(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	if spec.Container == "" {
		r.removeLeftovers(ctx, spec)
	}
	ins, err := r.cli.ContainerInspect(ctx, containerRef(spec), client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("inspecting container %s: %w", containerRef(spec), err)
	}
	c := ins.Container
	running := c.State != nil && c.State.Running
	// A stopped container is not remembered when made from an image: its image may have
	// been rebuilt while sact was down, which its first start checks (Start's slow path).
	remember := running || spec.Image == ""
	if running && spec.Image != "" {
		// Adopted as it runs; but if its image was rebuilt meanwhile, its next start after
		// it stops must take the slow path, which recreates it.
		if img, err := r.cli.ImageInspect(ctx, spec.Image); err == nil && img.ID != c.Image {
			remember = false
		}
	}
	if c.Config != nil && (spec.Container != "" || c.Config.Labels[LabelApp] == spec.Name) && remember {
		r.remember(containerRef(spec), c.ID, c.Config.Labels[LabelConfig])
	}
	if !running {
		return nil, nil
	}
	if spec.Container == "" && (c.Config == nil || c.Config.Labels[LabelApp] != spec.Name) {
		return nil, fmt.Errorf("a container named %s exists but was not made by sact for app %q (label %s); rename or remove it", containerRef(spec), spec.Name, LabelApp)
	}
	if c.State.Paused {
		// Paused by an earlier sact (pause_after): a new sact starts its clocks afresh,
		// with the app running.
		if _, err := r.cli.ContainerUnpause(ctx, c.ID, client.ContainerUnpauseOptions{}); err != nil {
			return nil, fmt.Errorf("unpausing container %s to adopt it: %w", containerRef(spec), err)
		}
	}
	return r.instance(spec, c)
}

// Pause freezes the app's container.
func (r *Runtime) Pause(ctx context.Context, spec backend.Spec) error {
	if _, err := r.cli.ContainerPause(ctx, containerRef(spec), client.ContainerPauseOptions{}); err != nil {
		return fmt.Errorf("pausing container %s: %w", containerRef(spec), err)
	}
	return nil
}

// Unpause thaws it.
func (r *Runtime) Unpause(ctx context.Context, spec backend.Spec) error {
	if _, err := r.cli.ContainerUnpause(ctx, containerRef(spec), client.ContainerUnpauseOptions{}); err != nil {
		return fmt.Errorf("unpausing container %s: %w", containerRef(spec), err)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Labelled is a container that declares itself an app with the label sact.enable=true.
type Labelled struct {
	Name   string
	Labels map[string]string
}

// LabelledContainers lists the containers, created or running, that carry the label
// selector ("sact.enable=true") themselves, with their own labels: sact.* labels that came
// with the image do not count (see ownLabels), and containers sact made for its own apps
// are none.
func LabelledContainers(ctx context.Context, selector string) ([]Labelled, error) {
	cli, err := client.New(client.FromEnv, client.WithAPIVersionNegotiation())
	if err != nil {
		return nil, err
	}
	defer cli.Close()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{All: true, Filters: make(client.Filters).Add("label", selector)})
	if err != nil {
		return nil, fmt.Errorf("listing containers labelled %s: %w", selector, err)
	}
	key, value, _ := strings.Cut(selector, "=")
	images := make(map[string]map[string]string) // image ID -> its labels
	var out []Labelled
	for _, c := range res.Items {
		if _, ok := c.Labels[LabelApp]; ok {
			continue // made by sact for an app of its own
		}
		il, ok := images[c.ImageID]
		if !ok {
			ins, err := cli.ImageInspect(ctx, c.ImageID)
			switch {
			case cerrdefs.IsNotFound(err):
			case err != nil:
				return nil, fmt.Errorf("inspecting the image of labelled container %s: %w", c.ID, err)
			case ins.Config != nil:
				il = ins.Config.Labels
			}
			images[c.ImageID] = il
		}
		labels := ownLabels(c.Labels, il)
		if v, ok := labels[key]; !ok || v != value && value != "" {
			continue // the selector came with the image
		}
		name := c.ID
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		out = append(out, Labelled{Name: name, Labels: labels})
	}
	return out, nil
}

// ownLabels returns the labels of a container less the sact.* labels it got from its
// image. Docker copies an image's labels into every container made from it, and an image
// is the app's, which is not trusted: only whoever made the container (with the engine's
// socket, so root) may declare it an app and say where sact sends its clients. A label
// set on the container to the image's own value is dropped too; the two cannot be told
// apart.
func ownLabels(container, image map[string]string) map[string]string {
	out := make(map[string]string, len(container))
	for k, v := range container {
		if iv, ok := image[k]; ok && iv == v && strings.HasPrefix(k, "sact.") {
			continue
		}
		out[k] = v
	}
	return out
}
