package daemon

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/sact-project/sact/internal/listen"
)

func TestSameTCP(t *testing.T) {
	tests := []struct {
		configured string
		got        string
		want       bool
	}{
		{"127.0.0.1:9001", "127.0.0.1:9001", true},
		{"127.0.0.1:9001", "127.0.0.1:9002", false},
		{"127.0.0.1:9001", "127.0.0.2:9001", false},
		{":9001", "0.0.0.0:9001", true},
		{"0.0.0.0:9001", "0.0.0.0:9001", true},
		{"[::]:9001", "[::]:9001", true},
		{"[::1]:9001", "[::1]:9001", true},
		{"localhost:9001", "127.0.0.1:9001", true},
	}
	for _, tt := range tests {
		if got := sameTCP(tt.configured, netip.MustParseAddrPort(tt.got)); got != tt.want {
			t.Errorf("sameTCP(%q, %s) = %v, want %v", tt.configured, tt.got, got, tt.want)
		}
	}
}

// reclaim from sact's own process: the same system calls that take a handed-off app's
// sockets back, on sockets this test made.
func TestReclaim(t *testing.T) {
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer tl.Close()
	path := filepath.Join(t.TempDir(), "s.sock")
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer ul.Close()
	addrs := []listen.Addr{{Network: "unix", Address: path}, {Network: "tcp", Address: tl.Addr().String()}}

	lns, err := reclaim(os.Getpid(), addrs)
	if err != nil {
		t.Fatal(err)
	}
	for i, ln := range lns {
		if ln.Addr().String() != addrs[i].Address {
			t.Errorf("listener %d is %s, want %s", i, ln.Addr(), addrs[i].Address)
		}
		// The same socket: a client of the original is accepted by the copy.
		c, err := net.Dial(addrs[i].Network, addrs[i].Address)
		if err != nil {
			t.Fatal(err)
		}
		s, err := ln.Accept()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		c.Close()
		ln.Close()
	}

	missing := append(addrs, listen.Addr{Network: "tcp", Address: "127.0.0.1:1"})
	if _, err := reclaim(os.Getpid(), missing); err == nil {
		t.Errorf("reclaim found a socket nobody listens on")
	}
}
