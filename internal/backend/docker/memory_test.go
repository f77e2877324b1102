package docker

import (
	"testing"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/events"
)

func TestMemoryOf(t *testing.T) {
	for _, tt := range []struct {
		name string
		m    container.MemoryStats
		want int64
	}{
		{"cgroup v1", container.MemoryStats{Usage: 100 << 20, Stats: map[string]uint64{"total_inactive_file": 30 << 20, "cache": 40 << 20}}, 70 << 20},
		{"cgroup v2", container.MemoryStats{Usage: 100 << 20, Stats: map[string]uint64{"inactive_file": 10 << 20}}, 90 << 20},
		{"cache over usage", container.MemoryStats{Usage: 10 << 20, Stats: map[string]uint64{"total_inactive_file": 20 << 20}}, 10 << 20},
		{"no stats", container.MemoryStats{Usage: 5 << 20}, 5 << 20},
	} {
		if got, err := memoryOf(tt.m, "c"); err != nil || got != tt.want {
			t.Errorf("%s: %d, %v; want %d", tt.name, got, err, tt.want)
		}
	}
	if _, err := memoryOf(container.MemoryStats{}, "c"); err == nil {
		t.Error("a stopped container's empty stats read as 0 bytes used")
	}
}

func TestHealthStatus(t *testing.T) {
	h := newHealth()
	before := h.change
	h.set(events.ActionHealthStatusRunning) // "health_status: running": a status too
	h.set(events.Action("health_status: healthy"))
	if h.status != "healthy" {
		t.Fatalf("status %q", h.status)
	}
	select {
	case <-before:
	default:
		t.Fatal("a waiter was not woken")
	}
	same := h.change
	h.set(events.ActionHealthStatusHealthy)
	select {
	case <-same:
		t.Error("woken for no change")
	default:
	}
	if !isHealth(events.ActionHealthStatusUnhealthy) || isHealth(events.ActionDie) {
		t.Error("isHealth")
	}
}
