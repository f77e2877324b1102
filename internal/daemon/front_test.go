package daemon

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"

	"github.com/sact-project/sact/internal/listen"
)

func TestFrontSocketDefaults(t *testing.T) {
	sock := listen.Addr{Network: "unix", Address: "/run/sact/http.sock"}
	tests := []struct {
		name  string
		in    listen.Addr
		group string // frontGroup
		want  listen.Addr
		warn  bool
	}{
		{"defaults, www-data exists", sock, "root", listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o660, Group: "root"}, false},
		{"defaults, no such group", sock, "no-such-group-sact", listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o660}, true},
		{"the admin's mode and group", listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o666, Group: "42"}, "no-such-group-sact",
			listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o666, Group: "42"}, false},
		{"open mode needs no group", listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o666}, "no-such-group-sact",
			listen.Addr{Network: "unix", Address: sock.Address, Mode: 0o666}, false},
		{"tcp is left alone", listen.Addr{Network: "tcp", Address: ":80"}, "root", listen.Addr{Network: "tcp", Address: ":80"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			old := frontGroup
			frontGroup = tt.group // a group every host has stands for www-data
			defer func() { frontGroup = old }()
			var logs bytes.Buffer
			got := frontSocket(tt.in, slog.New(slog.NewTextHandler(&logs, nil)))
			if got != tt.want {
				t.Errorf("frontSocket = %+v, want %+v", got, tt.want)
			}
			warned := strings.Contains(logs.String(), "group:")
			if warned != tt.warn {
				t.Errorf("warning %v, want %v: %s", warned, tt.warn, logs.String())
			}
		})
	}
}
