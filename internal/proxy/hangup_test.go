package proxy

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"testing"
	"time"
)

// pair returns both ends of a fresh TCP or unix stream connection: the accepted one
// (the client as the relay sees it) and the dialled one (the client itself).
func pair(t testing.TB, network string) (server, client net.Conn) {
	t.Helper()
	addr := "127.0.0.1:0"
	if network == "unix" {
		addr = filepath.Join(t.TempDir(), "s.sock")
	}
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial(network, ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close(); client.Close() })
	return server, client
}

func TestWatchHangup(t *testing.T) {
	const every = 20 * time.Millisecond
	tests := []struct {
		name string
		// client does something to its end; gone says whether the watcher must call
		// that hanging up.
		client func(c net.Conn)
		gone   bool
	}{
		{"stays, silent", func(net.Conn) {}, false},
		{"stays, request sent", func(c net.Conn) { c.Write([]byte("GET / HTTP/1.0\r\n\r\n")) }, false},
		{"request sent, then half-closed", func(c net.Conn) {
			c.Write([]byte("GET / HTTP/1.0\r\n\r\n"))
			c.(interface{ CloseWrite() error }).CloseWrite()
		}, false},
		{"closes without a byte", func(c net.Conn) { c.Close() }, true},
		{"resets", func(c net.Conn) {
			if tc, ok := c.(*net.TCPConn); ok {
				tc.SetLinger(0)
			}
			c.Close()
		}, true},
	}
	for _, network := range []string{"tcp", "unix"} {
		for _, tt := range tests {
			t.Run(network+"/"+tt.name, func(t *testing.T) {
				server, client := pair(t, network)
				ctx, stop := WatchHangup(context.Background(), server, every)
				defer stop()
				began := time.Now()
				tt.client(client)
				select {
				case <-ctx.Done():
					if !tt.gone {
						t.Fatalf("watcher says the client hung up: %v", context.Cause(ctx))
					}
					if err := context.Cause(ctx); !errors.Is(err, ErrClientGone) {
						t.Errorf("cause %v, want ErrClientGone", err)
					}
					if took := time.Since(began); took > 5*every {
						t.Errorf("hang-up noticed after %s, want within a few polls of %s", took, every)
					}
				case <-time.After(10 * every):
					if tt.gone {
						t.Fatal("hang-up not noticed")
					}
				}
				if network == "unix" && tt.name == "request sent, then half-closed" {
					return // the relay still delivers it: checked below for tcp
				}
				if !tt.gone {
					// Nothing was consumed: the relay gets every byte the client sent.
					server.SetReadDeadline(time.Now().Add(10 * time.Millisecond))
					buf := make([]byte, 64)
					n, _ := server.Read(buf)
					if tt.name != "stays, silent" && n == 0 {
						t.Error("the watcher consumed the client's bytes")
					}
				}
			})
		}
	}
	t.Run("stop ends the watch", func(t *testing.T) {
		server, client := pair(t, "tcp")
		ctx, stop := WatchHangup(context.Background(), server, every)
		stop()
		client.Close()
		time.Sleep(3 * every)
		if err := context.Cause(ctx); errors.Is(err, ErrClientGone) {
			t.Error("a stopped watcher still reported the hang-up")
		}
	})
}

// BenchmarkWatchHangup is what the watch adds to a connection whose lease comes at once
// (a running app): one context, one timer, stopped before it fires.
func BenchmarkWatchHangup(b *testing.B) {
	server, _ := pair(b, "tcp")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	b.ReportAllocs()
	for b.Loop() {
		_, stop := WatchHangup(ctx, server, 100*time.Millisecond)
		stop()
	}
}
