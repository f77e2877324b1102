// Package backend is the seam between sact's activation logic and whatever actually runs an
// app: a Docker container (backend/docker) or a plain process (backend/process).
//
// It is a leaf package on purpose: it imports nothing of sact's, so the activator can depend
// on it without learning about Docker, and runtimes can be swapped for fakes in tests.
//
// # Kinds
//
// A Kind is one way of running apps, chosen by the settings an app has (image:,
// container:, command:). It decodes its own settings (Settings reports problems at their
// file:line), builds the Runtime its apps run on, and says what it cannot do. Config, the
// daemon and the CLI never name a kind: they ask the app's Kind.
//
// Adding a kind is one package (a type implementing Kind, and its Runtime) and one line in
// the list of kinds, the variable All in package internal/kinds:
//
//	var All = []backend.Kind{
//		docker.Image{}, docker.Container{}, process.Command{},
//		swarm.Service{}, // the new line
//	}
//
// A kind whose apps need settings that Spec has no field for keeps them in Spec.Extra.
//
// # Capabilities
//
// Runtime is what every runtime does. The rest are optional interfaces, found by type
// assertion; a runtime without one gets a clear refusal where it is needed:
//
//   - Pauser: freeze an app without stopping it (pause_after, sact pause).
//   - LogReader: an app's last output (sact logs, the dashboard).
//   - LogFollower: follow an app's output as it comes (sact logs -f).
//   - Pider: the host pid of an app's first process, which handoff lets fetch the
//     listening sockets, and from which a restarted sact takes them back.
//   - HostDirs: the host directories containers can write, so that a unix upstream
//     beneath one is opened without following links.
//   - MemoryMeter (memory.go): an app's memory use now, for the memory budget.
//   - HealthWaiter (health.go): wait for the app's own health check (ready: healthcheck).
//   - LabelSource, on a Kind: apps declared by container labels (sact.enable=true).
//   - Checker, on a Kind: ask the engine what would fail at an app's first start (sact
//     check --deep).
//   - Runner: a runtime with work of its own (the docker runtime's event stream), which
//     the daemon runs until shutdown.
//
// # Lifecycle
//
// The lifecycle a Runtime sees for one app:
//
//  1. Running: once, when sact starts, to adopt an app that already runs (sact restarted).
//  2. Start: on the first connection of a cold period. Start returns as soon as the app's
//     process runs; it does not wait for readiness, the caller polls Instance.Upstream.
//  3. Instance.Exited fires once if the app stops for any reason sact did not ask for
//     (crash, OOM kill, `docker stop`, container removed) and also after Stop.
//  4. Stop: on idle, with a grace period between SIGTERM and SIGKILL.
//
// Start and Stop for one app are never called concurrently by the activator; calls for
// different apps are.
package backend

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"
)

// Runtime runs apps. Implementations must be safe for concurrent use by different apps.
type Runtime interface {
	// Start makes the app run and returns how to reach it. A container is created on first
	// use (or when Spec.Hash changed since it was created) and only started afterwards.
	Start(ctx context.Context, spec Spec) (*Instance, error)
	// Stop stops the app: SIGTERM, then SIGKILL after grace. Stopping an app that does not
	// run is not an error.
	Stop(ctx context.Context, spec Spec, grace time.Duration) error
	// Running returns the app's instance if it already runs (for example because sact was
	// restarted while it served), or nil if it does not.
	Running(ctx context.Context, spec Spec) (*Instance, error)
}

// Pauser is implemented by runtimes that can freeze an app without stopping it.
type Pauser interface {
	Pause(ctx context.Context, spec Spec) error
	Unpause(ctx context.Context, spec Spec) error
}

// Runner is implemented by runtimes that have work of their own (the docker runtime's
// event stream): Run works until ctx ends.
type Runner interface {
	Run(ctx context.Context) error
}

// LogReader is implemented by runtimes that can show an app's output.
type LogReader interface {
	// Logs returns the app's last tail lines of output.
	Logs(ctx context.Context, spec Spec, tail int) (string, error)
}

// LogFollower is implemented by runtimes that can follow an app's output as it comes
// (docker logs -f), until ctx ends or the instance stops; with since set, every line
// since then instead of the last tail (sact logs -f).
type LogFollower interface {
	FollowLogs(ctx context.Context, spec Spec, tail int, since time.Time, w io.Writer) error
}

// Pider is implemented by runtimes that can tell the host pid of an app's first process,
// which is the only process let in to fetch its sockets in handoff mode.
type Pider interface {
	Pid(ctx context.Context, spec Spec) (int, error)
}

// Spec is what a runtime needs to know to run one app. Fields that do not apply to a runtime
// are ignored by it (the process runtime ignores Image, the docker runtime ignores Command).
type Spec struct {
	// Name is the app's name from the config; containers are named "sact-"+Name.
	Name string

	// Image to create the container from, or Container: the name of an existing container
	// made elsewhere (docker compose create) that sact only starts and stops.
	Image     string
	Container string
	// Cmd and Entrypoint override the image's; nil keeps the image's.
	Cmd        []string
	Entrypoint []string
	Env        map[string]string
	// Volumes in docker's -v syntax: "/host:/container[:ro]" or "name:/container".
	Volumes []string
	User    string
	// Network is the docker network to attach to; "" means the engine's default bridge.
	Network string
	// Memory is the memory limit in bytes; 0 means none.
	Memory int64
	// CPUs is the CPU quota in CPUs (1.5 = one and a half); 0 means none.
	CPUs   float64
	Labels map[string]string

	// Command is the plain process to run (process runtime), Dir its working directory.
	Command []string
	Dir     string

	// Where the started app accepts connections: either Upstream (a unix socket path or a
	// host:port sact can reach), or Port on the container's own address, which only the
	// runtime knows once the app runs.
	Upstream Addr
	Port     int

	// Handoff, if set, runs the app under `sact shim`, which fetches the app's listening
	// sockets from sact and execs the app's own command with LISTEN_FDS set.
	Handoff *Handoff

	// Extra holds a kind's settings that no field above has room for (a swarm service's
	// placement, say): set by its Kind.Decode, read by its runtime, part of Hash (as
	// JSON). Nil for the kinds that need nothing more.
	Extra any

	// Hash identifies the settings above; a container made from a different hash is
	// replaced at its next start (never while it serves).
	Hash string
}

// BindSources returns the host directories bound into the app writable, which it may
// write (a container running as root writes there as host root): the sources of its
// "/host:/container" volumes but the ":ro" ones, and its handoff directory. Named volumes
// have no host path here; a HostDirs runtime knows it, and package upstream counts the
// engine's data root as writable anyway.
func (s Spec) BindSources() []string {
	var dirs []string
	for _, v := range s.Volumes {
		parts := strings.Split(v, ":")
		if !strings.HasPrefix(parts[0], "/") {
			continue
		}
		if len(parts) > 2 && slices.Contains(strings.Split(parts[2], ","), "ro") {
			continue // read-only: another app that binds it writable names it
		}
		dirs = append(dirs, parts[0])
	}
	if s.Handoff != nil && s.Handoff.Dir != "" {
		dirs = append(dirs, s.Handoff.Dir)
	}
	return dirs
}

// HostDirs is implemented by runtimes that know which host directories containers can
// write: every container's, not only the apps' (each is hostile, and one may share a
// directory with an app). A unix upstream beneath one of them is opened without
// following links (package upstream).
type HostDirs interface {
	// WritableDirs returns the host sources of the read-write mounts, bind or volume, of
	// every container the runtime has seen. It is called on every dial: it must be
	// quick, and safe for concurrent use.
	WritableDirs() []string
}

// Handoff is where a runtime finds what the shim needs, as host paths.
type Handoff struct {
	// Binary is a statically linked sact, run as `sact shim -- CMD...`.
	Binary string
	// Dir is the app's private directory holding the handoff socket, handoff.sock.
	Dir string
}

// ShimSocket is the handoff socket's name in Handoff.Dir.
const ShimSocket = "handoff.sock"

// Addr is a stream socket address as net.Dial takes it.
type Addr struct {
	Network string // "unix" or "tcp"
	Address string // a path, or host:port
}

func (a Addr) String() string {
	if a.Network == "" {
		return ""
	}
	return a.Network + ":" + a.Address
}

// IsZero reports whether a is unset.
func (a Addr) IsZero() bool { return a.Network == "" }

// Instance is one running incarnation of an app.
type Instance struct {
	// ID is the container ID or process ID, for logs.
	ID string
	// Upstream is where to connect to the running app.
	Upstream Addr
	// Node is where the instance runs when that is not this host (the address of the
	// swarm node of a service's task), for sact status; "" for this host.
	Node string
	// Pid is the instance's first process (a container's init) when the runtime knows
	// it without asking again, on this host; 0 otherwise. The bypass looks up the
	// instance's listener in its network namespace.
	Pid int
	// Exited receives exactly one Exit when this incarnation stops running, for whatever
	// reason, and is then closed.
	Exited <-chan Exit
}

// Exit tells why an instance stopped running.
type Exit struct {
	// Code is the process's exit code, or -1 if unknown (the container was removed).
	Code int
	// Reason is a short word: "exited", "oom-killed", "removed", "killed".
	Reason string
	// Killed says the app was signalled from outside (docker stop, kill or restart; a
	// SIGTERM, SIGINT or SIGHUP of a process): it did not fail by itself, whenever it
	// happened. sact's own stops may set it too; the activator knows those as its own.
	Killed bool
	// Logs holds the app's last log lines, for the log line that reports a failed start.
	Logs string
}

func (e Exit) String() string {
	s := fmt.Sprintf("%s (exit code %d)", e.Reason, e.Code)
	return s
}
