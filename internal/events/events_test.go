package events

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func kinds(t *testing.T, s *Sub, n int) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var out []string
	for range n {
		e, err := s.Next(ctx)
		if err != nil {
			t.Fatalf("Next: %v (after %v)", err, out)
		}
		if e.Kind == Lost {
			out = append(out, fmt.Sprintf("lost %d", e.Lost))
		} else {
			out = append(out, e.App)
		}
	}
	return out
}

func TestInOrder(t *testing.T) {
	var h Hub
	s := h.Subscribe(0)
	defer s.Close()
	for i := range 3 {
		h.Publish(Event{Kind: Start, App: fmt.Sprint(i)})
	}
	if diff := cmp.Diff([]string{"0", "1", "2"}, kinds(t, s, 3)); diff != "" {
		t.Error(diff)
	}
}

// A reader that does not read loses the newest events, marked where they were lost,
// and the publisher never waits for it.
func TestSlowSubscriberLosesMarked(t *testing.T) {
	var h Hub
	slow := h.Subscribe(4)
	defer slow.Close()
	fast := h.Subscribe(100)
	defer fast.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := range 10 {
			h.Publish(Event{Kind: Stop, App: fmt.Sprint(i)})
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Publish blocked on a subscriber that does not read")
	}
	if diff := cmp.Diff([]string{"0", "1", "2", "lost 7"}, kinds(t, slow, 4)); diff != "" {
		t.Errorf("slow subscriber (-want +got):\n%s", diff)
	}
	h.Publish(Event{Kind: Stop, App: "10"})
	if diff := cmp.Diff([]string{"10"}, kinds(t, slow, 1)); diff != "" {
		t.Errorf("after catching up (-want +got):\n%s", diff)
	}
	if got := kinds(t, fast, 10); got[9] != "9" {
		t.Errorf("fast subscriber got %v", got)
	}
}

func TestCloseEndsNext(t *testing.T) {
	var h Hub
	s := h.Subscribe(0)
	var wg sync.WaitGroup
	var err error
	wg.Go(func() { _, err = s.Next(context.Background()) })
	time.Sleep(10 * time.Millisecond)
	s.Close()
	wg.Wait()
	if err == nil {
		t.Error("Next returned no error after Close")
	}
	if h.Subscribers() != 0 {
		t.Errorf("%d subscribers after Close", h.Subscribers())
	}
	h.Publish(Event{Kind: Start}) // nobody listens: nothing happens
	var nilHub *Hub
	nilHub.Publish(Event{Kind: Start})
}

func TestConcurrent(t *testing.T) {
	var h Hub
	var wg sync.WaitGroup
	ctx, cancel := context.WithCancel(context.Background())
	for range 4 {
		s := h.Subscribe(8)
		wg.Go(func() {
			defer s.Close()
			for {
				if _, err := s.Next(ctx); err != nil {
					return
				}
			}
		})
	}
	for i := range 1000 {
		h.Publish(Event{Kind: Start, App: fmt.Sprint(i)})
	}
	cancel()
	wg.Wait()
}
