package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// publicDir is a directory every local user may enter, for sockets that only their own
// mode should guard (t.TempDir() is 0700, which would hide a 0666 socket from them).
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "sfh-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// curlAs runs curl as uid and gid 65534 (nobody, no groups) against the unix socket sock.
// When it fails, its output is that of a second, verbose try, which says why a connect
// failed ("Permission denied").
func curlAs(t *testing.T, sock, url string, hdr ...string) (string, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	run := func(extra ...string) (string, error) {
		args := append([]string{"-sS", "--max-time", "10", "--unix-socket", sock}, extra...)
		for _, h := range hdr {
			args = append(args, "-H", h)
		}
		cmd := exec.Command("curl", append(args, url)...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	out, err := run()
	if err != nil {
		out, _ = run("-v")
	}
	return out, err
}

// echoed is what the test server's /headers saw.
type echoed struct {
	Host   string
	Header map[string][]string
}

func parseEchoed(t *testing.T, body string) echoed {
	t.Helper()
	var h echoed
	if err := json.Unmarshal([]byte(body), &h); err != nil {
		t.Fatalf("/headers answered %q: %v", body, err)
	}
	return h
}

var forgedHeaders = []string{"X-Forwarded-For: 6.6.6.6", "X-Forwarded-Proto: https", "X-Forwarded-Host: evil.test"}

// TestFrontDoorUnixPeersCannotForge is issue 11 case 5: user nobody sends forged
// X-Forwarded-* through the front door's unix socket. With the defaults it cannot
// connect at all (0660, group www-data); when the admin opens the socket to everyone
// (mode 0666) it connects, but its forged headers no longer reach the app, and only
// trusted_proxies: [unix] brings trust back. Root through a 0660 socket stays trusted
// (nginx's case).
func TestFrontDoorUnixPeersCannotForge(t *testing.T) {
	needDocker(t)
	if _, err := exec.LookPath("curl"); err != nil {
		t.Skip("needs curl")
	}
	name := uniqueName(t, "fforge")
	dir := publicDir(t)
	def, open, openTrusted := filepath.Join(dir, "def.sock"), filepath.Join(dir, "open.sock"), filepath.Join(dir, "opent.sock")
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"unix:%s\", {address: \"unix:%s\", mode: \"0666\"}]\napps:", def, open)+
		frontApp(name, `["site.test"]`, "", ""))

	// The default socket: 0660, group www-data where it exists.
	fi, err := os.Stat(def)
	if err != nil {
		t.Fatal(err)
	}
	if perm := fi.Mode().Perm(); perm&0o007 != 0 {
		t.Errorf("front door socket with default settings has mode %04o: any local user can connect", perm)
	}
	if gid := fi.Sys().(*syscall.Stat_t).Gid; gid != 33 && gid != 0 {
		t.Errorf("front door socket's group is %d, want www-data (33) or root's", gid)
	}
	out, err := curlAs(t, def, "http://site.test/headers", forgedHeaders...)
	if err == nil {
		if h := parseEchoed(t, out); strings.Contains(fmt.Sprint(h.Header), "6.6.6.6") || strings.Contains(fmt.Sprint(h.Header), "https") {
			t.Errorf("user nobody forged X-Forwarded-* through the default socket: the app saw %v", h.Header)
		} else {
			t.Errorf("user nobody connected to the default socket (%04o): %s", fi.Mode().Perm(), out)
		}
	} else if !strings.Contains(out, "Permission denied") {
		t.Errorf("user nobody on the default socket: %v %s, want permission denied", err, out)
	}

	// Root through the 0660 socket (nginx running as root or www-data): trusted.
	r := do(t, frontClient(def), "GET", "http://site.test/headers", map[string]string{"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
	h := parseEchoed(t, r.body)
	if fmt.Sprint(h.Header["X-Forwarded-For"]) != "[203.0.113.7]" || fmt.Sprint(h.Header["X-Forwarded-Proto"]) != "[https]" {
		t.Errorf("root through the 0660 socket is not trusted: the app saw %v", h.Header)
	}

	// The admin's 0666 socket: nobody connects, and its forged headers are replaced.
	out, err = curlAs(t, open, "http://site.test/headers", forgedHeaders...)
	if err != nil {
		t.Fatalf("user nobody on a 0666 socket: %v %s", err, out)
	}
	h = parseEchoed(t, out)
	if s := fmt.Sprint(h.Header); strings.Contains(s, "6.6.6.6") || strings.Contains(s, "https") || strings.Contains(s, "evil") {
		t.Errorf("user nobody forged X-Forwarded-* through a 0666 socket: the app saw %v", h.Header)
	}
	if fmt.Sprint(h.Header["X-Forwarded-Proto"]) != "[http]" || fmt.Sprint(h.Header["X-Forwarded-Host"]) != "[site.test]" {
		t.Errorf("untrusted unix peer: the app saw %v, want X-Forwarded-Proto http and -Host site.test set by sact", h.Header)
	}
	d.stop()

	// trusted_proxies: [unix] is the admin saying every unix peer is a proxy.
	startSact(t, fmt.Sprintf("http:\n  listen: [{address: \"unix:%s\", mode: \"0666\"}]\n  trusted_proxies: [unix]\napps:", openTrusted)+
		frontApp(name, `["site.test"]`, "", ""))
	out, err = curlAs(t, openTrusted, "http://site.test/headers", forgedHeaders...)
	if err != nil {
		t.Fatalf("user nobody on a 0666 socket: %v %s", err, out)
	}
	if h := parseEchoed(t, out); fmt.Sprint(h.Header["X-Forwarded-For"]) != "[6.6.6.6]" {
		t.Errorf("with trusted_proxies: [unix] the peer's X-Forwarded-For did not reach the app: %v", h.Header)
	}
}

// adminApp reads one app's status from the admin API over the daemon's unix socket.
func adminApp(t *testing.T, d *daemon, name string) (waiting int, state string) {
	t.Helper()
	c := frontClient(filepath.Join(d.runDir, "admin.sock"))
	c.Timeout = 5 * time.Second
	resp, err := c.Get("http://sact/api/apps/" + name)
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer resp.Body.Close()
	var st struct {
		Waiting int    `json:"waiting"`
		State   string `json:"state"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatalf("admin API: %v", err)
	}
	return st.Waiting, st.State
}

// adminMetrics reads /metrics from the admin API over the daemon's unix socket.
func adminMetrics(t *testing.T, d *daemon) string {
	t.Helper()
	resp, err := frontClient(filepath.Join(d.runDir, "admin.sock")).Get("http://sact/metrics")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// awaitWaiting polls the app's waiting count until it is want, and returns how long that
// took; ok is false if it was not within limit.
func awaitWaiting(t *testing.T, d *daemon, name string, want int, limit time.Duration) (took time.Duration, got int, ok bool) {
	t.Helper()
	began := time.Now()
	for {
		got, _ = adminApp(t, d, name)
		if got == want {
			return time.Since(began), got, true
		}
		if time.Since(began) > limit {
			return time.Since(began), got, false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestGoneClientsGiveTheirSlotBack is issue 11 case 6: during a slow cold start (4s),
// clients that go away must not keep holding the app's max_waiting (5) slots. Through the
// front door, 25 browsers get the waking page and leave, then an API client is served;
// 5 POSTs whose clients leave give their slots back too; through the relay, 25 clients
// connect and hang up, the waiting count drops to 0 within
// ~200 ms of each batch's hang-up, and a real client is served.
func TestGoneClientsGiveTheirSlotBack(t *testing.T) {
	needDocker(t)
	web, tcp := uniqueName(t, "fslots"), uniqueName(t, "rslots")
	front, relay := freeAddr(t), freeAddr(t)
	slow := "    max_waiting: 5\n    start_timeout: 30s\n"
	d := startSact(t, fmt.Sprintf("http:\n  listen: [\"tcp:%s\"]\napps:", front)+
		frontApp(web, `["slots.test"]`, slow+"    waking_page: 200ms\n", `, READY_DELAY: "4s"`)+
		appConfig(tcp, relay, `, READY_DELAY: "4s"`)+slow)

	t.Run("front door", func(t *testing.T) {
		began := time.Now()
		pages, full := 0, 0
		for batch := range 5 {
			var mu sync.Mutex
			var wg sync.WaitGroup
			for range 5 {
				wg.Go(func() {
					status, body, err := browserGet("http://slots.test/", front)
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err != nil:
						t.Errorf("browser GET: %v", err)
					case status == 503 && strings.Contains(body, "Starting"):
						pages++
					case status == 503 && strings.Contains(body, "too many"):
						full++
					default:
						t.Errorf("browser GET during the start: %d %q", status, body)
					}
				})
			}
			wg.Wait()
			took, got, ok := awaitWaiting(t, d, web, 0, 300*time.Millisecond)
			if !ok {
				t.Errorf("after batch %d of 5 waking pages, %d requests still wait for the start (%s later)", batch+1, got, took)
				continue
			}
			t.Logf("batch %d: waiting 0 %s after the waking pages", batch+1, took.Round(time.Millisecond))
		}
		_, state := adminApp(t, d, web)
		t.Logf("RELIABILITY front door, max_waiting 5: 25 browsers got %d waking pages, %d queue full, in %s; app still %s", pages, full, time.Since(began).Round(time.Millisecond), state)
		if pages != 25 {
			t.Errorf("%d of 25 browsers got the waking page, %d got 503 queue full", pages, full)
		}
		// API clients that send a body, which nobody reads during the start, and leave.
		var posts []net.Conn
		for range 5 {
			c := dialTCP(t, front)
			fmt.Fprint(c, "POST /echo HTTP/1.1\r\nHost: slots.test\r\nContent-Length: 3\r\n\r\nabc")
			posts = append(posts, c)
		}
		if took, got, ok := awaitWaiting(t, d, web, 5, 2*time.Second); !ok {
			t.Fatalf("%d POSTs wait, want 5 (after %s)", got, took)
		}
		for _, c := range posts {
			c.Close()
		}
		if took, got, ok := awaitWaiting(t, d, web, 0, 300*time.Millisecond); !ok {
			t.Errorf("%d POSTs still wait %s after their clients hung up", got, took)
		} else {
			t.Logf("RELIABILITY front door: 5 POSTs whose clients left: waiting 5 -> 0 %s after the hang-ups", took.Round(time.Millisecond))
		}
		r := do(t, frontClient(front), "GET", "http://slots.test/", nil)
		if r.status != 200 || !strings.Contains(r.body, "hello from "+web) {
			t.Errorf("API client behind 25 waking pages: %d %q, want the app's answer", r.status, r.body)
		}
	})

	t.Run("relay", func(t *testing.T) {
		began := time.Now()
		var worst time.Duration
		for batch := range 5 {
			var conns []net.Conn
			for range 5 {
				conns = append(conns, dialTCP(t, relay))
			}
			if took, got, ok := awaitWaiting(t, d, tcp, 5, 2*time.Second); !ok {
				t.Fatalf("batch %d: %d connections wait, want 5 (after %s)", batch+1, got, took)
			}
			for _, c := range conns {
				c.Close()
			}
			took, got, ok := awaitWaiting(t, d, tcp, 0, time.Second)
			if !ok {
				t.Fatalf("batch %d: %d connections still wait %s after their clients hung up", batch+1, got, took)
			}
			worst = max(worst, took)
			t.Logf("batch %d: waiting 5 -> 0 %s after the hang-ups", batch+1, took.Round(time.Millisecond))
		}
		if worst > 300*time.Millisecond {
			t.Errorf("slots given back up to %s after the hang-ups, want about 200 ms", worst)
		}
		_, state := adminApp(t, d, tcp)
		t.Logf("RELIABILITY relay, max_waiting 5: 25 clients hung up in %s, each batch's 5 slots back within %s; app still %s", time.Since(began).Round(time.Millisecond), worst.Round(time.Millisecond), state)
		if state == "running" {
			t.Log("the start ended before the real client came: the test proves less than it should")
		}
		c := dialTCP(t, relay)
		c.SetDeadline(time.Now().Add(30 * time.Second))
		fmt.Fprintf(c, "GET / HTTP/1.0\r\nHost: x\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(c), nil)
		if err != nil {
			t.Fatalf("real client after 25 hang-ups: %v", err)
		}
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != 200 || !strings.Contains(string(b), "hello from "+tcp) {
			t.Errorf("real client after 25 hang-ups: %d %q", resp.StatusCode, b)
		}
		if n := d.awaitCount(`"msg":"client gone while waiting for start"&&`+tcp+`&&"reason":"client_gone"`, 25); n != 25 {
			t.Errorf("%d log lines for 25 clients gone while waiting, want one each", n)
		}
		metric := fmt.Sprintf(`sact_connections_failed_total{app=%q,reason="client_gone"} 25`, tcp)
		if m := adminMetrics(t, d); !strings.Contains(m, metric+"\n") {
			t.Errorf("metrics lack %s", metric)
		}
	})
}

// browserGet is one browser's GET on its own connection, closed after the answer.
func browserGet(url, front string) (int, string, error) {
	c := frontClient(front)
	c.Transport.(*http.Transport).DisableKeepAlives = true
	c.Timeout = 30 * time.Second
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/html,application/xhtml+xml")
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), nil
}
