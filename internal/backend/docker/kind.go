package docker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"unicode"

	"github.com/sact-project/sact/internal/backend"
)

// Image is the kind of app that runs in a container sact creates from an image (image:).
type Image struct{}

// Container is the kind of app that runs in a container made elsewhere, docker compose
// create say, which sact only starts and stops (container:). Such containers may also
// declare themselves apps with labels (sact.enable=true).
type Container struct{}

// imageOwn are the settings of a container that sact creates. A plain process has no use
// for most, and a container made elsewhere has its own.
var imageOwn = []string{"cmd", "entrypoint", "volumes", "user", "network", "memory", "cpus", "labels"}

func (Image) Info() backend.KindInfo {
	return backend.KindInfo{
		Name: "image", Describe: "container", Help: "a docker image", Runs: "an image",
		Select: []string{"image"}, Own: imageOwn, Runtime: "docker",
		Refuse: func(key string) string {
			if key == "dir" {
				return "applies only to plain processes (command:); set the working directory in the image instead"
			}
			return "does not apply to an app that runs an image (image:); remove it"
		},
	}
}

func (Image) Decode(s backend.Settings, spec *backend.Spec) {
	spec.Image = s.String("image", checkImage)
	spec.Cmd = s.Argv("cmd")
	spec.Entrypoint = s.Argv("entrypoint")
	spec.Volumes = s.List("volumes", checkVolume)
	spec.User = s.String("user", nil)
	spec.Network = s.String("network", nil)
	spec.Memory = memory(s, "memory")
	spec.CPUs = s.Number("cpus")
	spec.Labels = s.Map("labels", checkLabelKey)
}

func (Image) NewRuntime(ctx context.Context, deps backend.Deps) (backend.Runtime, error) {
	return New(ctx, Options{Logger: deps.Logger})
}

func (Container) Info() backend.KindInfo {
	return backend.KindInfo{
		Name: "container", Describe: "existing container", Help: "an existing container to start and stop", Runs: "an existing container",
		Select: []string{"container"}, Skip: []string{"env", "env_file"}, Runtime: "docker",
		Refuse: func(key string) string {
			return fmt.Sprintf("container: adopts a container as it was created, so %s cannot change it; set it where the container is created, or use image: and let sact create it", key)
		},
		Cannot: map[string]string{
			"handoff": "handoff runs the app under sact's shim, which must be set when the container is created; use image: and let sact create it, or remove handoff",
		},
	}
}

func (Container) Decode(s backend.Settings, spec *backend.Spec) {
	spec.Container = s.String("container", checkContainer)
}

func (Container) NewRuntime(ctx context.Context, deps backend.Deps) (backend.Runtime, error) {
	return New(ctx, Options{Logger: deps.Logger})
}

// Labelled lists the containers that declare themselves apps (backend.LabelSource).
func (Container) Labelled(ctx context.Context, selector string) ([]backend.LabelledApp, error) {
	cs, err := LabelledContainers(ctx, selector)
	if err != nil {
		return nil, err
	}
	apps := make([]backend.LabelledApp, len(cs))
	for i, c := range cs {
		apps[i] = backend.LabelledApp{Key: "container", Value: c.Name, Labels: c.Labels}
	}
	return apps, nil
}

// Check asks the engine whether the app's image exists, its user exists in it, and its
// port is exposed (backend.Checker: sact check --deep).
func (Image) Check(ctx context.Context, spec backend.Spec) (problems, notes []string, err error) {
	bad := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
	f, err := InspectImage(ctx, spec.Image)
	if err != nil {
		return nil, nil, fmt.Errorf("asking the engine about %s: %w", spec.Image, err)
	}
	if !f.Exists {
		bad("image %s does not exist in the engine; build it (sact build %s, docker build) or pull it", spec.Image, spec.Name)
		return problems, nil, nil
	}
	if spec.User != "" {
		name, group, _ := strings.Cut(spec.User, ":")
		if !numeric(name) && !hasAccount(f.Passwd, name) {
			bad("user %s does not exist in image %s (its /etc/passwd); use a uid, or add the user to the image", name, spec.Image)
		}
		if group != "" && !numeric(group) && !hasAccount(f.Group, group) {
			bad("group %s does not exist in image %s (its /etc/group); use a gid, or add the group to the image", group, spec.Image)
		}
	}
	if spec.Port > 0 {
		switch {
		case slices.Contains(f.Exposed, spec.Port):
		case len(f.Exposed) == 0:
			notes = append(notes, fmt.Sprintf("image %s exposes no port; make sure the app listens on %d", spec.Image, spec.Port))
		default:
			bad("port %d is not exposed by image %s, which exposes %v; set port: to the one the app listens on", spec.Port, spec.Image, f.Exposed)
		}
	}
	return problems, notes, nil
}

func numeric(s string) bool { _, err := strconv.ParseUint(s, 10, 32); return err == nil }

// hasAccount reports whether an /etc/passwd or /etc/group names name.
func hasAccount(file []byte, name string) bool {
	for line := range bytes.Lines(file) {
		if n, _, ok := bytes.Cut(line, []byte(":")); ok && string(n) == name {
			return true
		}
	}
	return false
}

// minMemory is the least memory limit docker accepts.
const minMemory = 6 << 20

func memory(s backend.Settings, key string) int64 {
	m := s.Size(key)
	if m > 0 && m < minMemory {
		s.Errorf(key, "%d bytes is below docker's least memory limit, 6m; raise it", m)
		return 0
	}
	return m
}

var containerName = regexp.MustCompile(`^/?[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

func checkContainer(s string) error {
	if !containerName.MatchString(s) {
		return fmt.Errorf("%s is not a docker container name; give the name shown by docker ps", quote(s))
	}
	return nil
}

// checkImage catches what would otherwise only fail at the app's first start. Docker
// checks the rest.
func checkImage(s string) error {
	if strings.ContainsFunc(s, unicode.IsSpace) {
		return fmt.Errorf("%s has spaces; an image is a single word like nginx:1.27 (arguments go in cmd)", quote(s))
	}
	name, _, _ := strings.Cut(s, "@")
	last := name[strings.LastIndex(name, "/")+1:]
	last, _, _ = strings.Cut(last, ":")
	if strings.ToLower(last) != last {
		return fmt.Errorf("%s: image names are lowercase (the tag may not be); write %s", quote(s), strings.Replace(s, last, strings.ToLower(last), 1))
	}
	return nil
}

func checkLabelKey(k string) error {
	if k == "" {
		return errors.New("empty label name")
	}
	if strings.HasPrefix(k, "sact.") {
		return fmt.Errorf("labels starting with sact. are sact's own (sact.app, sact.config); choose another name")
	}
	return nil
}

var volumeName = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]+$`)

// checkVolume checks docker's -v syntax: "/container" (an anonymous volume),
// "/host:/container[:options]" or "name:/container[:options]".
func checkVolume(v string) error {
	parts := strings.Split(v, ":")
	const how = "write /host/path:/container/path[:ro] or volume-name:/container/path"
	if len(parts) > 3 {
		return fmt.Errorf("%s has too many colons; %s", quote(v), how)
	}
	if len(parts) == 1 {
		if !strings.HasPrefix(v, "/") {
			return fmt.Errorf("%s: %s", quote(v), how)
		}
		return nil
	}
	src, dst := parts[0], parts[1]
	switch {
	case strings.HasPrefix(src, "~"):
		return fmt.Errorf("%s: docker does not expand ~; write the host path in full, like /home/me/data", quote(v))
	case !strings.HasPrefix(src, "/") && !volumeName.MatchString(src):
		return fmt.Errorf("%s: host path %s must be absolute (docker does not resolve relative paths) or a volume name", quote(v), quote(src))
	case !strings.HasPrefix(dst, "/"):
		return fmt.Errorf("%s: the path in the container, %s, must be absolute; %s", quote(v), quote(dst), how)
	case len(parts) == 3 && parts[2] == "":
		return fmt.Errorf("%s ends in a colon; add options like ro, or remove the colon", quote(v))
	}
	return nil
}

// quote quotes s for a message, shortened if it is long, as config's messages do.
func quote(s string) string {
	if r := []rune(s); len(r) > 60 {
		s = string(r[:57]) + "..."
	}
	return strconv.Quote(s)
}
