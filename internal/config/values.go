package config

import (
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/sact-project/sact/internal/listen"
)

// durationUnits are the units parseDuration knows: Go's, and systemd's spellings of them
// (systemd.time(7)). Months and years are left out: their length is a matter of opinion,
// and "M" next to "m" is a typo waiting to happen.
var durationUnits = map[string]time.Duration{
	"ns": time.Nanosecond, "nsec": time.Nanosecond,
	"us": time.Microsecond, "usec": time.Microsecond, "µs": time.Microsecond, "μs": time.Microsecond,
	"ms": time.Millisecond, "msec": time.Millisecond,
	"s": time.Second, "sec": time.Second, "second": time.Second, "seconds": time.Second,
	"m": time.Minute, "min": time.Minute, "minute": time.Minute, "minutes": time.Minute,
	"h": time.Hour, "hr": time.Hour, "hour": time.Hour, "hours": time.Hour,
	"d": 24 * time.Hour, "day": 24 * time.Hour, "days": 24 * time.Hour,
	"w": 7 * 24 * time.Hour, "week": 7 * 24 * time.Hour, "weeks": 7 * 24 * time.Hour,
}

// parseDuration parses a duration written Go style ("90s", "1h30m", "500ms") or systemd
// style: a plain number is seconds ("90", "1.5"), and components may be spelled out and
// separated by spaces ("1min", "2h 30min", "1d"). Negative durations are refused.
func parseDuration(s string) (time.Duration, error) {
	const how = "write a duration like 90s, 15m or 1h30m"
	t := strings.TrimSpace(s)
	switch {
	case t == "":
		return 0, fmt.Errorf("empty; %s", how)
	case t[0] == '-':
		return 0, fmt.Errorf("%s is negative; %s", quote(s), how)
	case t[0] == '+':
		t = t[1:]
	}
	var total float64
	for first := true; t != ""; first = false {
		num := prefixLen(t, func(r rune) bool { return r >= '0' && r <= '9' || r == '.' })
		if num == 0 || strings.Count(t[:num], ".") > 1 || t[:num] == "." {
			return 0, fmt.Errorf("%s is not a duration; %s", quote(s), how)
		}
		var v float64
		fmt.Sscan(t[:num], &v) // digits and one dot: cannot fail
		t = strings.TrimLeft(t[num:], " \t")
		unitLen := prefixLen(t, func(r rune) bool { return unicode.IsLetter(r) })
		unit := t[:unitLen]
		t = strings.TrimLeft(t[unitLen:], " \t")
		if unit == "" {
			if !first || t != "" {
				return 0, fmt.Errorf("%s: a number without a unit; %s", quote(s), how)
			}
			unit = "s" // systemd: a plain number is seconds
		}
		u, ok := durationUnits[unit]
		if !ok {
			return 0, fmt.Errorf("%s: unknown unit %q; use ms, s, min (or m), h, d or w", quote(s), unit)
		}
		total += v * float64(u)
	}
	if total >= math.MaxInt64 {
		return 0, fmt.Errorf("%s is too long; the longest is about 292 years", quote(s))
	}
	return time.Duration(math.Round(total)), nil
}

// prefixLen is the length in bytes of the longest prefix of s whose runes all satisfy ok.
func prefixLen(s string, ok func(rune) bool) int {
	for i, r := range s {
		if !ok(r) {
			return i
		}
	}
	return len(s)
}

// sizeUnits are the suffixes parseSize knows. Like docker, every unit is a power of 1024,
// whether written m, mb or mib.
var sizeUnits = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "kb": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mb": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gb": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "tb": 1 << 40, "tib": 1 << 40,
}

// parseSize parses a size in bytes: a plain number of bytes ("268435456"), or a number with
// a unit as docker takes it, in any case ("512m", "1.5g", "512MiB", "2 GB").
func parseSize(s string) (int64, error) {
	const how = "write a size like 512m, 1g or 268435456 (bytes)"
	t := strings.TrimSpace(s)
	num := prefixLen(t, func(r rune) bool { return r >= '0' && r <= '9' || r == '.' })
	if num == 0 || strings.Count(t[:num], ".") > 1 || t[:num] == "." {
		return 0, fmt.Errorf("%s is not a size; %s", quote(s), how)
	}
	v, err := strconv.ParseFloat(t[:num], 64)
	if err != nil {
		return 0, fmt.Errorf("%s is not a size; %s", quote(s), how)
	}
	unit := strings.ToLower(strings.TrimSpace(t[num:]))
	mult, ok := sizeUnits[unit]
	if !ok {
		return 0, fmt.Errorf("%s: unknown unit %q; use k, m, g or t (powers of 1024)", quote(s), t[num:])
	}
	total := v * float64(mult)
	if total >= math.MaxInt64 {
		return 0, fmt.Errorf("%s is too large", quote(s))
	}
	return int64(total), nil
}

// parseAddr parses a listen or upstream address as listen.Parse does, and also takes a
// bare "host:port" (":8080", "127.0.0.1:9001") as TCP.
func parseAddr(s string) (listen.Addr, error) {
	if !strings.HasPrefix(s, "unix:") && !strings.HasPrefix(s, "tcp:") {
		if _, _, err := net.SplitHostPort(s); err == nil {
			s = "tcp:" + s
		}
	}
	return listen.Parse(s)
}

var appName = regexp.MustCompile(`^[a-z0-9][a-z0-9_.-]*$`)

func checkAppName(s string) error {
	if !appName.MatchString(s) {
		return fmt.Errorf("%s is not a usable app name; use lowercase letters, digits and _ . - (not first), as it becomes the container name sact-NAME", quote(s))
	}
	return nil
}

func checkEnvKey(k string) error {
	if k == "" || strings.ContainsAny(k, "=\x00") {
		return fmt.Errorf("%s is not a variable name; names are non-empty and have no = in them", quote(k))
	}
	return nil
}

var hostLabel = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// checkHost checks a host name for the http front door: "example.com", or "*.example.com"
// for every name below example.com. Names are matched without regard to case; write them
// in lowercase.
func checkHost(h string) error {
	const how = "write a host name like app.example.com or *.example.com, optionally with a path prefix (app.example.com/api), without scheme or port"
	host, prefix, hasPath := strings.Cut(h, "/")
	if strings.Contains(h, "://") {
		return fmt.Errorf("%s is not a host name; %s", quote(h), how)
	}
	if hasPath && (strings.ContainsAny(prefix, "?#* \t") || strings.Contains("/"+prefix, "/../") || strings.HasSuffix("/"+prefix, "/..")) {
		return fmt.Errorf("%s is not a path prefix; %s", quote("/"+prefix), how)
	}
	name := strings.TrimPrefix(host, "*.")
	if len(name) > 253 || strings.Contains(name, "*") {
		return fmt.Errorf("%s is not a host name; %s", quote(h), how)
	}
	for _, label := range strings.Split(name, ".") {
		if !hostLabel.MatchString(label) {
			if strings.ToLower(label) != label {
				return fmt.Errorf("%s: write host names in lowercase", quote(h))
			}
			return fmt.Errorf("%s is not a host name; %s", quote(h), how)
		}
	}
	return nil
}

var weekdays = []string{"mon", "tue", "wed", "thu", "fri", "sat", "sun"}

// checkWindow checks a keep_warm window: "[DAYS ]HH:MM-HH:MM". DAYS is a comma separated
// list of days and day ranges ("Mon-Fri", "Sat,Sun", "Fri-Mon" wraps around the week);
// without it the window is every day. The end is later than the start on the same day,
// "24:00" being midnight at the end; a window over midnight is written as two.
func checkWindow(s string) error {
	_, err := ParseWindow(s)
	return err
}

// Window is one keep_warm window: the days of the week it applies on, and the minutes
// after midnight it runs from and to, in the host's time zone.
type Window struct {
	Days     [7]bool // by time.Weekday
	From, To int
}

// Contains reports whether t falls in the window.
func (w Window) Contains(t time.Time) bool {
	m := t.Hour()*60 + t.Minute()
	return w.Days[t.Weekday()] && m >= w.From && m < w.To
}

// ParseWindow parses "[DAYS ]HH:MM-HH:MM" (see checkWindow).
func ParseWindow(s string) (Window, error) {
	const how = `write a window like "Mon-Fri 09:00-19:00" or "08:00-20:00"`
	var w Window
	f := strings.Fields(s)
	if len(f) == 0 || len(f) > 2 {
		return w, fmt.Errorf("%s is not a time window; %s", quote(s), how)
	}
	if len(f) == 1 {
		w.Days = [7]bool{true, true, true, true, true, true, true}
	} else {
		for _, part := range strings.Split(f[0], ",") {
			days := strings.SplitN(part, "-", 2) // "Mon" or "Mon-Fri"
			idx := make([]int, len(days))
			for i, day := range days {
				idx[i] = slices.Index(weekdays, strings.ToLower(day))
				if idx[i] < 0 {
					return w, fmt.Errorf("%s: unknown day %s; use Mon, Tue, Wed, Thu, Fri, Sat, Sun", quote(s), quote(day))
				}
			}
			last := idx[len(idx)-1]
			for d := idx[0]; ; d = (d + 1) % 7 {
				w.Days[(d+1)%7] = true // weekdays starts on Monday, time.Weekday on Sunday
				if d == last {
					break
				}
			}
		}
	}
	from, to, ok := strings.Cut(f[len(f)-1], "-")
	if !ok || !strings.Contains(f[len(f)-1], ":") {
		return w, fmt.Errorf("%s has no time range; %s", quote(s), how)
	}
	start, ok1 := clock(from, false)
	end, ok2 := clock(to, true)
	if !ok1 || !ok2 {
		return w, fmt.Errorf("%s: times are HH:MM, 00:00 to 24:00; %s", quote(s), how)
	}
	if end <= start {
		return w, fmt.Errorf("%s ends before it starts; a window over midnight is two windows, like \"22:00-24:00\" and \"00:00-06:00\"", quote(s))
	}
	w.From, w.To = start, end
	return w, nil
}

// clock parses "HH:MM" into minutes after midnight; "24:00" only if end.
func clock(s string, end bool) (int, bool) {
	var h, m int
	if len(s) != 5 || s[2] != ':' {
		return 0, false
	}
	if _, err := fmt.Sscanf(s, "%2d:%2d", &h, &m); err != nil || h < 0 || m < 0 || m > 59 {
		return 0, false
	}
	if h > 23 && !(end && h == 24 && m == 0) {
		return 0, false
	}
	return h*60 + m, true
}

// checkAdminHost checks a name of admin.hosts: a host name or IP address, optionally with
// a port ("dash.example.com", "dash.example.com:8443", "192.0.2.7", "[2001:db8::7]:9180").
func checkAdminHost(h string) error {
	const how = "write a host name or IP address, optionally with :port, like dash.example.com or dash.example.com:8443, without scheme or path"
	if strings.Contains(h, "://") || strings.ContainsAny(h, "/?#*@ \t") {
		return fmt.Errorf("%s is not a host name; %s", quote(h), how)
	}
	host := h
	if name, port, err := net.SplitHostPort(h); err == nil {
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return fmt.Errorf("%s: the port must be a number from 1 to 65535; %s", quote(h), how)
		}
		host = name
	} else if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		host = h[1 : len(h)-1]
	}
	if _, err := netip.ParseAddr(host); err == nil {
		return nil
	}
	if strings.ContainsAny(host, "[]:") || host == "" || len(host) > 253 {
		return fmt.Errorf("%s is not a host name; %s", quote(h), how)
	}
	for _, label := range strings.Split(host, ".") {
		if !hostLabel.MatchString(label) {
			if strings.ToLower(label) != label {
				return fmt.Errorf("%s: write host names in lowercase", quote(h))
			}
			return fmt.Errorf("%s is not a host name; %s", quote(h), how)
		}
	}
	return nil
}
