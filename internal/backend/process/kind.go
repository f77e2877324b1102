package process

import (
	"context"

	"github.com/sact-project/sact/internal/backend"
)

// Command is the kind of app that is a plain process on the host (command:).
type Command struct{}

func (Command) Info() backend.KindInfo {
	return backend.KindInfo{
		Name: "command", Describe: "process", Help: "a plain process", Runs: "a command",
		// A plain process runs as root unless told otherwise: user: is how to stop that.
		Select: []string{"command"}, Own: []string{"dir", "user"}, Runtime: "process",
		Refuse: func(string) string {
			return "applies only to containers, and this app is a plain process (command:); remove it"
		},
		Cannot: map[string]string{
			"pause_after":        "plain processes cannot be paused; remove pause_after",
			"ready: healthcheck": "a plain process (command:) has no HEALTHCHECK; use ready: {http: /health}, or remove ready",
		},
		PortOnHost: true,
	}
}

func (Command) Decode(s backend.Settings, spec *backend.Spec) {
	spec.Command = s.Argv("command")
	spec.Dir = s.Dir("dir")
	spec.User = s.String("user", nil)
}

func (Command) NewRuntime(_ context.Context, deps backend.Deps) (backend.Runtime, error) {
	return New(Options{Logger: deps.Logger}), nil
}
