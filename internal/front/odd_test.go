package front

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/activator"
	"github.com/sact-project/sact/internal/backend"
	"github.com/sact-project/sact/internal/backend/fake"
)

// recorder is a real upstream that keeps every byte its clients sent it.
type recorder struct {
	name string
	ln   net.Listener
	mu   sync.Mutex
	raw  bytes.Buffer
}

func newRecorder(t *testing.T, name string) *recorder {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r := &recorder{name: name, ln: ln}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%s saw %s %s %q", name, req.Method, req.URL.RequestURI(), body)
	})}
	go srv.Serve(teeListener{ln, r})
	t.Cleanup(func() { srv.Close() })
	return r
}

// saw returns what the upstream has been sent so far.
func (r *recorder) saw() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.raw.String()
}

type teeListener struct {
	net.Listener
	r *recorder
}

func (l teeListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return teeConn{c, l.r}, nil
}

type teeConn struct {
	net.Conn
	r *recorder
}

func (c teeConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.r.mu.Lock()
	c.r.raw.Write(p[:n])
	c.r.mu.Unlock()
	return n, err
}

// recordedFront is a front door on a real listener with two apps, a.test and b.test, whose
// upstreams record what they are sent.
func recordedFront(t *testing.T) (addr string, a, b *recorder) {
	t.Helper()
	a, b = newRecorder(t, "a"), newRecorder(t, "b")
	var routes []Route
	for _, r := range []*recorder{a, b} {
		act := activator.New(&fake.Runtime{Addr: r.ln.Addr().String()}, activator.Policy{Spec: backend.Spec{Name: r.name}, Idle: time.Hour}, activator.Options{})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { act.Run(ctx); close(done) }()
		t.Cleanup(func() { cancel(); <-done })
		routes = append(routes, Route{App: act, Hosts: []string{r.name + ".test"}})
	}
	s, err := New(routes, Options{})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve(ln)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return ln.Addr().String(), a, b
}

// rawRequest writes raw to a new connection to addr and reads one response.
func rawRequest(t *testing.T, addr, raw string) (status int, body string) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestOddRequests sends malformed and ambiguous requests as raw bytes and checks what the
// client gets and what each app's upstream was sent: never a second app, never a framing
// the upstream could read differently from the front door. Several of these are refused
// by net/http's server before the front door sees them; the test pins that down.
func TestOddRequests(t *testing.T) {
	tests := []struct {
		name   string
		raw    string
		status int
		// What a's and b's upstreams must and must not have been sent ("" in wantA/wantB:
		// nothing at all).
		wantA, wantB []string
		lackA        []string
		anyB         bool // b may or may not have been sent something
	}{
		{
			name:   "absolute-form authority wins over Host (RFC 9112 3.2.2)",
			raw:    "GET http://b.test/x HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 200,
			wantB:  []string{"GET /x HTTP/1.1\r\n", "Host: b.test\r\n", "X-Forwarded-Host: b.test\r\n"},
		},
		{
			name:   "absolute-form naming no app routes nowhere, whatever Host says",
			raw:    "GET http://nope.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 404,
		},
		{
			name:   "absolute-form with an empty authority falls back to Host",
			raw:    "GET http:///y HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 200,
			wantA:  []string{"GET /y HTTP/1.1\r\n", "Host: a.test\r\n"},
		},
		{
			name:   "a path starting with // is a path, not an authority",
			raw:    "GET //b.test/z HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 200,
			wantA:  []string{"GET //b.test/z HTTP/1.1\r\n", "Host: a.test\r\n"},
		},
		{
			name:   "two Host headers",
			raw:    "GET / HTTP/1.1\r\nHost: a.test\r\nHost: b.test\r\n\r\n",
			status: 400,
		},
		{
			name:   "no Host in HTTP/1.1",
			raw:    "GET / HTTP/1.1\r\n\r\n",
			status: 400,
		},
		{
			name:   "Transfer-Encoding and Content-Length: the upstream sees chunked only",
			raw:    "POST /te HTTP/1.1\r\nHost: a.test\r\nContent-Length: 30\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			status: 200,
			wantA:  []string{"POST /te HTTP/1.1\r\n", "Transfer-Encoding: chunked\r\n", "3\r\nabc\r\n0\r\n\r\n"},
			lackA:  []string{"Content-Length"},
		},
		{
			name: "a request hidden after a chunked body is the client's next request, framed by the front door",
			raw: "POST /te HTTP/1.1\r\nHost: a.test\r\nContent-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n" +
				"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: b.test\r\n\r\n",
			status: 200,
			wantA:  []string{"POST /te HTTP/1.1\r\n"},
			lackA:  []string{"smuggled", "Content-Length"},
			anyB:   true,
		},
		{
			name:   "two different Content-Lengths",
			raw:    "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
			status: 400,
		},
		{
			name:   "a Content-Length list",
			raw:    "POST / HTTP/1.1\r\nHost: a.test\r\nContent-Length: 3, 3\r\n\r\nabc",
			status: 400,
		},
		{
			name:   "Transfer-Encoding: chunked, identity",
			raw:    "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			status: 501,
		},
		{
			name:   "two Transfer-Encoding fields",
			raw:    "POST / HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
			status: 501,
		},
		{
			// RFC 9112 5.2 lets a proxy reject obs-fold or replace it with spaces before
			// forwarding; net/http's server does the latter, so no upstream ever sees a fold.
			name:   "obs-fold continuation line is unfolded",
			raw:    "GET / HTTP/1.1\r\nHost: a.test\r\nX-Long: one\r\n two\r\n\r\n",
			status: 200,
			wantA:  []string{"X-Long: one two\r\n"},
			lackA:  []string{"\r\n two"},
		},
		{
			name:   "obs-fold in Host",
			raw:    "GET / HTTP/1.1\r\nHost: a.test\r\n b.test\r\n\r\n",
			status: 400,
		},
		{
			name:   "obs-fold on the first header line",
			raw:    "GET / HTTP/1.1\r\n Host: b.test\r\nHost: a.test\r\n\r\n",
			status: 400,
		},
		{
			name:   "space before the colon",
			raw:    "GET / HTTP/1.1\r\nHost : b.test\r\nHost: a.test\r\n\r\n",
			status: 400,
		},
		{
			name:   "invalid header name",
			raw:    "GET / HTTP/1.1\r\nHost: a.test\r\nX(bad): 1\r\n\r\n",
			status: 400,
		},
		{
			name:   "control character in a header value",
			raw:    "GET / HTTP/1.1\r\nHost: a.test\r\nX-A: a\x00b\r\n\r\n",
			status: 400,
		},
		{
			name:   "oversized chunk size",
			raw:    "POST /big HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nabc\r\n0\r\n\r\n",
			status: 400,
			lackA:  []string{"abc"},
		},
		{
			name: "oversized chunk extension",
			raw: "POST /ext HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;" + strings.Repeat("x", 8000) +
				"\r\nabc\r\n0\r\n\r\n",
			status: 400,
			lackA:  []string{"abc"},
		},
		{
			name:   "a small chunk extension is dropped, the body kept",
			raw:    "POST /ext HTTP/1.1\r\nHost: a.test\r\nTransfer-Encoding: chunked\r\n\r\n3;name=val\r\nabc\r\n0\r\n\r\n",
			status: 200,
			wantA:  []string{"3\r\nabc\r\n"},
			lackA:  []string{"name=val"},
		},
		{
			name:   "Upgrade to something other than websocket is not passed on",
			raw:    "GET /h2 HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n",
			status: 200,
			wantA:  []string{"GET /h2 HTTP/1.1\r\n"},
			lackA:  []string{"Upgrade", "h2c", "Http2-Settings"},
		},
		{
			name:   "Upgrade: websocket is passed on",
			raw:    "GET /ws HTTP/1.1\r\nHost: a.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
			status: 200,
			wantA:  []string{"Connection: Upgrade\r\n", "Upgrade: websocket\r\n"},
		},
		{
			name:   "OPTIONS * is answered by net/http itself",
			raw:    "OPTIONS * HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 200,
		},
		{
			name:   "an HTTP/2 preface without TLS reaches no app",
			raw:    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
			status: 400,
		},
		{
			name:   "asterisk-form for anything but OPTIONS",
			raw:    "GET * HTTP/1.1\r\nHost: a.test\r\n\r\n",
			status: 400,
		},
		{
			name:   "absolute-form with no path gets /",
			raw:    "GET http://a.test HTTP/1.1\r\nHost: b.test\r\n\r\n",
			status: 200,
			wantA:  []string{"GET / HTTP/1.1\r\n", "Host: a.test\r\n"},
		},
		{
			name:   "CONNECT is not proxied",
			raw:    "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
			status: 405,
		},
		{
			name:   "headers with underscores from an untrusted client are dropped",
			raw:    "GET /u HTTP/1.1\r\nHost: a.test\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_Ip: 6.6.6.6\r\n\r\n",
			status: 200,
			wantA:  []string{"GET /u HTTP/1.1\r\n", "X-Forwarded-For: 127.0.0.1\r\n"},
			lackA:  []string{"6.6.6.6"},
		},
		{
			name: "forwarding headers from an untrusted client are replaced or dropped",
			raw: "GET /f HTTP/1.1\r\nHost: a.test\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.test\r\n" +
				"X-Forwarded-Ssl: on\r\nX-Forwarded-Port: 443\r\nX-Forwarded-Scheme: https\r\nForwarded: for=6.6.6.6;proto=https\r\n" +
				"X-Real-Ip: 6.6.6.6\r\nClient-Ip: 6.6.6.6\r\nTrue-Client-Ip: 6.6.6.6\r\nFront-End-Https: on\r\nX-Url-Scheme: https\r\n" +
				"X-Original-Url: /admin\r\nX-Rewrite-Url: /admin\r\n\r\n",
			status: 200,
			wantA:  []string{"X-Forwarded-For: 127.0.0.1\r\n", "X-Forwarded-Proto: http\r\n", "X-Forwarded-Host: a.test\r\n"},
			lackA:  []string{"6.6.6.6", "https", "evil", "Ssl", "443", "Front-End", "X-Url", "/admin"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, a, b := recordedFront(t)
			status, body := rawRequest(t, addr, tt.raw)
			if status != tt.status {
				t.Errorf("status %d (%q), want %d", status, body, tt.status)
			}
			check := func(r *recorder, want, lack []string) {
				saw := r.saw()
				if len(want) == 0 && len(lack) == 0 && saw != "" {
					t.Errorf("upstream %s was sent %q, want nothing", r.name, saw)
				}
				for _, w := range want {
					if !strings.Contains(saw, w) {
						t.Errorf("upstream %s was sent %q, want it to hold %q", r.name, saw, w)
					}
				}
				for _, l := range lack {
					if strings.Contains(strings.ToLower(saw), strings.ToLower(l)) {
						t.Errorf("upstream %s was sent %q, holding %q", r.name, saw, l)
					}
				}
			}
			check(a, tt.wantA, tt.lackA)
			if !tt.anyB {
				check(b, tt.wantB, nil)
			}
		})
	}
}
