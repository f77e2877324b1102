package e2e

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/backend"
)

// The hostile-input half of the reliability suite (RELIABILITY.md): clients that send too
// much, too slowly, or never read, and what a container may reach.

// TestFrontDoorHostileClients: an oversized header gets 431; a slowloris client is cut
// at read_header_timeout, and 500 of them do not slow a real request; a client that never
// reads a 1 GiB answer costs sact no more than the socket buffers.
func TestFrontDoorHostileClients(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "hostile")
	front, adminAddr := freeAddr(t), freeAddr(t)
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\nhttp:\n  listen: [\"tcp:%s\"]\n  read_header_timeout: 1s\n  max_header_bytes: 16k\napps:", adminAddr, front)+
		appConfig(name, freeAddr(t), "")+fmt.Sprintf("    hosts: [%q]\n", name+".test"))
	get := func(hdr string) (int, error) {
		req, _ := http.NewRequest("GET", "http://"+front+"/", nil)
		req.Host = name + ".test"
		if hdr != "" {
			req.Header.Set("X-Big", hdr)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0, err
		}
		defer resp.Body.Close()
		io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, nil
	}
	if code, err := get(""); err != nil || code != 200 {
		t.Fatalf("plain request: %d, %v", code, err)
	}
	if code, err := get(strings.Repeat("x", 64<<10)); err != nil || code != 431 {
		t.Errorf("64 KiB header against max_header_bytes 16k: %d, %v; want 431", code, err)
	}

	// Slowloris: a header that never ends.
	slow := func() (net.Conn, error) {
		c, err := net.Dial("tcp", front)
		if err == nil {
			_, err = fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: %s.test\r\nX-Slow: ", name)
		}
		return c, err
	}
	c, err := slow()
	if err != nil {
		t.Fatal(err)
	}
	began := time.Now()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err = io.ReadAll(c)
	c.Close()
	if took := time.Since(began); err != nil || took > 3*time.Second {
		t.Errorf("slowloris connection: closed after %v (err %v), want about read_header_timeout (1s)", took, err)
	}
	var held []net.Conn
	for range 500 {
		c, err := slow()
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
	}
	began = time.Now()
	if code, err := get(""); err != nil || code != 200 {
		t.Errorf("request among 500 slowloris connections: %d, %v", code, err)
	}
	t.Logf("RELIABILITY 500 slowloris connections open: a real request answered in %v", time.Since(began).Round(time.Millisecond))
	for _, c := range held {
		c.Close()
	}

	// A client that asks for 1 GiB and never reads.
	before := stats(t, adminAddr)
	c, err = net.Dial("tcp", front)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /bytes?n=1073741824 HTTP/1.1\r\nHost: %s.test\r\n\r\n", name)
	time.Sleep(3 * time.Second)
	during := stats(t, adminAddr)
	c.Close()
	t.Logf("RELIABILITY client never reading a 1 GiB answer for 3s: sact RSS %.0f -> %.0f MB", before.rssMB, during.rssMB)
	if during.rssMB > before.rssMB+32 {
		t.Errorf("sact grew %.0f MB for one client that does not read", during.rssMB-before.rssMB)
	}
	if code, err := get(""); err != nil || code != 200 {
		t.Errorf("after the non-reading client: %d, %v", code, err)
	}
	_ = d
}

// TestSilentAndHalfClosedConnections on the L4 relay: connections that send nothing do
// not keep an app (it stops after idle, and sact closes them); a client that half-closes
// after its request still gets the whole answer.
func TestSilentAndHalfClosedConnections(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "silent")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    idle: 2s\n")

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /bytes?n=1000000 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
	c.(*net.TCPConn).CloseWrite()
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	c.Close()
	if err != nil || n != 1000000 {
		t.Errorf("half-closed client got %d bytes, %v; want 1000000", n, err)
	}

	var silent []net.Conn
	for range 50 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		silent = append(silent, c)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 15*time.Second)
	closed := 0
	for _, c := range silent {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
			closed++
		}
		c.Close()
	}
	t.Logf("RELIABILITY 50 silent connections: app stopped after idle, %d of them closed by sact", closed)
	if closed != len(silent) {
		t.Errorf("%d of %d silent connections closed after the idle stop", closed, len(silent))
	}
}

// TestWhatAContainerCanReach: the admin socket is 0660 and refused to other users; a
// handoff container gets sact's binary and a directory holding only its own handoff
// socket, and no container gets the Docker socket or the admin socket.
func TestWhatAContainerCanReach(t *testing.T) {
	needDocker(t)
	needTool(t, "curl")
	needTool(t, "setpriv")
	name, proxied := uniqueName(t, "reach"), uniqueName(t, "reachp")
	tcp, sock, proxiedAddr := freeAddr(t), filepath.Join(t.TempDir(), "app.sock"), freeAddr(t)
	d := startSact(t, handoffConfig(name, tcp, sock, "")+appConfig(proxied, proxiedAddr, ""))
	for _, a := range []string{tcp, proxiedAddr} {
		if _, err := httpGet(a, "/"); err != nil {
			t.Fatal(err)
		}
	}

	adminSock := filepath.Join(d.runDir, "admin.sock")
	st, err := os.Stat(adminSock)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o660 {
		t.Errorf("admin socket mode %v, want 0660", st.Mode().Perm())
	}
	os.Chmod(d.runDir, 0o755) // so that only the socket's own mode keeps nobody out
	curl := []string{"curl", "-sS", "--max-time", "5", "--unix-socket", adminSock, "http://sact/api/apps"}
	if out, err := exec.Command(curl[0], curl[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("the same request as root: %v, %s", err, out)
	}
	out, err := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups"}, curl...)...).CombinedOutput()
	if err == nil {
		t.Errorf("user nobody reached the admin API: %s", out)
	}
	t.Logf("RELIABILITY admin socket %v; user nobody: %s", st.Mode().Perm(), strings.TrimSpace(string(out)))

	for _, app := range []string{name, proxied} {
		mounts := docker(t, "inspect", "-f", "{{range .Mounts}}{{.Source}} -> {{.Destination}}{{println}}{{end}}", "sact-"+app)
		for _, bad := range []string{"docker.sock", "admin.sock", d.runDir + "/admin"} {
			if strings.Contains(mounts, bad) {
				t.Errorf("container of %s has %s mounted:\n%s", app, bad, mounts)
			}
		}
		t.Logf("RELIABILITY mounts of %s: %q", app, strings.TrimSpace(mounts))
	}
	ents, err := os.ReadDir(filepath.Join(d.runDir, "handoff", name))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{backend.ShimSocket}) {
		t.Errorf("the handoff directory a container sees holds %v, want only %s", names, backend.ShimSocket)
	}
}

// TestRefusedConnectionsAreCounted: connections beyond max_waiting are refused, and each
// one is in the log and in sact_connections_failed_total with its reason.
func TestRefusedConnectionsAreCounted(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "counted")
	addr, adminAddr := freeAddr(t), freeAddr(t)
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\napps:", adminAddr)+appConfig(name, addr, `, READY_DELAY: "3s"`)+"    max_waiting: 2\n")
	const n = 10
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for range n {
		wg.Go(func() {
			if _, err := httpGet(addr, "/"); err != nil {
				mu.Lock()
				failed++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	counted := metrics(t, adminAddr, "sact_connections_failed_total", `app="`+name+`"`, `reason="queue_full"`)
	logged := d.awaitCount(`"msg":"connection refused"&&`+name, failed)
	t.Logf("RELIABILITY %d connections at once, max_waiting 2: %d refused, %v counted in metrics, %d logged", n, failed, counted, logged)
	if failed != n-2 {
		t.Errorf("%d refused, want %d", failed, n-2)
	}
	if int(counted) != failed || logged != failed {
		t.Errorf("%d refused but %v counted and %d logged", failed, counted, logged)
	}
}
