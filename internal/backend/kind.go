package backend

import (
	"context"
	"log/slog"
)

// Kind is one way of running apps, chosen by the settings an app has: image: (a container
// sact creates), container: (one made elsewhere), command: (a plain process). A kind reads
// its own settings from the config (Decode), builds the runtime its apps run on
// (NewRuntime), and says what it cannot do (Info), so that config, the daemon and the CLI
// never name a kind.
//
// A Kind is stateless configuration: it is shared by every parse of the config, and its
// methods are safe for concurrent use.
type Kind interface {
	// Info describes the kind's settings and names; it returns the same value every time.
	Info() KindInfo
	// Decode reads the app's settings of this kind (Info's Select and Own keys that it
	// sets) into spec, reporting each problem through s at the setting's file:line.
	Decode(s Settings, spec *Spec)
	// NewRuntime builds the runtime the kind's apps run on. It is called once per
	// KindInfo.Runtime, when the first app that needs it is loaded, so a config of plain
	// processes never touches Docker.
	NewRuntime(ctx context.Context, deps Deps) (Runtime, error)
}

// KindInfo is what the config and the daemon know of a kind.
type KindInfo struct {
	// Name is the kind's name in messages: "image".
	Name string
	// Describe is what sact status and the dashboard call the kind's apps: "container".
	Describe string
	// Help says what the kind runs, for "nothing to run; add image: (a docker image)...":
	// "a docker image".
	Help string
	// Runs names one app of the kind in a sentence, for "keep one: an app runs an image,
	// ...": "an image".
	Runs string

	// Select are the settings that choose the kind: an app is of this kind when it sets
	// every one of them. Of the kinds an app matches, one whose Select holds another's
	// wins (image: with swarm: is a swarm service, not an image); two that remain are a
	// file:line error. List the key that tells the kind apart first: it names the kind
	// in that error.
	Select []string
	// Own are the further settings the kind reads (cmd, volumes, ...). A setting that
	// another kind reads and this one does not is an error on an app of this kind, and is
	// not inherited from defaults:.
	Own []string
	// Skip are sact's own app settings that make no sense for the kind (env for a
	// container made elsewhere): an error when set, not inherited from defaults:.
	Skip []string
	// Refuse says why a setting that the kind does not read (Skip, or another kind's)
	// does not apply, and what to do instead.
	Refuse func(key string) string
	// Cannot are sact's own settings that the kind cannot honour, with why and what to
	// do instead: handoff (the shim must be set when the container is made), pause_after
	// (a process cannot be frozen), and "ready: healthcheck" (a setting with one of its
	// values: a process has no HEALTHCHECK). Unlike Skip they are an error even when
	// inherited from defaults:, because a default that cannot work must be seen.
	Cannot map[string]string
	// Runtime names the runtime the kind's apps run on: kinds with the same Runtime share
	// one (image and container share "docker").
	Runtime string
	// PortOnHost says the kind's apps share the host's network: their port: is on
	// 127.0.0.1, and the config makes it the upstream.
	PortOnHost bool
}

// Settings are one app's settings as written in the config, for Kind.Decode. Each getter
// decodes the setting at key, reports a problem at its file:line in config's style
// ("sact.yaml:12: apps.web.memory: ...") and then returns the zero value, which it also
// returns when the app does not set key. Problems of settings inherited from defaults:
// are reported once, under defaults.
type Settings interface {
	// Has reports whether the app sets key, itself or through defaults:.
	Has(key string) bool
	// String decodes a non-empty string; check (may be nil) vets it.
	String(key string, check func(string) error) string
	// Argv decodes a command line: a list of strings, or one string split on whitespace.
	Argv(key string) []string
	// List decodes a list of distinct strings, each vetted by check (may be nil); a bad
	// item is "" so that indexes match the file's.
	List(key string, check func(string) error) []string
	// Map decodes a mapping of strings, or a list of KEY=VALUE; check vets each key.
	Map(key string, check func(string) error) map[string]string
	// Size decodes a size in bytes: 512m, 1g, 268435456.
	Size(key string) int64
	// Number decodes a positive decimal number.
	Number(key string) float64
	// Int decodes a whole number no smaller than least.
	Int(key string, least int) int
	// Bool decodes true or false.
	Bool(key string) bool
	// Dir decodes the absolute path of a directory that exists on the host (the config
	// looks, through what it was given to look with).
	Dir(key string) string
	// Sub returns the settings of the mapping at key, whose keys must be among known
	// (others are reported as unknown, with a suggestion), for a kind's nested
	// settings like swarm: {constraints: [...]}.
	Sub(key string, known []string) Settings
	// Errorf reports a problem with the setting at key (the app itself if key is not
	// set), as "what is wrong; how to fix it".
	Errorf(key string, format string, args ...any)
}

// Deps are what runtimes share, given to Kind.NewRuntime.
type Deps struct {
	// Logger is sact's log; never nil.
	Logger *slog.Logger
}

// Checker is implemented by kinds that can check an app against the real thing before
// its first start (sact check --deep): that its image exists, say.
type Checker interface {
	// Check returns what would fail at the app's first start (problems) and what may
	// (notes), each "what is wrong; how to fix it"; err if it cannot ask.
	Check(ctx context.Context, spec Spec) (problems, notes []string, err error)
}

// LabelSource is implemented by kinds whose apps may be declared outside sact.yaml, by
// labels (docker compose users set sact.enable=true and sact.* settings on a container).
type LabelSource interface {
	// Labelled returns the apps declared by labels that match selector ("sact.enable=true").
	Labelled(ctx context.Context, selector string) ([]LabelledApp, error)
}

// LabelledApp is an app declared by labels.
type LabelledApp struct {
	// Key and Value are the kind's setting that names what runs, Key: Value in the config
	// ("container: shop"). Value, without a leading slash, is the app's name unless the
	// sact.name label gives one; messages say "Key Value" ("container shop").
	Key, Value string
	// Labels are all its labels; its sact.KEY labels are its settings.
	Labels map[string]string
}
