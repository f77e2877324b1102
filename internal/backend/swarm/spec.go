package swarm

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/moby/moby/api/types/mount"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/api/types/swarm"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/docker"
)

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
	labels, env := docker.Labels(spec), docker.Env(spec)
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
