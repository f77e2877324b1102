package front

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// TestUnixPeerTrust checks who may set X-Forwarded-* over a unix socket: a peer on a
// socket that no "other" user may connect to (mode 0660: root, the owner and the web
// server's group) is trusted; a peer on a 0666 socket, which any local user can reach, is
// not, unless trusted_proxies names unix.
func TestUnixPeerTrust(t *testing.T) {
	forged := "GET /h HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\nX-Real-Ip: 6.6.6.6\r\n\r\n"
	tests := []struct {
		name      string
		mode      os.FileMode
		trustUnix bool
		trusted   bool
	}{
		{"0660 socket", 0o660, false, true},
		{"0600 socket", 0o600, false, true},
		{"0666 socket", 0o666, false, false},
		{"0664 socket: any bit for others counts", 0o664, false, false},
		{"0666 socket with trusted_proxies: [unix]", 0o666, true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			up := newRecorder(t, "a")
			act := activator.New(&fake.Runtime{Addr: up.ln.Addr().String()}, activator.Policy{Spec: backend.Spec{Name: "a"}, Idle: time.Hour}, activator.Options{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { act.Run(ctx); close(done) }()
			t.Cleanup(func() { cancel(); <-done })
			s, err := New([]Route{{App: act, Hosts: []string{"a.test"}}}, Options{TrustUnix: tt.trustUnix})
			if err != nil {
				t.Fatal(err)
			}
			sock := filepath.Join(t.TempDir(), "front.sock")
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.Chmod(sock, tt.mode); err != nil {
				t.Fatal(err)
			}
			go s.Serve(ln)
			t.Cleanup(func() { s.Shutdown(context.Background()) })

			c, err := net.Dial("unix", sock)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, forged)
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			saw := up.saw()
			if resp.StatusCode != 200 {
				t.Fatalf("status %d", resp.StatusCode)
			}
			if tt.trusted {
				for _, h := range []string{"X-Forwarded-For: 6.6.6.6\r\n", "X-Forwarded-Proto: https\r\n", "X-Forwarded-Host: evil.test\r\n", "X-Real-Ip: 6.6.6.6\r\n"} {
					if !strings.Contains(saw, h) {
						t.Errorf("trusted peer's %q did not reach the app: it saw %q", h, saw)
					}
				}
				return
			}
			if strings.Contains(saw, "6.6.6.6") || strings.Contains(saw, "https") || strings.Contains(saw, "evil") {
				t.Errorf("untrusted unix peer's forged headers reached the app: %q", saw)
			}
			for _, h := range []string{"X-Forwarded-Proto: http\r\n", "X-Forwarded-Host: a.test\r\n"} {
				if !strings.Contains(saw, h) {
					t.Errorf("app saw %q, want %q set by the front door", saw, h)
				}
			}
		})
	}
}

// TestPrivateSocketIsTheFileItself: a link in the socket's place, even to a private
// socket, does not make the front door's socket private.
func TestPrivateSocketIsTheFileItself(t *testing.T) {
	dir := t.TempDir()
	private := filepath.Join(dir, "private.sock")
	ln, err := net.Listen("unix", private)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	os.Chmod(private, 0o600)
	if !privateSocket(private) {
		t.Fatal("a 0600 socket is not private")
	}
	link := filepath.Join(dir, "front.sock")
	if err := os.Symlink(private, link); err != nil {
		t.Fatal(err)
	}
	if privateSocket(link) {
		t.Error("a link to a private socket counts as a private socket")
	}
	if privateSocket("@abstract") || privateSocket(filepath.Join(dir, "missing.sock")) {
		t.Error("an abstract or missing socket counts as private")
	}
}
