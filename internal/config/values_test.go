package config

import (
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/kinds"
)

func TestParseDuration(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    time.Duration
		wantErr string
	}{
		"go seconds":         {in: "90s", want: 90 * time.Second},
		"go minutes":         {in: "15m", want: 15 * time.Minute},
		"go compound":        {in: "1h30m", want: 90 * time.Minute},
		"go milliseconds":    {in: "500ms", want: 500 * time.Millisecond},
		"go fraction":        {in: "1.5h", want: 90 * time.Minute},
		"go micro":           {in: "10µs", want: 10 * time.Microsecond},
		"plain seconds":      {in: "90", want: 90 * time.Second},
		"plain fraction":     {in: "1.5", want: 1500 * time.Millisecond},
		"plain with plus":    {in: "+5", want: 5 * time.Second},
		"systemd min":        {in: "1min", want: time.Minute},
		"systemd spaced":     {in: "2h 30min", want: 150 * time.Minute},
		"systemd unit space": {in: "2 h", want: 2 * time.Hour},
		"systemd day":        {in: "1d", want: 24 * time.Hour},
		"systemd week":       {in: "1w", want: 7 * 24 * time.Hour},
		"systemd msec":       {in: "500msec", want: 500 * time.Millisecond},
		"systemd words":      {in: "1 hour 2 minutes 3 seconds", want: time.Hour + 2*time.Minute + 3*time.Second},
		"surrounding space":  {in: " 5m ", want: 5 * time.Minute},
		"zero":               {in: "0", want: 0},
		"negative":           {in: "-5s", wantErr: "negative"},
		"empty":              {in: "", wantErr: "empty"},
		"word":               {in: "soon", wantErr: "not a duration"},
		"month":              {in: "1M", wantErr: `unknown unit "M"`},
		"year":               {in: "1y", wantErr: `unknown unit "y"`},
		"unit first":         {in: "m5", wantErr: "not a duration"},
		"trailing number":    {in: "1h 30", wantErr: "without a unit"},
		"two dots":           {in: "1.2.3s", wantErr: "not a duration"},
		"lone dot":           {in: ".s", wantErr: "not a duration"},
		"exponent":           {in: "1e3", wantErr: `unknown unit "e"`},
		"too long":           {in: "300000d", wantErr: "too long"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseDuration(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseDuration(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseDuration(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	tests := map[string]struct {
		in      string
		want    int64
		wantErr string
	}{
		"bytes":        {in: "268435456", want: 256 << 20},
		"b":            {in: "100b", want: 100},
		"k":            {in: "64k", want: 64 << 10},
		"m":            {in: "512m", want: 512 << 20},
		"M":            {in: "512M", want: 512 << 20},
		"g":            {in: "1g", want: 1 << 30},
		"fraction":     {in: "1.5g", want: 3 << 29},
		"mb is binary": {in: "512MB", want: 512 << 20},
		"mib":          {in: "512MiB", want: 512 << 20},
		"spaced":       {in: "2 GB", want: 2 << 30},
		"t":            {in: "1t", want: 1 << 40},
		"zero":         {in: "0", want: 0},
		"word":         {in: "lots", wantErr: "not a size"},
		"unit":         {in: "1x", wantErr: `unknown unit "x"`},
		"negative":     {in: "-1g", wantErr: "not a size"},
		"huge":         {in: "9999999t", wantErr: "too large"},
		"empty":        {in: "", wantErr: "not a size"},
	}
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := parseSize(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseSize(%q) = %v, %v; want error containing %q", tt.in, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("parseSize(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestSuggest(t *testing.T) {
	tests := map[string]struct {
		in   string
		want string
	}{
		"transposition": {in: "imgae", want: "image"},
		"missing":       {in: "lisen", want: "listen"},
		"dash":          {in: "start-timeout", want: "start_timeout"},
		"camel":         {in: "StopTimeout", want: "stop_timeout"},
		"no underscore": {in: "keepwhileopen", want: "keep_while_open"},
		"short":         {in: "prot", want: "port"},
		"exact":         {in: "idle", want: "idle"},
		"far":           {in: "frobnicate", want: ""},
		"short far":     {in: "xy", want: ""},
	}
	names := newKindSet(kinds.All).names
	for name, tt := range tests {
		t.Run(name, func(t *testing.T) {
			if got := suggest(tt.in, names); got != tt.want {
				t.Errorf("suggest(%q) = %q, want %q", tt.in, got, tt.want)
			}
		})
	}
}

func TestCheckWindow(t *testing.T) {
	valid := []string{"Mon-Fri 09:00-19:00", "08:00-20:00", "Sat,Sun 10:00-12:00", "Fri-Mon 00:00-24:00", "mon 09:30-09:31", "Mon,Wed-Fri 22:00-24:00"}
	for _, s := range valid {
		if err := checkWindow(s); err != nil {
			t.Errorf("checkWindow(%q) = %v, want nil", s, err)
		}
	}
	invalid := []string{"", "Mon-Fri", "Mon-Fry 09:00-17:00", "9:00-17:00", "19:00-07:00", "10:00-10:00", "00:00-24:01", "24:00-24:00", "Mon 09:00-17:00 extra", "Mon- 09:00-10:00", "09:60-10:00"}
	for _, s := range invalid {
		if err := checkWindow(s); err == nil {
			t.Errorf("checkWindow(%q) = nil, want an error", s)
		}
	}
}

func TestParseAddr(t *testing.T) {
	tests := map[string]string{
		"unix:/run/sact/web.sock": "unix:/run/sact/web.sock",
		"tcp:127.0.0.1:9001":      "tcp:127.0.0.1:9001",
		":8080":                   "tcp::8080",
		"127.0.0.1:8080":          "tcp:127.0.0.1:8080",
		"[::1]:8080":              "tcp:[::1]:8080",
		"localhost:8080":          "tcp:localhost:8080",
		"/run/sact/web.sock":      "error",
		"unix:run/web.sock":       "error",
		"http://localhost:8080":   "error",
		"localhost":               "error",
	}
	for in, want := range tests {
		a, err := parseAddr(in)
		got := a.String()
		if err != nil {
			got = "error"
		}
		if got != want {
			t.Errorf("parseAddr(%q) = %q (%v), want %q", in, got, err, want)
		}
	}
}
