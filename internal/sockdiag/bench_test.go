package sockdiag

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"testing"
)

// BenchmarkProbeRound is one round of the daemon's idle check: one Probe for 1000
// listeners with no connection. ns/listener is the cost per app.
func BenchmarkProbeRound(b *testing.B) {
	for _, kind := range []string{"tcp", "unix"} {
		b.Run(fmt.Sprintf("%s/1000", kind), func(b *testing.B) {
			p := newProber(b)
			dir := b.TempDir()
			addrs := make([]net.Addr, 1000)
			for i := range addrs {
				var ln net.Listener
				var err error
				if kind == "tcp" {
					ln, err = net.Listen("tcp4", "127.0.0.1:0")
				} else {
					ln, err = net.Listen("unix", filepath.Join(dir, fmt.Sprintf("%d.sock", i)))
				}
				if err != nil {
					b.Fatal(err)
				}
				defer ln.Close()
				addrs[i] = ln.Addr()
			}
			ctx := context.Background()
			for b.Loop() {
				got, err := p.Probe(ctx, addrs...)
				if err != nil {
					b.Fatal(err)
				}
				if !got[len(got)-1].Listening {
					b.Fatalf("have %+v, want Listening", got[len(got)-1])
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/float64(len(addrs)), "ns/listener")
		})
	}
}

// BenchmarkProbeOne is a Probe for a single TCP listener, which the kernel filters by
// port: the price of probing apps one by one instead of in one round.
func BenchmarkProbeOne(b *testing.B) {
	p := newProber(b)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	for b.Loop() {
		if _, err := p.Probe(context.Background(), ln.Addr()); err != nil {
			b.Fatal(err)
		}
	}
}
