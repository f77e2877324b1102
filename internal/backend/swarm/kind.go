package swarm

import (
	"context"
	"fmt"
	"regexp"
	"strings"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/docker"
)

// Image is the kind of app that runs as a swarm service sact makes from an image
// (image: with swarm:).
type Image struct{}

// Service is the kind of app that runs as a swarm service made elsewhere, which sact
// scales between 0 and 1 replicas (service:).
type Service struct{}

// What neither kind can do: the task runs on whichever node the scheduler picks.
var cannot = map[string]string{
	"handoff":            "handoff passes the app its listening sockets, and a socket cannot cross hosts: a swarm task runs on whichever node the scheduler picks; remove handoff",
	"pause_after":        "sact cannot pause a swarm task (it runs on another node's engine, and swarm has no pause); remove pause_after",
	"ready: healthcheck": "sact does not wait for a swarm task's HEALTHCHECK; use ready: {http: /health}, or remove ready",
}

// upstreamRefused is why upstream: does not apply to either kind.
const upstreamRefused = "a swarm task's address is known only once it runs; give port: (the port the task listens on, published in host mode) instead"

// imageOwn are the image kind's settings, which a swarm service sact makes reads too.
var imageOwn = []string{"cmd", "entrypoint", "volumes", "user", "network", "memory", "cpus", "labels"}

var swarmKeys = []string{"constraints", "preferences", "reserve_cpus", "reserve_memory"}

func (Image) Info() backend.KindInfo {
	return backend.KindInfo{
		Name: "swarm", Describe: "swarm service", Help: "a swarm service sact creates", Runs: "a swarm service",
		Select: []string{"swarm", "image"}, Own: imageOwn, Skip: []string{"upstream"}, Runtime: "swarm",
		Refuse: func(key string) string {
			if key == "upstream" {
				return upstreamRefused
			}
			return "does not apply to a swarm service sact creates (image: with swarm:); remove it"
		},
		Cannot: cannot,
	}
}

func (Image) Decode(s backend.Settings, spec *backend.Spec) {
	docker.Image{}.Decode(s, spec) // image, cmd, volumes, memory...: as a container's
	sw := s.Sub("swarm", swarmKeys)
	spec.Extra = Settings{
		Constraints:   sw.List("constraints", checkConstraint),
		Preferences:   sw.List("preferences", checkPreference),
		ReserveMemory: sw.Size("reserve_memory"),
		ReserveCPUs:   sw.Number("reserve_cpus"),
	}
}

func (Image) NewRuntime(ctx context.Context, deps backend.Deps) (backend.Runtime, error) {
	return New(ctx, Options{Logger: deps.Logger})
}

func (Service) Info() backend.KindInfo {
	return backend.KindInfo{
		Name: "service", Describe: "existing swarm service", Help: "a swarm service made elsewhere", Runs: "an existing swarm service",
		Select: []string{"service"}, Skip: []string{"env", "env_file", "dir", "upstream"}, Runtime: "swarm",
		Refuse: func(key string) string {
			if key == "upstream" {
				return upstreamRefused
			}
			return fmt.Sprintf("service: scales a swarm service made elsewhere, so %s cannot change it; set it where the service is created, or use image: with swarm: and let sact create it", key)
		},
		Cannot: cannot,
	}
}

func (Service) Decode(s backend.Settings, spec *backend.Spec) {
	if name := s.String("service", checkService); name != "" {
		spec.Extra = Settings{Service: name}
	}
}

func (Service) NewRuntime(ctx context.Context, deps backend.Deps) (backend.Runtime, error) {
	return New(ctx, Options{Logger: deps.Logger})
}

// checkConstraint checks the shape docker service create --constraint takes.
func checkConstraint(s string) error {
	if !strings.Contains(s, "==") && !strings.Contains(s, "!=") {
		return fmt.Errorf("%q is no placement constraint; write ATTRIBUTE==VALUE or ATTRIBUTE!=VALUE, like node.role==worker or node.labels.zone==a", s)
	}
	return nil
}

// checkPreference checks a spread preference: a node attribute to spread over, with or
// without docker's spread= prefix.
func checkPreference(s string) error {
	a := strings.TrimPrefix(s, "spread=")
	if !strings.HasPrefix(a, "node.") && !strings.HasPrefix(a, "engine.") {
		return fmt.Errorf("%q is no spread preference; name a node attribute, like node.labels.zone", s)
	}
	return nil
}

var serviceName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// checkService checks a swarm service name.
func checkService(s string) error {
	if !serviceName.MatchString(s) {
		return fmt.Errorf("%q is not a swarm service name; give the name shown by docker service ls", s)
	}
	return nil
}
