package activator

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/upstream"
)

// The one connection path of a client that sact relays (the relay, the front door):
// a lease, a dial of its upstream, and the retry when the instance died under it.

// diedWithin is how long after a failed dial or request the engine's word that the
// instance exited may still be on its way.
const diedWithin = time.Second

// connectTries bounds the fresh starts one client may cause.
const connectTries = 3

// DialError is a failed dial of a lease's upstream: the app runs (or ran) but did not
// accept. Errors.As finds an *upstream.UnsafePathError in it for an upstream refused as
// unsafe.
type DialError struct {
	Upstream backend.Addr
	Err      error
}

func (e *DialError) Error() string { return fmt.Sprintf("dialing %s: %v", e.Upstream, e.Err) }
func (e *DialError) Unwrap() error { return e.Err }

// Died reports whether the lease's instance has ended, or ends within a second: after a
// failed dial or request, the engine's word that the instance exited may be on its way,
// and a client that reached a dead instance can then go to a fresh start. A client that
// is gone (ctx ended) is not worth one.
func (l *Lease) Died(ctx context.Context) bool {
	if l.ctx.Err() != nil {
		return true
	}
	return ctx.Err() == nil && l.EndedWithin(diedWithin)
}

// Connect gets a lease with acquire (Acquire, or a caller's wrapper of it) and dials its
// upstream, bounded by dialTimeout and the instance's life. When the dial fails and the
// instance turns out to have died under it, the client goes to a fresh start, at most
// three times; retried, if set, is told each time. It returns acquire's error as it
// came, or a *DialError. On success the caller owns the lease and the connection.
func Connect(ctx context.Context, acquire func() (*Lease, error), dialTimeout time.Duration, retried func(error)) (*Lease, net.Conn, error) {
	for attempt := 1; ; attempt++ {
		lease, err := acquire()
		if err != nil {
			return nil, nil, err
		}
		dctx, cancel := context.WithTimeout(lease.Context(), dialTimeout)
		c, err := lease.Dial(dctx)
		cancel()
		if err == nil {
			return lease, c, nil
		}
		lease.Release()
		derr := &DialError{Upstream: lease.Upstream, Err: err}
		// A link the app planted is never followed, however often it is tried.
		unsafe := errors.As(err, new(*upstream.UnsafePathError))
		if unsafe || attempt >= connectTries || !lease.Died(ctx) {
			return nil, nil, derr
		}
		if retried != nil {
			retried(err)
		}
	}
}
