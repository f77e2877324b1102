// Package events is sact's stream of what happens to apps (starts, stops, failures,
// evictions, deploys) for GET /api/events and `sact events`: a hub that the daemon
// publishes to without ever waiting, and subscribers that each read at their own pace.
//
// Every subscriber has a bounded queue. One that does not keep up loses the newest
// events, not the daemon's time: in their place it gets one event of kind "lost" that
// says how many it missed, so a reader always knows its view has a gap.
package events

import (
	"context"
	"sync"
	"time"
)

// Kinds of events. The daemon's parts may publish others (a deploy's steps, for one); a
// reader must skip kinds it does not know.
const (
	Start       = "start"        // the app became ready; Took is how long it took
	StartFailed = "start_failed" // a start failed; Details says why, with the app's last log lines
	Stop        = "stop"         // sact stopped it; Reason: idle, manual, restart, config changed, ...
	Exit        = "exit"         // it stopped on its own: Reason exited, oom-killed, ...
	Evict       = "evict"        // sact stopped it to make room for another (pool max_running, memory_budget)
	Pause       = "pause"        // frozen after pause_after (or by hand)
	Deploy      = "deploy"       // a deploy's step; Reason says which
	Lost        = "lost"         // this subscriber missed Lost events: it did not read fast enough
)

// Event is one thing that happened to an app.
type Event struct {
	Kind    string    `json:"kind"`
	App     string    `json:"app,omitempty"`
	Time    time.Time `json:"time"`
	Reason  string    `json:"reason,omitempty"`
	Details string    `json:"details,omitempty"`
	// Took is how long a start or stop took, as "1.2s".
	Took string `json:"took,omitempty"`
	// Lost counts the events missed, on a "lost" event.
	Lost int `json:"lost,omitempty"`
}

// DefaultBuffer is a subscriber's queue length when Subscribe is given 0.
const DefaultBuffer = 256

// Hub fans events out to its subscribers. The zero value is ready to use.
type Hub struct {
	mu   sync.Mutex
	subs map[*Sub]struct{}
	// Now stamps events published without a time. Default time.Now.
	Now func() time.Time
}

// Publish hands e to every subscriber without blocking: a subscriber whose queue is full
// counts it as lost. A nil Hub drops it.
func (h *Hub) Publish(e Event) {
	if h == nil {
		return
	}
	if e.Time.IsZero() {
		if h.Now != nil {
			e.Time = h.Now()
		} else {
			e.Time = time.Now()
		}
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		s.push(e)
	}
}

// Subscribe returns a subscriber that receives the events published from now on, with a
// queue of buffer events (0: DefaultBuffer). Close it when done.
func (h *Hub) Subscribe(buffer int) *Sub {
	if buffer <= 0 {
		buffer = DefaultBuffer
	}
	buffer = max(buffer, 2) // room for one event and a "lost" marker
	s := &Sub{hub: h, max: buffer, ready: make(chan struct{}, 1), closed: make(chan struct{})}
	h.mu.Lock()
	if h.subs == nil {
		h.subs = make(map[*Sub]struct{})
	}
	h.subs[s] = struct{}{}
	h.mu.Unlock()
	return s
}

// Subscribers returns how many subscribers there are.
func (h *Hub) Subscribers() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.subs)
}

// Sub is one reader of the hub.
type Sub struct {
	hub   *Hub
	max   int
	ready chan struct{} // a token when the queue may be non-empty

	mu       sync.Mutex
	queue    []Event
	closed   chan struct{}
	isClosed bool
}

// push queues e, or counts it lost. The last slot is kept for the "lost" marker, so that
// the marker comes exactly where the gap is. Called with the hub's lock held.
func (s *Sub) push(e Event) {
	s.mu.Lock()
	switch n := len(s.queue); {
	case n > 0 && s.queue[n-1].Kind == Lost:
		s.queue[n-1].Lost++
	case n >= s.max-1:
		s.queue = append(s.queue, Event{Kind: Lost, Time: e.Time, Lost: 1})
	default:
		s.queue = append(s.queue, e)
	}
	s.mu.Unlock()
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// Next returns the next event, waiting until there is one, ctx ends or the Sub is
// closed (then it returns ctx's error or context.Canceled).
func (s *Sub) Next(ctx context.Context) (Event, error) {
	for {
		s.mu.Lock()
		if len(s.queue) > 0 {
			e := s.queue[0]
			s.queue[0] = Event{}
			s.queue = s.queue[1:]
			if len(s.queue) == 0 {
				s.queue = nil // let the backing array go
			}
			s.mu.Unlock()
			return e, nil
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			return Event{}, ctx.Err()
		case <-s.closed:
			return Event{}, context.Canceled
		}
	}
}

// Close ends the subscription; a Next waiting returns.
func (s *Sub) Close() {
	s.hub.mu.Lock()
	delete(s.hub.subs, s)
	s.hub.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.isClosed {
		s.isClosed = true
		close(s.closed)
	}
}
