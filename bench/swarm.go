package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strconv"
)

// swarm is a Swarm service's cold start against the same image as a plain container
// (issue 15). It needs a two-node swarm of its own, which scripts/swarm-bench sets up on
// this machine and always tears down: it runs as its own program so that an interrupt
// of it cannot leave the host's engine in swarm mode behind this one's back.
func (b *bench) swarm() error {
	n := 15
	if b.quick {
		n = 5
	}
	var out bytes.Buffer
	cmd := exec.CommandContext(b.ctx, "go", "run", "./scripts/swarm-bench", "-n", strconv.Itoa(n))
	cmd.Stdout, cmd.Stderr = &out, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("scripts/swarm-bench: %w", err)
	}
	fmt.Fprintf(&b.md, "## Cold start: a Swarm service against a plain container\n\n")
	fmt.Fprintf(&b.md, "Through sact, the same image: as a container on this host (`image:`) and as a Swarm service on a worker node (`image:` + `swarm:`, a host-mode port), the worker being a second dockerd in a network namespace of this machine; %d cold starts each, interleaved. A service's scale-up makes a new task and container every time, where the docker kind starts a container it made once.\n\n", n)
	b.md.Write(out.Bytes())
	fmt.Fprintf(&b.md, "\n")
	return nil
}
