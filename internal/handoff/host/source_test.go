package host

import (
	"context"
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
	"github.com/sact-project/sact/internal/config"
	"github.com/sact-project/sact/internal/listen"
)

// The App as the activator's Source, on real listening sockets: Pending names the
// listener a client waits on, without accepting it; Refuse closes the queued clients and
// counts them under the reason given; a Pending whose context ends returns at once.
func TestSourcePendingAndRefuse(t *testing.T) {
	var lns []net.Listener
	var addrs []listen.Addr
	for range 2 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer ln.Close()
		lns = append(lns, ln)
		addrs = append(addrs, listen.Addr{Network: "tcp", Address: ln.Addr().String()})
	}
	app := &config.App{Name: "app", Handoff: true, Listen: addrs}
	act := activator.New(&fake.Runtime{}, activator.Policy{Spec: backend.Spec{Name: "app"}}, activator.Options{})
	counted := map[string]int{}
	h := New(app, lns, act, Options{Failed: func(_, reason string, n int) { counted[reason] += n }})
	var src activator.Source = h

	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	if _, err := src.Pending(ctx, false); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("no client: Pending = %v, want its context's end", err)
	}
	cancel()

	c, err := net.Dial("tcp", addrs[1].Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	got, err := src.Pending(ctx, false)
	if err != nil || got != addrs[1].String() {
		t.Fatalf("a client on the second listener: Pending = %q, %v; want %q", got, err, addrs[1].String())
	}
	// Still queued: Pending does not accept.
	if n := src.Refuse("start_failed"); n != 1 || counted["start_failed"] != 1 {
		t.Errorf("Refuse = %d (counted %v), want the 1 queued client", n, counted)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("refused client: read %v, want the connection closed", err)
	}
}
