package docker

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	cerrdefs "github.com/containerd/errdefs"
	"github.com/moby/moby/api/types/events"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// Deploys (backend.Deployer): the new incarnation of app NAME is created as "sact-NAME-Next"
// beside "sact-NAME"; once it is ready, Promote renames the old one "sact-NAME-Old" and the
// new one "sact-NAME", the name users see and that a restarted sact adopts; the old one is
// removed after its drain. App names are lower case, so no app's container can be called
// like one of these.
const (
	nextSuffix = "-Next"
	oldSuffix  = "-Old"
)

func nextName(app string) string { return ContainerName(app) + nextSuffix }
func oldName(app string) string  { return ContainerName(app) + oldSuffix }

// StartNext creates and starts a new incarnation of the app beside the running one. Only
// an app reached on its container's own address can have two, or a handoff app, whose
// two share sact's listening sockets: a fixed upstream (a unix socket in a volume, a
// published port) would be bound by both.
func (r *Runtime) StartNext(ctx context.Context, spec backend.Spec) (*backend.Instance, error) {
	if spec.Container != "" || spec.Port == 0 && spec.Handoff == nil {
		return nil, backend.ErrCannotDeploy
	}
	select {
	case <-r.live:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	// A deploy cut short (sact killed) may have left one behind.
	if err := r.removeIfApp(ctx, nextName(spec.Name), spec.Name); err != nil {
		return nil, err
	}
	id, err := r.createAs(ctx, spec, nextName(spec.Name))
	if err != nil {
		return nil, err
	}
	inst, err := r.start(ctx, spec, id)
	if err != nil {
		r.removeID(context.WithoutCancel(ctx), id)
		return nil, err
	}
	return inst, nil
}

// removeIfApp removes the container called name if it is one of app's (sact.app label);
// another's is an error: it is not sact's to remove.
func (r *Runtime) removeIfApp(ctx context.Context, name, app string) error {
	ins, err := r.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
	if cerrdefs.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("inspecting container %s: %w", name, err)
	}
	if ins.Container.Config == nil || ins.Container.Config.Labels[LabelApp] != app {
		return fmt.Errorf("a container named %s exists but was not made by sact for app %q; rename or remove it", name, app)
	}
	return r.removeID(ctx, ins.Container.ID)
}

func (r *Runtime) removeID(ctx context.Context, id string) error {
	r.dropWatch(id)
	if _, err := r.cli.ContainerRemove(ctx, id, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing container %s: %w", shortID(id), err)
	}
	return nil
}

// removeLeftovers removes the containers of a deploy that a sact gone meanwhile (killed,
// the host rebooted) could not finish: they would otherwise run on unseen. A sact that
// hands over to a new one while it drains an old container loses that drain.
func (r *Runtime) removeLeftovers(ctx context.Context, spec backend.Spec) {
	for _, name := range []string{nextName(spec.Name), oldName(spec.Name)} {
		if !r.mayExist(name) {
			continue
		}
		ins, err := r.cli.ContainerInspect(ctx, name, client.ContainerInspectOptions{})
		if err != nil || ins.Container.Config == nil || ins.Container.Config.Labels[LabelApp] != spec.Name {
			continue
		}
		r.log.Info("removing a container left by an interrupted deploy", "app", spec.Name, "container", name, "reason", "sact was not there to finish the deploy")
		if err := r.removeID(ctx, ins.Container.ID); err != nil {
			r.log.Warn("cannot remove a container left by an interrupted deploy", "app", spec.Name, "container", name, "reason", err)
		}
	}
}

// isDeployName says whether name is one a deploy gives an incarnation (-Next, -Old).
func isDeployName(name string) bool {
	return strings.HasPrefix(name, "sact-") && (strings.HasSuffix(name, nextSuffix) || strings.HasSuffix(name, oldSuffix))
}

// mayExist says whether a container called name (a deploy name) may be on the engine.
func (r *Runtime) mayExist(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.deployNames == nil || r.deployNames[name]
}

// noteDeployName keeps deployNames up with a create, rename or destroy event. Called
// with r.mu held.
func (r *Runtime) noteDeployName(m events.Message) {
	if r.deployNames == nil || m.Type != events.ContainerEventType {
		return
	}
	name := m.Actor.Attributes["name"]
	switch m.Action {
	case events.ActionCreate:
		if isDeployName(name) {
			r.deployNames[name] = true
		}
	case events.ActionRename:
		delete(r.deployNames, strings.TrimPrefix(m.Actor.Attributes["oldName"], "/"))
		if isDeployName(name) {
			r.deployNames[name] = true
		}
	case events.ActionDestroy:
		delete(r.deployNames, name)
	}
}

// Promote gives next the app's name, and old the name of an incarnation on its way out.
func (r *Runtime) Promote(ctx context.Context, spec backend.Spec, old, next *backend.Instance) error {
	ins, err := r.cli.ContainerInspect(ctx, next.ID, client.ContainerInspectOptions{})
	if err != nil {
		return fmt.Errorf("inspecting the new container of app %s: %w", spec.Name, err)
	}
	if err := r.removeIfApp(ctx, oldName(spec.Name), spec.Name); err != nil {
		return err
	}
	name := ContainerName(spec.Name)
	if _, err := r.cli.ContainerRename(ctx, old.ID, client.ContainerRenameOptions{NewName: oldName(spec.Name)}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("renaming container %s to %s: %w", name, oldName(spec.Name), err)
	}
	if _, err := r.cli.ContainerRename(ctx, next.ID, client.ContainerRenameOptions{NewName: name}); err != nil {
		// Put the old one back: it goes on serving under its own name.
		r.cli.ContainerRename(context.WithoutCancel(ctx), old.ID, client.ContainerRenameOptions{NewName: name})
		return fmt.Errorf("renaming container %s to %s: %w", nextName(spec.Name), name, err)
	}
	hash := ""
	if ins.Container.Config != nil {
		hash = ins.Container.Config.Labels[LabelConfig]
	}
	r.remember(name, ins.Container.ID, hash)
	return nil
}

// Retire stops inst and removes it.
func (r *Runtime) Retire(ctx context.Context, spec backend.Spec, inst *backend.Instance, grace time.Duration) error {
	secs := int(math.Ceil(grace.Seconds()))
	// A stop that fails (a slow engine) still ends in the forced removal, which kills: an
	// incarnation left behind would run on unseen.
	stopErr := func() error {
		sctx, cancel := context.WithTimeout(ctx, grace+10*time.Second)
		defer cancel()
		_, err := r.cli.ContainerStop(sctx, inst.ID, client.ContainerStopOptions{Timeout: &secs})
		return err
	}()
	if stopErr != nil && !cerrdefs.IsNotFound(stopErr) {
		r.log.Warn("cannot stop an incarnation of the app; removing it by force", "app", spec.Name, "container", inst.ID, "reason", stopErr)
	}
	if _, err := r.cli.ContainerRemove(ctx, inst.ID, client.ContainerRemoveOptions{Force: true}); err != nil && !cerrdefs.IsNotFound(err) {
		return fmt.Errorf("removing container %s of app %s: %w", inst.ID, spec.Name, err)
	}
	return nil
}

// Outdated compares the running container with what spec would make now.
func (r *Runtime) Outdated(ctx context.Context, spec backend.Spec, inst *backend.Instance) (why, version string, err error) {
	if spec.Container != "" {
		return "", "", nil // not sact's to remake
	}
	ins, err := r.cli.ContainerInspect(ctx, inst.ID, client.ContainerInspectOptions{})
	if err != nil {
		return "", "", fmt.Errorf("inspecting container %s of app %s: %w", inst.ID, spec.Name, err)
	}
	c := ins.Container
	image := ""
	if spec.Image != "" {
		img, err := r.cli.ImageInspect(ctx, spec.Image)
		if err != nil {
			return "", "", fmt.Errorf("inspecting image %s of app %s: %w", spec.Image, spec.Name, err)
		}
		image = img.ID
	}
	version = spec.Hash + "@" + image
	switch {
	case c.Config != nil && c.Config.Labels[LabelConfig] != spec.Hash:
		return "the app's settings changed", version, nil
	case image != "" && image != c.Image:
		return "its image was rebuilt", version, nil
	}
	return "", version, nil
}

// InstancePid returns the host pid of inst's first process, 0 while the engine has not
// recorded it.
func (r *Runtime) InstancePid(ctx context.Context, inst *backend.Instance) (int, error) {
	ins, err := r.cli.ContainerInspect(ctx, inst.ID, client.ContainerInspectOptions{})
	if err != nil {
		return 0, fmt.Errorf("inspecting container %s: %w", inst.ID, err)
	}
	if ins.Container.State == nil || !ins.Container.State.Running {
		return 0, nil
	}
	return ins.Container.State.Pid, nil
}

// Tail returns the container's last log lines.
func (r *Runtime) Tail(ctx context.Context, inst *backend.Instance) string {
	return r.tail(ctx, inst.ID)
}

// Watch reports the app's container started by hand, and images tagged anew.
func (r *Runtime) Watch(app string) (<-chan backend.WatchEvent, func()) {
	ch := make(chan backend.WatchEvent, 4)
	r.mu.Lock()
	r.subs[app] = append(r.subs[app], ch)
	r.mu.Unlock()
	return ch, func() {
		r.mu.Lock()
		defer r.mu.Unlock()
		r.subs[app] = slices.DeleteFunc(r.subs[app], func(c chan backend.WatchEvent) bool { return c == ch })
		if len(r.subs[app]) == 0 {
			delete(r.subs, app)
		}
	}
}

// startedOutside tells the app whose container was started by someone else. Only the
// container named like the app's and labelled as its counts: a Next one, or another
// container someone labelled sact.app, is none of the app's business. Called with r.mu
// held.
func (r *Runtime) startedOutside(m events.Message) {
	app := m.Actor.Attributes[LabelApp]
	if app == "" || m.Actor.Attributes["name"] != ContainerName(app) {
		return
	}
	r.notify(app, backend.Started)
}

// notify sends kind to app's subscribers, dropping it for one that lags (it has one
// queued already, which says the same). Called with r.mu held.
func (r *Runtime) notify(app string, kind backend.WatchKind) {
	for _, ch := range r.subs[app] {
		select {
		case ch <- backend.WatchEvent{Kind: kind}:
		default:
		}
	}
}

// notifyRunning sends kind to the subscribers of every app with a running instance (one
// sact watches): only a running app has anything to deploy, and a thousand sleeping apps
// woken for every image tagged on the host cost a thousand wakeups each time. Called with
// r.mu held.
func (r *Runtime) notifyRunning(kind backend.WatchKind) {
	seen := make(map[string]bool, len(r.watches))
	for _, w := range r.watches {
		if !seen[w.app] {
			seen[w.app] = true
			r.notify(w.app, kind)
		}
	}
}

var (
	_ backend.Deployer      = (*Runtime)(nil)
	_ backend.InstancePider = (*Runtime)(nil)
	_ backend.Watcher       = (*Runtime)(nil)
)
