// Package relay serves the listeners of relayed apps: it accepts a connection, gets a
// lease from the app's activator (which starts the app if it must, while the client
// waits), dials the upstream, and relays the bytes (package proxy) until either side
// closes or the app stops. A connection whose instance turns out to have died under it
// before a byte was read goes to a fresh start instead of being dropped.
package relay

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/listen"
	"github.com/sact-project/sact/internal/proxy"
	"github.com/sact-project/sact/internal/upstream"
)

// Server runs the accept loops of relayed apps and their connections.
type Server struct {
	log       *slog.Logger
	failed    func(app, reason string, n int)
	relayed   func(app string, s proxy.Stats)
	mode      proxy.Mode
	connsCtx  context.Context
	accepting sync.WaitGroup
	conns     sync.WaitGroup
}

// Options are what a Server reports to; the zero value reports nothing.
type Options struct {
	Logger *slog.Logger
	// Failed counts the connections not served, by reason (activator.FailureReason's,
	// client_gone, upstream_unsafe, upstream_unreachable).
	Failed func(app, reason string, n int)
	// Relayed counts a relayed connection (metrics).
	Relayed func(app string, s proxy.Stats)
	// Mode is how relays move bytes; empty means what SACT_RELAY says.
	Mode proxy.Mode
}

// NewServer returns a Server whose relays end when conns does (shutdown gives up
// draining).
func NewServer(conns context.Context, opts Options) *Server {
	s := &Server{log: opts.Logger, failed: opts.Failed, relayed: opts.Relayed, mode: opts.Mode, connsCtx: conns}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.failed == nil {
		s.failed = func(string, string, int) {}
	}
	return s
}

// Accept starts ln's accept loop for app, which ends when ln is closed. addr is how the
// log names the listener.
func (s *Server) Accept(ln net.Listener, app *activator.App, addr string) {
	if err := listen.SetNonblock(ln); err != nil {
		s.log.Warn("cannot put a listener in non-blocking mode; accepting on it anyway", "app", app.Name(), "listen", addr, "err", err)
	}
	s.accepting.Go(func() { s.accept(ln, app, addr) })
}

// WaitAccepting waits for the accept loops to end (their listeners closed).
func (s *Server) WaitAccepting() { s.accepting.Wait() }

// WaitConns waits for the connections being served to end.
func (s *Server) WaitConns() { s.conns.Wait() }

// accept runs one listener's accept loop until the listener is closed.
func (s *Server) accept(ln net.Listener, app *activator.App, addr string) {
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// Out of fds or a similar passing condition: back off like net/http does,
			// rather than spin or give up on the listener.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			s.log.Error("accept failed", "app", app.Name(), "listen", addr, "err", err, "retry_in", delay)
			time.Sleep(delay)
			continue
		}
		delay = 0
		s.conns.Add(1)
		go s.handle(c, app, addr)
	}
}

// dialTimeout bounds a dial of a running app's upstream.
const dialTimeout = 5 * time.Second

// hangupPoll is how often a connection that waits for its app to start is checked for a
// client that hung up, which then gives its max_waiting slot back.
const hangupPoll = 100 * time.Millisecond

// acquire gets a lease for client's connection, and gives up with proxy.ErrClientGone if
// the client hangs up while the app starts. (A running app's lease comes before the
// first poll: the watch costs a context and a timer.)
func (s *Server) acquire(client net.Conn, app *activator.App, w activator.Wake) (*activator.Lease, error) {
	if app.State() == activator.Running {
		// The warm path: the lease comes at once, and there is no wait to give up. (An
		// app that stops just now makes this one connection wait unwatched, bounded by
		// the start like any.)
		return app.Acquire(s.connsCtx, w)
	}
	ctx, stop := proxy.WatchHangup(s.connsCtx, client, hangupPoll)
	defer stop()
	l, err := app.Acquire(ctx, w)
	if err != nil && errors.Is(context.Cause(ctx), proxy.ErrClientGone) {
		return nil, proxy.ErrClientGone
	}
	return l, err
}

// handle serves one client connection: get the app running, dial it, relay. The
// connection is over, and s.conns told, when its relay ends, which for a connection the
// kernel relay took is after handle returned.
func (s *Server) handle(client net.Conn, app *activator.App, addr string) {
	relaying := false
	defer func() {
		if !relaying {
			client.Close()
			s.conns.Done()
		}
	}()
	remote := client.RemoteAddr().String()
	if remote == "" || remote == "@" {
		remote = "unix"
	}
	// A connection whose instance died under it (a crash, docker kill) before the engine
	// said so goes to a fresh start: nothing of the client's has been read yet.
	lease, up, err := activator.Connect(s.connsCtx, func() (*activator.Lease, error) {
		return s.acquire(client, app, activator.Wake{Remote: remote, Listen: addr})
	}, dialTimeout, func(err error) {
		s.log.Info("upstream gone while connecting; starting the app again", "app", app.Name(), "remote", remote, "reason", err)
	})
	var derr *activator.DialError
	switch {
	case errors.Is(err, proxy.ErrClientGone):
		s.log.Info("client gone while waiting for start", "app", app.Name(), "listen", addr, "remote", remote, "reason", "client_gone")
		s.failed(app.Name(), "client_gone", 1)
		return
	case errors.As(err, &derr) && errors.As(derr, new(*upstream.UnsafePathError)):
		// A link the app planted: never followed. The activator logs each cause once;
		// every connection counts.
		s.failed(app.Name(), "upstream_unsafe", 1)
		return
	case derr != nil:
		s.log.Warn("connection failed", "app", app.Name(), "upstream", derr.Upstream.String(), "remote", remote, "reason", derr.Err)
		s.failed(app.Name(), "upstream_unreachable", 1)
		return
	case err != nil:
		s.log.Warn("connection refused", "app", app.Name(), "listen", addr, "remote", remote, "reason", err)
		s.failed(app.Name(), activator.FailureReason(err), 1)
		return
	}

	// The relay ends when the app stops (the lease's context) or when shutdown gives up
	// on draining (connsCtx).
	rctx, stop := context.WithCancel(lease.Context())
	unhook := context.AfterFunc(s.connsCtx, stop)
	relaying = true
	proxy.Start(rctx, client, up, proxy.Options{Activity: lease.Touch, Mode: s.mode}, func(st proxy.Stats, err error) {
		unhook()
		stop()
		if err != nil {
			s.log.Debug("relay ended", "app", app.Name(), "remote", remote, "path", st.Path, "err", err)
		}
		if s.relayed != nil {
			s.relayed(app.Name(), st)
		}
		lease.Release()
		client.Close()
		s.conns.Done()
	})
}

// LogMode says how proxied connections will move their bytes (SACT_RELAY), and why
// not in the kernel when it was asked for and cannot be.
func LogMode(log *slog.Logger) {
	mode, err := proxy.EnvMode()
	if err != nil {
		log.Warn("relay mode", "reason", err, "mode", mode)
	}
	if mode == proxy.ModeSplice {
		log.Info("relay", "mode", mode)
		return
	}
	if kerr := proxy.KernelRelay(); kerr != nil {
		log.Warn("relay: the kernel relay is not available; connections are spliced", "mode", mode, "reason", kerr)
		return
	}
	log.Info("relay", "mode", mode, "kernel", "loaded")
}
