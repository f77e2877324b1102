package cli

import (
	"testing"
	"time"
)

func TestAgo(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	tests := map[string]struct {
		t    time.Time
		want string
	}{
		"never":   {time.Time{}, "-"},
		"seconds": {now.Add(-5 * time.Second), "5s ago"},
		"minutes": {now.Add(-3 * time.Minute), "3m ago"},
		"hours":   {now.Add(-30 * time.Hour), "30h ago"},
		"days":    {now.Add(-72 * time.Hour), "3d ago"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := ago(now, tt.t); got != tt.want {
				t.Errorf("ago = %q, want %q", got, tt.want)
			}
		})
	}
}
