package config

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/kinds"
)

// testKind is a kind made of its Info and a Decode function, as a new kind's package
// would be.
type testKind struct {
	info   backend.KindInfo
	decode func(s backend.Settings, spec *backend.Spec)
}

func (k testKind) Info() backend.KindInfo { return k.info }
func (k testKind) Decode(s backend.Settings, spec *backend.Spec) {
	if k.decode != nil {
		k.decode(s, spec)
	}
}
func (testKind) NewRuntime(context.Context, backend.Deps) (backend.Runtime, error) {
	return nil, errors.New("a test kind runs nothing")
}

// swarmSettings is what the swarm-like kind below keeps in Spec.Extra.
type swarmSettings struct {
	Service     string   `json:"service,omitempty"`
	Constraints []string `json:"constraints,omitempty"`
}

// The kinds of issue 15, as they would declare themselves: image: with swarm: is a
// service sact creates, service: one made elsewhere.
var (
	swarmKind = testKind{
		info: backend.KindInfo{Name: "swarm", Describe: "swarm service", Help: "a swarm service sact creates", Runs: "a swarm service",
			Select: []string{"swarm", "image"}, Own: []string{"memory", "cmd"}, Runtime: "swarm",
			Cannot: map[string]string{"handoff": "a socket cannot cross hosts; remove handoff"}},
		decode: func(s backend.Settings, spec *backend.Spec) {
			spec.Image = s.String("image", nil)
			spec.Memory = s.Size("memory")
			spec.Cmd = s.Argv("cmd")
			sw := s.Sub("swarm", []string{"constraints"})
			if c := sw.List("constraints", nil); c != nil {
				spec.Extra = swarmSettings{Constraints: c}
			}
		},
	}
	serviceKind = testKind{
		info: backend.KindInfo{Name: "service", Describe: "swarm service", Help: "a swarm service made elsewhere", Runs: "an existing service",
			Select: []string{"service"}, Runtime: "swarm",
			Refuse: func(key string) string { return key + " is the service's own; set it where the service is made" }},
		decode: func(s backend.Settings, spec *backend.Spec) {
			if name := s.String("service", nil); name != "" {
				spec.Extra = swarmSettings{Service: name}
			}
		},
	}
	// base are the kinds of a single host; the messages below list them. The real swarm
	// kinds (backend/swarm) are in kinds.All, and the test kinds stand in for them here.
	base      = slices.DeleteFunc(slices.Clone(kinds.All), func(k backend.Kind) bool { return k.Info().Runtime == "swarm" })
	withSwarm = append(slices.Clone(base), swarmKind, serviceKind)
)

func TestKindSelection(t *testing.T) {
	tests := map[string]struct {
		app     string // the settings of apps.web, one per line
		kinds   []backend.Kind
		want    string // the kind's Info().Name
		wantErr string // the errors, one per line
	}{
		"image":           {app: "image: web:1", want: "image"},
		"container":       {app: "container: web", want: "container"},
		"command":         {app: "command: [./server]", want: "command"},
		"image and swarm": {app: "image: web:1\nswarm: {constraints: [node.role==worker]}", kinds: withSwarm, want: "swarm"},
		"swarm first":     {app: "swarm: {constraints: [node.role==worker]}\nimage: web:1", kinds: withSwarm, want: "swarm"},
		"image, no swarm kind": {app: "image: web:1\nswarm: {}",
			wantErr: `sact.yaml:4: apps.web.swarm: unknown key; remove it or check its spelling`},
		"service":                      {app: "service: web", kinds: withSwarm, want: "service"},
		"image alone with swarm kinds": {app: "image: web:1", kinds: withSwarm, want: "image"},
		"image and container": {app: "image: web:1\ncontainer: web",
			wantErr: "sact.yaml:4: apps.web.container: image and container are both set; keep one: an app runs an image, an existing container or a command"},
		"service and image": {app: "service: web\nimage: web:1", kinds: withSwarm,
			wantErr: "sact.yaml:4: apps.web.image: service and image are both set; keep one: an app runs an image, an existing container, a command, a swarm service or an existing service"},
		"swarm and container": {app: "image: web:1\ncontainer: web\nswarm: {}", kinds: withSwarm,
			wantErr: "sact.yaml:5: apps.web.swarm: container and swarm are both set; keep one: an app runs an image, an existing container, a command, a swarm service or an existing service"},
		"nothing": {app: "idle: 1m",
			wantErr: "sact.yaml:2: apps.web: nothing to run; add image: (a docker image), container: (an existing container to start and stop) or command: (a plain process)"},
		"swarm without image": {app: "swarm: {}", kinds: withSwarm,
			wantErr: "sact.yaml:2: apps.web: nothing to run; add image: (a docker image), container: (an existing container to start and stop), command: (a plain process), swarm: with image: (a swarm service sact creates) or service: (a swarm service made elsewhere)"},
		"another kind's key": {app: "command: [./server]\nswarm: {}", kinds: withSwarm,
			wantErr: "sact.yaml:4: apps.web.swarm: applies only to containers, and this app is a plain process (command:); remove it"},
		"refused by the kind": {app: "service: web\nvolumes: [\"/a:/b\"]", kinds: withSwarm,
			wantErr: "sact.yaml:4: apps.web.volumes: volumes is the service's own; set it where the service is made"},
		"cannot": {app: "image: web:1\nswarm: {}\nhandoff: true", kinds: withSwarm,
			wantErr: "sact.yaml:5: apps.web.handoff: a socket cannot cross hosts; remove handoff\nsact.yaml:7: apps.web.port: with handoff: true sact does not connect to the app; remove port"},
		"nested unknown key": {app: "image: web:1\nswarm: {constraint: [x]}", kinds: withSwarm,
			wantErr: `sact.yaml:4: apps.web.swarm.constraint: unknown key; did you mean "constraints"?`},
		"a kind's value error": {app: "image: web:1\nmemory: 3",
			wantErr: "sact.yaml:4: apps.web.memory: 3 bytes is below docker's least memory limit, 6m; raise it"},
		"a kind's own check": {app: "image: Web:1",
			wantErr: `sact.yaml:3: apps.web.image: "Web:1": image names are lowercase (the tag may not be); write web:1`},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			ks := tt.kinds
			if ks == nil {
				ks = base
			}
			src := "apps:\n  web:\n    " + strings.ReplaceAll(tt.app, "\n", "\n    ") + "\n    listen: [\"tcp:127.0.0.1:9001\"]\n    port: 80\n"
			cfg, err := Parse("sact.yaml", []byte(src), Options{Kinds: ks, Host: newFakeHost(t)})
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("Parse:\n%v\nwant:\n%s\nconfig:\n%s", err, tt.wantErr, src)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse: %v\nconfig:\n%s", err, src)
			}
			if got := cfg.Apps[0].Kind().Info().Name; got != tt.want {
				t.Errorf("kind %s, want %s", got, tt.want)
			}
		})
	}
}

// TestKindDecodes: what a kind decodes is the app's Spec, Extra included, and its hash.
func TestKindDecodes(t *testing.T) {
	parse := func(src string) *App {
		t.Helper()
		cfg, err := Parse("sact.yaml", []byte(src), Options{Kinds: withSwarm, Host: newFakeHost(t)})
		if err != nil {
			t.Fatalf("Parse: %v\nconfig:\n%s", err, src)
		}
		return cfg.Apps[0]
	}
	const app = "apps:\n  web:\n    image: web:1\n    swarm: {constraints: [%s]}\n    memory: 64m\n    listen: [\"tcp:127.0.0.1:9001\"]\n    port: 80\n"
	worker := parse(strings.Replace(app, "%s", "node.role==worker", 1))
	spec := worker.Spec()
	if spec.Image != "web:1" || spec.Memory != 64<<20 || spec.Port != 80 || spec.Name != "web" {
		t.Errorf("spec %+v", spec)
	}
	if sw, ok := spec.Extra.(swarmSettings); !ok || !slices.Equal(sw.Constraints, []string{"node.role==worker"}) {
		t.Errorf("Extra = %#v, want the constraints", spec.Extra)
	}
	manager := parse(strings.Replace(app, "%s", "node.role==manager", 1))
	if manager.Spec().Hash == spec.Hash {
		t.Errorf("a changed swarm setting keeps hash %s: the service would not be updated", spec.Hash)
	}

	// A kind's settings under defaults: are checked there once, and inherited.
	cfg, err := Parse("sact.yaml", []byte("defaults:\n  memory: 3\napps:\n  web:\n    image: web:1\n    listen: [\"tcp:127.0.0.1:9001\"]\n    port: 80\n  api:\n    image: api:1\n    listen: [\"tcp:127.0.0.1:9002\"]\n    port: 80\n"), Options{Kinds: kinds.All, Host: newFakeHost(t)})
	if err == nil || err.Error() != "sact.yaml:2: defaults.memory: 3 bytes is below docker's least memory limit, 6m; raise it" {
		t.Errorf("Parse = %v, %v; want the one problem of defaults.memory", cfg, err)
	}
	// A key no kind of an app reads is not inherited by it.
	cfg, err = Parse("sact.yaml", []byte("defaults:\n  memory: 64m\napps:\n  web:\n    command: [./web]\n    listen: [\"tcp:127.0.0.1:9001\"]\n    port: 80\n"), Options{Kinds: kinds.All, Host: newFakeHost(t)})
	if err != nil || cfg.Apps[0].Run.Memory != 0 || cfg.Apps[0].Upstream.String() != "tcp:127.0.0.1:80" {
		t.Errorf("Parse = %v; memory %d, upstream %s: want no memory for a process, and its port on the host", err, cfg.Apps[0].Run.Memory, cfg.Apps[0].Upstream)
	}
}
