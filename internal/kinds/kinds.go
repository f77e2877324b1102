// Package kinds lists the kinds of app this build of sact runs (see package backend). A
// new kind is its own package and one line in All.
package kinds

import (
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/docker"
	"github.com/sact-project/sact/internal/backend/process"
	"github.com/sact-project/sact/internal/backend/swarm"
)

// All are the kinds, in the order messages list them ("add image: (a docker image),
// container: (...) or command: (...)").
var All = []backend.Kind{
	docker.Image{},
	docker.Container{},
	process.Command{},
	swarm.Image{}, swarm.Service{},
}
