package activator

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// Readiness is how the activator tells that a started app can serve (key ready:). The zero
// value is "accepts": the upstream accepts a TCP or unix connection. An app that accepts
// before it can answer (Rails booting behind a listening puma) needs HTTP or Healthcheck,
// or its first clients' requests reach it early.
type Readiness struct {
	// HTTP, if set, is a request the app must answer, through its upstream, with a
	// status in range.
	HTTP *HTTPCheck
	// Healthcheck waits for the runtime's word that the app is healthy (a Docker
	// image's HEALTHCHECK, from the engine's events); the runtime must be a
	// backend.HealthWaiter.
	Healthcheck bool
}

// String names the readiness for logs: "accepts", "healthcheck" or "GET /up 200-399".
func (r Readiness) String() string {
	switch {
	case r.Healthcheck:
		return "healthcheck"
	case r.HTTP != nil:
		return r.HTTP.String()
	}
	return "accepts"
}

// HTTPCheck is one HTTP request that tells an app ready. Redirects are not followed: a
// 3xx is the answer, which the default range counts as ready.
type HTTPCheck struct {
	// Method defaults to GET; Path to "/".
	Method, Path string
	// Host is the Host header: the app's first front-door host, or "localhost".
	Host string
	// StatusMin and StatusMax bound the statuses that mean ready; default 200-399.
	StatusMin, StatusMax int
}

func (c *HTTPCheck) String() string {
	return fmt.Sprintf("%s %s %d-%d", c.method(), c.path(), c.statusMin(), c.statusMax())
}

func (c *HTTPCheck) method() string { return cmpOr(c.Method, http.MethodGet) }
func (c *HTTPCheck) path() string   { return cmpOr(c.Path, "/") }
func (c *HTTPCheck) host() string   { return cmpOr(c.Host, "localhost") }
func (c *HTTPCheck) statusMin() int {
	if c.StatusMin == 0 {
		return 200
	}
	return c.StatusMin
}
func (c *HTTPCheck) statusMax() int {
	if c.StatusMax == 0 {
		return 399
	}
	return c.StatusMax
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Bounds of one HTTP readiness try against an app that may be hostile: it may never
// answer, trickle its header, or send a huge one. The body is never read.
const (
	readyTryTimeout     = 2 * time.Second // connect, request and header
	readyMaxHeaderBytes = 16 << 10
	// readyHTTPPollMax is the longest wait between two HTTP tries: each try costs the
	// booting app a request, while every ms of the wait is added to the first request.
	readyHTTPPollMax = 50 * time.Millisecond
)

// readyPollMax is the longest wait between two accept polls. Each poll is one connect
// (about 20 µs), and at most start_concurrency apps poll at once, while every ms of the
// wait is added to the first request: 20 ms cost a cold start 10 ms on average (issue 13).
const readyPollMax = 2 * time.Millisecond

// WaitReady waits until inst, an incarnation of this app that runs, is ready by the app's
// ready: policy, through the app's own safe dial; an instance that exits meanwhile is an
// error that carries its last log lines: it receives from inst.Exited while it waits, so
// an Exit it took is in its error, and nobody else may receive while it runs.
// Starts use it, and so may anything else that brings up an instance of the app (a new
// version beside the old one) before sending it clients.
func (a *App) WaitReady(ctx context.Context, inst *backend.Instance) error {
	return a.waitReady(ctx, inst)
}

// waitReady is how sact knows that the app, not just its container, is up.
func (a *App) waitReady(ctx context.Context, inst *backend.Instance) error {
	r := a.pol().Ready
	if r.Healthcheck {
		// Also for an app without an upstream (a database only its dependents use).
		if err := a.waitHealthy(ctx, inst); err != nil {
			return err
		}
		// Healthy by its own check, which may look at anything: the clients still need
		// the upstream to accept.
	}
	if inst.Upstream.IsZero() {
		// Handoff (which takes no ready:): the app accepts from sact's own listener,
		// whose backlog holds the clients until it does; or no upstream at all.
		return nil
	}
	if r.HTTP != nil {
		return a.pollReady(ctx, inst, readyHTTPPollMax, a.httpTry(inst.Upstream, r.HTTP))
	}
	return a.pollReady(ctx, inst, readyPollMax, func(ctx context.Context) error {
		// A SYN to an address that is not up yet may be dropped rather than refused:
		// bound each try so one lost packet can't eat the whole start_timeout.
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		c, err := a.dialUpstream(dctx, inst.Upstream)
		if err != nil {
			return fmt.Errorf("waiting for %s to accept: %w", inst.Upstream, err)
		}
		c.Close()
		return nil
	})
}

// pollReady calls try until it succeeds, backing off from 1ms (the engine is the slow
// part, and every ms spent sleeping is added to the first request) to maxDelay. It gives
// up when the instance exits or ctx ends, with try's last error.
func (a *App) pollReady(ctx context.Context, inst *backend.Instance, maxDelay time.Duration, try func(context.Context) error) error {
	delay := time.Millisecond
	var answered error // the last try's error that the deadline did not cut short
	for {
		err := try(ctx)
		if err == nil {
			return nil
		}
		if ctx.Err() != nil && answered != nil {
			// The try the deadline interrupted says only "timeout"; the one before says
			// what the app answered ("got status 302"), which is what the user needs.
			return answered
		}
		answered = err
		t := time.NewTimer(delay)
		select {
		case e, ok := <-inst.Exited:
			t.Stop()
			return exitedErr(e, ok)
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		delay = min(delay*3/2+time.Millisecond, maxDelay)
	}
}

func exitedErr(e backend.Exit, ok bool) error {
	if !ok {
		return errExited
	}
	msg := fmt.Errorf("%w: %s", errExited, e)
	if e.Logs != "" {
		msg = fmt.Errorf("%w; last log lines:\n%s", msg, e.Logs)
	}
	return msg
}

// httpTry returns one try of check against up: a fresh connection through the app's safe
// dial (a unix upstream is never reached through a planted link), one request, the status
// line and header read within a deadline and a size bound, the body left unread. It is
// written by hand rather than with http.Transport, which logs what a hostile app sends
// out of turn to the process's standard logger, once per try.
func (a *App) httpTry(up backend.Addr, check *HTTPCheck) func(context.Context) error {
	request := check.method() + " " + check.path() + " HTTP/1.1\r\nHost: " + check.host() +
		"\r\nUser-Agent: sact-ready\r\nAccept: */*\r\nConnection: close\r\n\r\n"
	fail := func(err error) error { return fmt.Errorf("ready check %s via %s: %w", check, up, err) }
	return func(ctx context.Context) error {
		ctx, cancel := context.WithTimeout(ctx, readyTryTimeout)
		defer cancel()
		c, err := a.dialUpstream(ctx, up)
		if err != nil {
			return fail(err)
		}
		defer c.Close()
		deadline, _ := ctx.Deadline()
		c.SetDeadline(deadline)
		stop := context.AfterFunc(ctx, func() { c.Close() }) // sact shutting down
		defer stop()
		if _, err := io.WriteString(c, request); err != nil {
			return fail(err)
		}
		lr := &io.LimitedReader{R: c, N: readyMaxHeaderBytes}
		resp, err := http.ReadResponse(bufio.NewReaderSize(lr, 4096), nil)
		if err != nil {
			if lr.N <= 0 {
				return fail(fmt.Errorf("the answer's header is over %d KiB", readyMaxHeaderBytes>>10))
			}
			return fail(fmt.Errorf("malformed or no answer: %w", err))
		}
		if resp.StatusCode < check.statusMin() || resp.StatusCode > check.statusMax() {
			return fail(fmt.Errorf("got status %d", resp.StatusCode))
		}
		return nil
	}
}

// waitHealthy waits for the runtime's word that inst is healthy, or for its exit.
func (a *App) waitHealthy(ctx context.Context, inst *backend.Instance) error {
	hw, ok := a.rt.(backend.HealthWaiter)
	if !ok {
		return errors.New("ready: healthcheck needs a runtime with health checks (Docker); this app's has none")
	}
	hctx, cancel := context.WithCancel(ctx)
	res := make(chan error, 1)
	go func() { res <- hw.WaitHealthy(hctx, a.pol().Spec, inst) }()
	select {
	case err := <-res:
		cancel()
		return err
	case e, ok := <-inst.Exited:
		cancel()
		<-res
		return exitedErr(e, ok)
	}
}
