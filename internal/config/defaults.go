package config

import (
	"net"
	"runtime"
	"strconv"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// DefaultAdminSocket is where the admin API listens unless admin.socket says otherwise.
const DefaultAdminSocket = "/run/sact/admin.sock"

// numCPU is runtime.NumCPU, replaced in tests so that golden files do not depend on the
// machine.
var numCPU = runtime.NumCPU

// applyDefaults fills in every setting the file left out, with the defaults written in the
// fields' doc comments: keep the two in step. A zero value means "not set" here: each
// setting whose zero is not its default refuses an explicit zero while decoding.
func applyDefaults(cfg *Config) {
	if cfg.Admin.Socket == "" {
		cfg.Admin.Socket = DefaultAdminSocket
	}
	if cfg.Pool.StartConcurrency == 0 {
		cfg.Pool.StartConcurrency = numCPU()
	}
	if cfg.HTTP.MaxHeaderBytes == 0 {
		cfg.HTTP.MaxHeaderBytes = 64 << 10
	}
	if cfg.HTTP.ReadHeaderTimeout == 0 {
		cfg.HTTP.ReadHeaderTimeout = 10 * time.Second
	}
	if cfg.HTTP.IdleTimeout == 0 {
		cfg.HTTP.IdleTimeout = 2 * time.Minute
	}
	for _, a := range cfg.Apps {
		if a.MaxInFlight == 0 {
			a.MaxInFlight = 256
		}
		if !a.quietSet {
			a.Quiet = defaultQuiet()
		}
		if a.Idle == 0 {
			a.Idle = 15 * time.Minute
		}
		if a.StartTimeout == 0 {
			a.StartTimeout = 60 * time.Second
		}
		if a.StopTimeout == 0 {
			a.StopTimeout = 10 * time.Second
		}
		if a.MaxWaiting == 0 {
			a.MaxWaiting = 1024
		}
		if a.OnExit == "" {
			a.OnExit = "keep"
		}
		// A plain process shares the host's network: its port is on the loopback address.
		if a.kind != nil && a.kind.Info().PortOnHost && a.Port != 0 && a.Upstream.IsZero() {
			a.Upstream = backend.Addr{Network: "tcp", Address: net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))}
		}
	}
}
