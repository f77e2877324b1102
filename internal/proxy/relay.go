package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// ErrIdleTimeout is returned by Relay when Options.IdleTimeout ended it.
var ErrIdleTimeout = errors.New("relay idle for longer than its idle timeout")

// Options tunes a Relay. The zero value is ready to use.
type Options struct {
	// Activity, if set, is called each time a chunk of bytes has been written to either
	// side: at most every 32 KiB on the copying path, every pipe's worth (64 KiB) or less
	// when spliced. The activator uses it as the app's idle clock.
	//
	// It runs on the hot path, from both copying goroutines at once and sometimes while
	// the relay holds a socket's poller lock: it must be cheap (an atomic store), safe for
	// concurrent use, and must not block. Nil means nothing is called.
	Activity func()

	// IdleTimeout, if positive, ends the relay with ErrIdleTimeout when no byte has moved
	// in either direction for that long (a direction blocked writing to a peer that does
	// not read counts as moving nothing). One direction staying silent is not idleness:
	// a server streaming to a client that never speaks is busy. This is HAProxy's
	// "timeout tunnel", not nginx's per-read proxy_timeout.
	//
	// Zero, the default, means no limit, so a websocket that pings once an hour lives as
	// long as both peers do. A relay cannot be pinned forever without it: a peer that
	// dies closes its unix socket, TCP keepalive (on by default on Go's dialed and
	// accepted TCP conns) ends a connection to a vanished host, and an app that stops
	// for any reason, including being idle, cancels the relay's context. See the package
	// documentation.
	IdleTimeout time.Duration

	// Mode chooses how bytes move: ModeSplice, ModeKernel or ModeAuto. Empty means what
	// SACT_RELAY says, DefaultMode if it is unset.
	Mode Mode
}

// Stats counts the bytes a Relay wrote to each side.
type Stats struct {
	ClientToUpstream int64
	UpstreamToClient int64

	// Path is how the bytes moved: PathKernel (the sockmap relay) or PathSplice
	// (splice(2), or copying for sockets that cannot splice).
	Path string
}

// Relay copies bytes both ways between client and upstream until both directions are
// done, then closes both, and returns the bytes moved each way.
//
// When one side's input ends (EOF), Relay passes the EOF on by half-closing the other
// side (CloseWrite, which *net.TCPConn, *net.UnixConn and *tls.Conn have) and keeps
// copying the other direction until it ends too. A side that cannot half-close cannot be
// told the input ended without being closed, so then the relay ends, as
// httputil.ReverseProxy does with upgraded connections.
//
// Relay ends early, closing both sides, on the first error in either direction, when ctx
// is done and when IdleTimeout passes. It returns that first error: the error of a read,
// write or splice (such as a peer's reset), context.Cause(ctx), or ErrIdleTimeout. EOF is
// not an error, nor are the errors Relay causes itself by closing the sides.
//
// Between two TCP or unix stream sockets bytes move in the kernel, through splice(2); see
// the package documentation.
func Relay(ctx context.Context, client, upstream net.Conn, opts Options) (Stats, error) {
	if e, k := kernelTake(ctx, client, upstream, opts); k != nil {
		s, err := e.run(ctx, k, opts)
		s.Path = PathKernel
		return s, err
	}
	s, err := spliceRelay(ctx, client, upstream, opts)
	s.Path = PathSplice
	return s, err
}

// Start is Relay for a caller that need not wait for the relay's end: done is called
// once, with what Relay would have returned, when it ends. A connection the kernel relay
// takes is watched from a goroutine of its own and Start returns at once, so that the
// caller's goroutine, whose stack grew deep while it accepted and dialed, can end: an idle
// kernel-relayed connection then holds one small stack in sact. A spliced one has its
// copiers running, so Start relays it in the caller's goroutine and calls done before it
// returns.
func Start(ctx context.Context, client, upstream net.Conn, opts Options, done func(Stats, error)) {
	if e, k := kernelTake(ctx, client, upstream, opts); k != nil {
		go func() {
			s, err := e.run(ctx, k, opts)
			s.Path = PathKernel
			done(s, err)
		}()
		return
	}
	s, err := spliceRelay(ctx, client, upstream, opts)
	s.Path = PathSplice
	done(s, err)
}

// kernelTake hands the connection to the kernel relay if opts's mode asks for it and the
// relay takes it; nil means nothing was done, and the caller splices.
func kernelTake(ctx context.Context, client, upstream net.Conn, opts Options) (*engine, *kconn) {
	mode := opts.Mode
	if mode == "" {
		mode = envMode()
	}
	if mode == ModeSplice || ctx.Err() != nil {
		return nil, nil
	}
	e, err := kernelEngine()
	if err != nil {
		return nil, nil
	}
	k := e.take(client, upstream, opts)
	if k == nil {
		return nil, nil
	}
	return e, k
}

func spliceRelay(ctx context.Context, client, upstream net.Conn, opts Options) (Stats, error) {
	r := &relay{client: client, upstream: upstream, activity: opts.Activity}
	if ctx.Err() != nil {
		r.end(context.Cause(ctx))
		return Stats{}, r.err
	}
	defer context.AfterFunc(ctx, func() { r.end(context.Cause(ctx)) })()
	if opts.IdleTimeout > 0 {
		r.idle = opts.IdleTimeout
		r.start = time.Now()
		r.mu.Lock()
		r.timer = time.AfterFunc(r.idle, r.checkIdle)
		r.mu.Unlock()
	}

	// One copier per direction; this goroutine is the second.
	c2u := make(chan int64, 1)
	go func() { c2u <- r.pump(upstream, client) }()
	var s Stats
	s.UpstreamToClient = r.pump(client, upstream)
	s.ClientToUpstream = <-c2u

	r.end(nil)
	return s, r.err
}

// relay is the state two copiers share.
type relay struct {
	client, upstream net.Conn
	activity         func()

	// For IdleTimeout: when the relay started, and when a byte last moved, as time since
	// start (monotonic, one atomic store per chunk).
	idle  time.Duration
	start time.Time
	last  atomic.Int64

	mu    sync.Mutex
	ended bool  // both sides are closed (or being closed); guarded by mu
	err   error // why the relay ended; read after both copiers returned
	timer *time.Timer
}

// end records err as the reason the relay ends, unless it is ending already, and closes
// both sides so that both copiers return. Whatever errors the copiers see after that are
// consequences of the close, so they are dropped.
func (r *relay) end(err error) {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return
	}
	r.ended = true
	r.err = err
	if r.timer != nil {
		r.timer.Stop()
	}
	r.mu.Unlock()
	r.client.Close()
	r.upstream.Close()
}

// moved records that n > 0 bytes were written to one side.
func (r *relay) moved() {
	if r.idle > 0 {
		r.last.Store(int64(time.Since(r.start)))
	}
	if r.activity != nil {
		r.activity()
	}
}

// checkIdle runs from the idle timer: it ends the relay if nothing moved for IdleTimeout,
// or re-arms the timer for the earliest moment that could be the case.
func (r *relay) checkIdle() {
	r.mu.Lock()
	if r.ended {
		r.mu.Unlock()
		return
	}
	quiet := time.Since(r.start) - time.Duration(r.last.Load())
	if quiet < r.idle {
		r.timer.Reset(r.idle - quiet)
		r.mu.Unlock()
		return
	}
	r.mu.Unlock()
	r.end(ErrIdleTimeout)
}

// pump copies src to dst until src's EOF, which it passes on to dst, or until an error,
// which ends the relay. It returns the bytes written to dst.
func (r *relay) pump(dst, src net.Conn) int64 {
	var n int64
	var err error
	if d, s, ok := rawStreams(dst, src); ok {
		var fallback bool
		n, fallback, err = r.splice(d, s)
		if fallback {
			var m int64
			m, err = r.copy(dst, src)
			n += m
		}
	} else {
		n, err = r.copy(dst, src)
	}
	if err != nil {
		r.end(err)
		return n
	}
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		// An error here means dst is already closed or reset; the other direction sees
		// the same and reports it.
		cw.CloseWrite()
		return n
	}
	r.end(nil)
	return n
}

// copyBufSize is the size of the copying path's buffers, io.Copy's.
const copyBufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, copyBufSize); return &b }}

// copy moves bytes from src to dst through a pooled buffer until src's EOF (a nil error)
// or an error, and returns the bytes written to dst. Unlike io.Copy it never hands the
// work to dst's ReadFrom or src's WriteTo, which would move bytes without telling Activity.
func (r *relay) copy(dst io.Writer, src io.Reader) (int64, error) {
	bp := bufPool.Get().(*[]byte)
	defer bufPool.Put(bp)
	buf := *bp
	var n int64
	for {
		nr, rerr := src.Read(buf)
		if nr > 0 {
			nw, werr := dst.Write(buf[:nr])
			if nw > 0 {
				n += int64(nw)
				r.moved()
			}
			if werr != nil {
				return n, werr
			}
			if nw != nr {
				return n, io.ErrShortWrite
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, rerr
		}
	}
}
