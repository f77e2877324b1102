package proxy

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestKernelIdleConnsCostNothing: idle kernel-relayed connections must cost sact no
// looks at their sockets and no Activity calls, only the engine's scan of the counters
// once every activityEvery for all of them (a ticker per connection cost 19% of a CPU for
// 9,488 of them); and that scan must still tell Activity of a byte within about
// activityEvery, for its connection alone.
func TestKernelIdleConnsCostNothing(t *testing.T) {
	if err := KernelRelay(); err != nil {
		t.Skipf("no kernel relay here: %v", err)
	}
	const n = 500
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	hs := make([]*harness, n)
	for i := range hs {
		hs[i] = startRelay(t, ctx, topology{"tcp", "tcp"}, Options{Mode: ModeKernel})
	}
	// Each relay looks at its sockets once as it starts.
	time.Sleep(200 * time.Millisecond)
	activity := func() (sum int64) {
		for _, h := range hs {
			sum += h.activity.Load()
		}
		return sum
	}
	steps, scans, acts := kernelSteps.Load(), kernelScans.Load(), activity()
	const hold = 2500 * time.Millisecond
	time.Sleep(hold)
	every := time.Duration(activityEvery.Load())
	if d := kernelSteps.Load() - steps; d > 0 {
		t.Errorf("%d looks at the sockets of %d idle connections in %v, want none", d, n, hold)
	}
	if d, most := kernelScans.Load()-scans, int64(hold/every)+1; d > most {
		t.Errorf("%d scans of the counters in %v, want at most %d (one every %v)", d, hold, most, every)
	}
	if d := activity() - acts; d != 0 {
		t.Errorf("Activity called %d times for %d idle connections", d, n)
	}

	// A byte on one of them.
	h := hs[n/2]
	before, others := h.activity.Load(), activity()-h.activity.Load()
	start := time.Now()
	write(t, h.client, "x")
	readN(t, h.server, 1)
	waitFor(t, func() bool { return h.activity.Load() > before })
	if took := time.Since(start); took > 2*every+time.Second/2 {
		t.Errorf("Activity called %v after a byte moved, want within about %v", took, every)
	}
	if d := activity() - h.activity.Load() - others; d != 0 {
		t.Errorf("Activity called %d times for other connections, which moved nothing", d)
	}

	cancel()
	for _, h := range hs {
		if r := h.wait(t); !errors.Is(r.err, context.Canceled) {
			t.Errorf("Relay: %v, want context.Canceled", r.err)
		}
	}
}

// TestRelayIdleTimeout: a relay ends with ErrIdleTimeout once nothing has moved for
// IdleTimeout, and not while bytes move in either direction, however little at a time.
func TestRelayIdleTimeout(t *testing.T) {
	const idle = 300 * time.Millisecond
	forModes(t, func(t *testing.T) {
		t.Run("silent", func(t *testing.T) {
			start := time.Now()
			h := startRelay(t, t.Context(), topology{"tcp", "tcp"}, Options{IdleTimeout: idle})
			r := h.wait(t)
			if !errors.Is(r.err, ErrIdleTimeout) {
				t.Fatalf("Relay: %v, want ErrIdleTimeout", r.err)
			}
			if took := time.Since(start); took < idle || took > idle+time.Second {
				t.Errorf("a silent relay ended after %v, want about %v", took, idle)
			}
		})
		t.Run("trickle", func(t *testing.T) {
			h := startRelay(t, t.Context(), topology{"tcp", "tcp"}, Options{IdleTimeout: idle})
			for i := range 12 { // 1.2s, 4 times the timeout, one byte a turn
				time.Sleep(idle / 3)
				from, to := h.client, h.server
				if i%2 == 1 {
					from, to = h.server, h.client
				}
				write(t, from, "x")
				readN(t, to, 1)
			}
			select {
			case r := <-h.done:
				t.Fatalf("a relay moving a byte every %v ended: %v", idle/3, r.err)
			default:
			}
			if r := h.wait(t); !errors.Is(r.err, ErrIdleTimeout) {
				t.Errorf("Relay: %v, want ErrIdleTimeout once the bytes stop", r.err)
			}
		})
	})
}

// TestKernelHalfClosedIdleCostsNothing: a kernel-relayed connection whose client has
// half-closed with bytes still queued for a server slow to read them, which the relay
// passed on once they had left (polling every drainEvery until then), must not go on
// polling while the other direction idles.
func TestKernelHalfClosedIdleCostsNothing(t *testing.T) {
	if err := KernelRelay(); err != nil {
		t.Skipf("no kernel relay here: %v", err)
	}
	// More than the sockets' buffers hold, so some wait in the kernel relay's queue when
	// the EOF comes; all within the credit, so the kernel moves them all.
	const n = 16 << 20
	saved := creditBytes
	creditBytes = 4 * n
	defer func() { creditBytes = saved }()
	h := startRelay(t, t.Context(), topology{"tcp", "tcp"}, Options{Mode: ModeKernel})
	sent := make(chan error, 1)
	go func() {
		_, err := send(h.client, 1, n)
		if err == nil {
			err = h.client.(*net.TCPConn).CloseWrite()
		}
		sent <- err
	}()
	time.Sleep(300 * time.Millisecond) // the relay sees the EOF before the bytes left
	if _, err := recv(h.server, n); err != nil {
		t.Fatalf("server reading the upload: %v", err)
	}
	if err := <-sent; err != nil {
		t.Fatalf("client sending: %v", err)
	}
	if got := readAll(t, h.server); got != "" {
		t.Fatalf("server read %d bytes more, want EOF", len(got))
	}
	time.Sleep(100 * time.Millisecond)
	steps := kernelSteps.Load()
	time.Sleep(time.Second)
	if d := kernelSteps.Load() - steps; d > 0 {
		t.Errorf("%d looks at the sockets of a half-closed idle connection in 1s, want none", d)
	}
	// The other direction still works, and ends the relay.
	write(t, h.server, "response")
	closeWrite(t, h.server)
	if got := readAll(t, h.client); got != "response" {
		t.Errorf("client read %q, want the response and EOF", got)
	}
	if r := h.wait(t); r.err != nil || r.stats != moved(n, 8) {
		t.Errorf("Relay: %+v, %v", r.stats, r.err)
	}
}

// TestKernelSlotsQuarantined: a connection's slots in the counts are handed out again
// only slotQuarantine after it freed them, zeroed, so that a verdict program still
// running for its sockets cannot count on a new connection.
func TestKernelSlotsQuarantined(t *testing.T) {
	e := &engine{slots: new([maxRelayed]slotCount)}
	take := func() *kconn {
		t.Helper()
		k := &kconn{}
		e.mu.Lock()
		defer e.mu.Unlock()
		if err := e.takeSlots(k); err != nil {
			t.Fatal(err)
		}
		return k
	}
	a := take()
	e.slots[a.c.slot].bytes, e.slots[a.u.slot].kept = 1234, 1
	e.releaseSlots(a)
	if b := take(); b.c.slot == a.c.slot || b.u.slot == a.c.slot || b.c.slot == a.u.slot || b.u.slot == a.u.slot {
		t.Fatalf("slots %d and %d handed out again at once (had %d and %d)", b.c.slot, b.u.slot, a.c.slot, a.u.slot)
	}
	for i := range e.freed {
		e.freed[i].at = e.freed[i].at.Add(-slotQuarantine)
	}
	c := take()
	if c.c.slot != a.c.slot || c.u.slot != a.u.slot {
		t.Errorf("slots %d and %d, want the quarantined %d and %d", c.c.slot, c.u.slot, a.c.slot, a.u.slot)
	}
	if e.counted(&c.c) != 0 || e.kept(&c.u) {
		t.Errorf("a reused slot kept its old counts: %d bytes, kept %v", e.counted(&c.c), e.kept(&c.u))
	}
	if len(e.bySlot) != 4 {
		t.Errorf("%d slots used for 2 connections at once, want 4", len(e.bySlot))
	}
}
