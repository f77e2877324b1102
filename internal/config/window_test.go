package config

import (
	"testing"
	"time"
)

func TestWindowContains(t *testing.T) {
	// 2026-11-23 is a Monday.
	at := func(day int, hhmm string) time.Time {
		tm, _ := time.ParseInLocation("2006-01-02 15:04", "2026-11-2"+string(rune('3'+day))+" "+hhmm, time.Local)
		return tm
	}
	tests := []struct {
		window string
		day    int // 0 Monday .. 6 Sunday
		hhmm   string
		want   bool
	}{
		{"Mon-Fri 09:00-19:00", 0, "09:00", true},
		{"Mon-Fri 09:00-19:00", 0, "08:59", false},
		{"Mon-Fri 09:00-19:00", 4, "18:59", true},
		{"Mon-Fri 09:00-19:00", 4, "19:00", false},
		{"Mon-Fri 09:00-19:00", 5, "12:00", false},
		{"Sat,Sun 10:00-12:00", 6, "11:00", true},
		{"Fri-Mon 00:00-24:00", 6, "23:59", true},
		{"Fri-Mon 00:00-24:00", 1, "12:00", false},
		{"08:00-20:00", 3, "08:00", true},
		{"22:00-24:00", 2, "23:30", true},
	}
	for _, tt := range tests {
		w, err := ParseWindow(tt.window)
		if err != nil {
			t.Fatalf("%q: %v", tt.window, err)
		}
		if got := w.Contains(at(tt.day, tt.hhmm)); got != tt.want {
			t.Errorf("%q contains day %d %s = %v, want %v", tt.window, tt.day, tt.hhmm, got, tt.want)
		}
	}
}
