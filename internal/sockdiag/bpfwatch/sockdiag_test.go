package bpfwatch

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"testing"

	"github.com/sact-project/sact/internal/sockdiag"
)

// What sact sees of a handed-off app without these programs: sock_diag, twice, with
// short connections in between. For those the client closes first (TCP: the TIME_WAIT
// is on the client's side) and for any on a unix socket, nothing is left to see; the
// programs count every one (issue 12).
func TestSockdiagMissesWhatTheProgramsCount(t *testing.T) {
	w := open(t, Options{})
	p, err := sockdiag.New()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	tcp := listenTCP(t, "127.0.0.1:0")
	serve(t, tcp, func(c net.Conn) { defer c.Close(); answer(c); io.Copy(io.Discard, c) })
	lns := []net.Listener{tcp}
	if w.UnixErr() == nil {
		un := listenUnix(t, filepath.Join(t.TempDir(), "app.sock"))
		serve(t, un, func(c net.Conn) { defer c.Close(); answer(c); io.Copy(io.Discard, c) })
		lns = append(lns, un)
	}
	for _, ln := range lns {
		t.Run(ln.Addr().Network(), func(t *testing.T) {
			h := watch(t, w, ln.Addr())
			before, err := p.Probe(context.Background(), ln.Addr())
			if err != nil {
				t.Fatal(err)
			}
			const n = 20
			for range n {
				c, err := net.Dial(ln.Addr().Network(), ln.Addr().String())
				if err != nil {
					t.Fatal(err)
				}
				roundTrip(t, c)
				c.Close()
			}
			eventually(t, h, "every connection", func(a Activity) bool { return a.Connects == n })
			if ln.Addr().Network() == "tcp" {
				eventually(t, h, "every close", func(a Activity) bool { return a.Closes == n })
			}
			after, err := p.Probe(context.Background(), ln.Addr())
			if err != nil {
				t.Fatal(err)
			}
			if after[0] != before[0] {
				t.Logf("sock_diag saw a change: %+v, then %+v", before[0], after[0])
			} else {
				t.Logf("sock_diag saw nothing of %d connections (%+v); the programs counted them: %+v", n, after[0], activity(t, h))
			}
		})
	}
}
