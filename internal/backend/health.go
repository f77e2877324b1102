package backend

import (
	"context"
	"errors"
)

// HealthWaiter is implemented by runtimes that know an app's own health check: a Docker
// image's HEALTHCHECK, which the engine runs and reports in its event stream. It serves
// `ready: healthcheck`.
type HealthWaiter interface {
	// WaitHealthy returns once the engine reports inst healthy, with an error wrapping
	// ErrNoHealthcheck if inst has no health check at all, or ctx's error (wrapped with
	// the last status seen) when ctx ends first. It waits for the engine's word, it
	// does not poll.
	WaitHealthy(ctx context.Context, spec Spec, inst *Instance) error
}

// ErrNoHealthcheck: the app's image (or container) defines no HEALTHCHECK.
var ErrNoHealthcheck = errors.New("the container has no HEALTHCHECK")
