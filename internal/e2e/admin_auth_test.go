package e2e

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
)

// adminDo sends one request to admin.listen and returns the status and body. header holds
// extra headers ("Host" sets the request's Host).
func adminDo(t *testing.T, c *http.Client, method, adminAddr, path string, header map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+adminAddr+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	if c == nil {
		c = http.DefaultClient
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// asNobody runs a command as uid/gid 65534 with no supplementary groups: a local user who
// is neither root nor in admin.group.
func asNobody(t *testing.T, args ...string) (string, error) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a command as another user")
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534, Groups: []uint32{}}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var tokenMeta = regexp.MustCompile(`name="sact-token" content="([0-9a-f]+)"`)

// TestAdminHTTPRefusesStrangers is issue 11 case 2 as an attacker tries it: a page served
// under another name (DNS rebinding) reads the dashboard, a client with no credential
// stops an app with whatever the dashboard hands out, reads an app's logs, and a local
// user outside admin.group stops an app through admin.listen.
func TestAdminHTTPRefusesStrangers(t *testing.T) {
	needDocker(t)
	web := uniqueName(t, "authweb")
	adminAddr, webAddr := freeAddr(t), freeAddr(t)
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\napps:", adminAddr)+appConfig(web, webAddr, ""))
	if out, err := sactCLI(t, d, "start", web); err != nil {
		t.Fatalf("sact start over the admin socket: %v\n%s", err, out)
	}
	_, port, _ := strings.Cut(adminAddr, ":")

	// DNS rebinding: evil.example resolves to 127.0.0.1; the browser sends its own name.
	for _, host := range []string{"evil.example", "evil.example:" + port} {
		code, body := adminDo(t, nil, "GET", adminAddr, "/", map[string]string{"Host": host})
		if code == 200 || tokenMeta.MatchString(body) {
			t.Errorf("GET / with Host %s: %d, token handed out %v; want it refused", host, code, tokenMeta.MatchString(body))
		} else if !strings.Contains(body, "admin.hosts") {
			t.Errorf("GET / with Host %s: %d %q; want a reason naming admin.hosts", host, code, body)
		}
	}
	if n := d.awaitCount(`"admin request refused"`, 2); n < 2 {
		t.Errorf("%d refused requests logged, want 2", n)
	}

	// A client without the token file's credential takes whatever the dashboard gives it.
	stopWith := func(header map[string]string) int {
		_, page := adminDo(t, nil, "GET", adminAddr, "/", nil)
		if m := tokenMeta.FindStringSubmatch(page); m != nil {
			header["X-Sact-Token"] = m[1]
		}
		code, _ := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/stop", header)
		return code
	}
	if code := stopWith(map[string]string{}); code == 200 || containerState(t, web) != "running" {
		t.Fatalf("stop over HTTP without a credential: %d, container %s; want 401 and still running", code, containerState(t, web))
	}
	if code, body := adminDo(t, nil, "GET", adminAddr, "/api/apps/"+web+"/logs", nil); code != 401 {
		t.Errorf("logs over HTTP without a credential: %d %.80q; want 401", code, body)
	}

	// A local user outside admin.group, on admin.listen: status is readable on loopback,
	// changes are not.
	out, err := asNobody(t, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "http://"+adminAddr+"/api/apps")
	if err != nil || out != "200" {
		t.Errorf("status on loopback as nobody: %v %s; want 200", err, out)
	}
	page, _ := asNobody(t, "curl", "-sS", "--max-time", "5", "http://"+adminAddr+"/")
	script := "curl -sS --max-time 5 -o /dev/null -w %{http_code} -X POST -H \"X-Sact-Token: $1\" http://" + adminAddr + "/api/apps/" + web + "/stop"
	token := ""
	if m := tokenMeta.FindStringSubmatch(page); m != nil {
		token = m[1]
	}
	out, err = asNobody(t, "sh", "-c", script, "sh", token)
	if out == "200" || containerState(t, web) != "running" {
		t.Fatalf("user nobody stopped %s through admin.listen: %v %s, container %s", web, err, out, containerState(t, web))
	}
	t.Logf("RELIABILITY admin.listen, user nobody: status 200, stop %s, container still %s", out, containerState(t, web))

	// The same local user floods admin.listen with refused requests: the journal gets a
	// burst of lines, not one per request (journald would then drop sact's other lines),
	// and every one is counted.
	before, began := d.countLog(`"admin request refused"`), time.Now()
	flood, err := asNobody(t, "sh", "-c", `for i in $(seq 300); do echo "url = http://`+adminAddr+`/api/apps/`+web+`/stop"; done |
		curl -sS --max-time 30 -X POST -o /dev/null -w "%{http_code}\n" --config - | sort | uniq -c`)
	if err != nil || !strings.Contains(flood, "300 401") {
		t.Fatalf("300 stops without a credential as nobody: %v %q; want 300 answered 401", err, flood)
	}
	// 20 lines a 10 s window; the flood may straddle two, or more on a slow machine.
	if n, most := d.countLog(`"admin request refused"`)-before, 20*(2+int(time.Since(began)/(10*time.Second))); n > most {
		t.Errorf("300 refused requests made %d log lines, want at most %d", n, most)
	}
	if code, body := adminDo(t, nil, "GET", adminAddr, "/metrics", nil); code != 200 || !regexp.MustCompile(`sact_admin_requests_refused_total\{reason="no credential"\} 3\d\d\b`).MatchString(body) {
		t.Errorf("/metrics after the flood: %d, want sact_admin_requests_refused_total{reason=\"no credential\"} over 300", code)
	}
	if body, err := httpGet(webAddr, "/"); err != nil || !strings.Contains(body, web) {
		t.Errorf("%s during the flood's aftermath: %q, %v", web, body, err)
	}

	// The CLI over the admin socket needs nothing new.
	if out, err := sactCLI(t, d, "stop", web); err != nil || !strings.Contains(out, "stopped") {
		t.Errorf("sact stop over the admin socket: %v\n%s", err, out)
	}
}

// TestAdminHTTPTokenFile: the credential is a file only root and admin.group can read;
// with it (bearer, basic auth, or a dashboard session) changes work, and a page from
// another origin still cannot make them.
func TestAdminHTTPTokenFile(t *testing.T) {
	needDocker(t)
	web := uniqueName(t, "tokweb")
	adminAddr := freeAddr(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // so that only the file's own mode keeps user nobody out
	tokenFile := filepath.Join(dir, "admin.token")
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\n  group: \"4242\"\n  hosts: [dash.example.com]\n  token_file: %s\napps:", adminAddr, tokenFile)+
		appConfig(web, freeAddr(t), ""))

	st, err := os.Lstat(tokenFile)
	if err != nil {
		t.Fatalf("token file: %v", err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o640 || !st.Mode().IsRegular() || sys.Uid != 0 || sys.Gid != 4242 {
		t.Errorf("token file %v uid %d gid %d; want a regular file 0640 root:4242", st.Mode(), sys.Uid, sys.Gid)
	}
	raw, _ := os.ReadFile(tokenFile)
	token := strings.TrimSpace(string(raw))
	if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
		t.Fatalf("token %q: want 64 hex digits", token)
	}
	if out, err := asNobody(t, "cat", tokenFile); err == nil {
		t.Errorf("user nobody read the token file: %s", out)
	}

	bearer := map[string]string{"Authorization": "Bearer " + token}
	if code, body := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/start", map[string]string{"Authorization": "Bearer wrong"}); code != 401 {
		t.Errorf("start with a wrong bearer token: %d %s", code, body)
	}
	if code, body := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/start", bearer); code != 200 || containerState(t, web) != "running" {
		t.Fatalf("start with the bearer token: %d %s, container %s", code, body, containerState(t, web))
	}
	if code, body := adminDo(t, nil, "GET", adminAddr, "/api/apps/"+web+"/logs", bearer); code != 200 || !strings.Contains(body, "listening on") {
		t.Errorf("logs with the bearer token: %d %.200q", code, body)
	}
	// A cross-site page cannot use it either, even if a browser had it.
	evil := map[string]string{"Authorization": "Bearer " + token, "Origin": "http://evil.example"}
	if code, body := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/stop", evil); code != 403 || containerState(t, web) != "running" {
		t.Errorf("stop with Origin evil.example: %d %s, container %s; want 403", code, body, containerState(t, web))
	}
	// curl -u anything:TOKEN
	req, _ := http.NewRequest("POST", "http://"+adminAddr+"/api/apps/"+web+"/stop", nil)
	req.SetBasicAuth("admin", token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || containerState(t, web) != "exited" {
		t.Errorf("stop with basic auth: %d, container %s", resp.StatusCode, containerState(t, web))
	}
	// Root with the token can, user nobody with a guess cannot, through admin.listen.
	out, _ := asNobody(t, "curl", "-sS", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "-H", "Authorization: Bearer "+strings.Repeat("0", 64), "http://"+adminAddr+"/api/apps/"+web+"/start")
	if out != "401" || containerState(t, web) == "running" {
		t.Errorf("user nobody with a guessed token: %s, container %s; want 401", out, containerState(t, web))
	}

	// admin.hosts: the dashboard is served under that name (a reverse proxy's), not others.
	if code, body := adminDo(t, nil, "GET", adminAddr, "/", map[string]string{"Host": "dash.example.com"}); code != 200 || !strings.Contains(body, tokenFile) {
		t.Errorf("login page under an admin.hosts name: %d %.200q; want 200 naming %s", code, body, tokenFile)
	}
	if code, _ := adminDo(t, nil, "GET", adminAddr, "/", map[string]string{"Host": "other.example.com"}); code == 200 {
		t.Errorf("GET / under a name not in admin.hosts: 200")
	}

	// The dashboard's session: log in with the token, then its buttons work. The page
	// itself holds no secret.
	origin := "http://" + adminAddr
	login := func(tok, from string) (int, string) {
		req, _ := http.NewRequest("POST", origin+"/login", strings.NewReader(url.Values{"token": {tok}}.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Origin", from)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct{ Session string }
		json.NewDecoder(resp.Body).Decode(&out)
		return resp.StatusCode, out.Session
	}
	if code, _ := login(token, "http://evil.example"); code != 403 {
		t.Errorf("login from another origin: %d, want 403", code)
	}
	if code, _ := login("wrong", origin); code != 401 {
		t.Errorf("login with a wrong token: %d, want 401", code)
	}
	code, session := login(token, origin)
	if code != 200 || len(session) != 64 {
		t.Fatalf("login: %d, session %q", code, session)
	}
	if code, page := adminDo(t, nil, "GET", adminAddr, "/", nil); code != 200 || strings.Contains(page, token) || strings.Contains(page, session) {
		t.Errorf("dashboard page: %d, holds the token %v, the session %v", code, strings.Contains(page, token), strings.Contains(page, session))
	}
	if code, body := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/start", map[string]string{"X-Sact-Token": session, "Origin": origin}); code != 200 || containerState(t, web) != "running" {
		t.Errorf("start from the dashboard's session: %d %s, container %s", code, body, containerState(t, web))
	}
	if code, _ := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/stop", map[string]string{"X-Sact-Token": session, "Origin": "http://evil.example"}); code != 403 || containerState(t, web) != "running" {
		t.Errorf("stop with the session from another origin: %d, container %s; want 403", code, containerState(t, web))
	}
	if code, _ := adminDo(t, nil, "POST", adminAddr, "/logout", map[string]string{"X-Sact-Token": session, "Origin": origin}); code != 204 {
		t.Errorf("logout: %d", code)
	}
	if code, _ := adminDo(t, nil, "POST", adminAddr, "/api/apps/"+web+"/stop", map[string]string{"X-Sact-Token": session}); code != 401 || containerState(t, web) != "running" {
		t.Errorf("stop with a session after logout: %d, container %s; want 401", code, containerState(t, web))
	}
	d.stop()

	// A token file others may read is refused, with how to fix it.
	os.Chmod(tokenFile, 0o644)
	cmd := exec.Command(sactBin, "serve", "-c", d.config, "-run-dir", t.TempDir(), "-state-dir", t.TempDir())
	done := make(chan []byte, 1)
	go func() { out, _ := cmd.CombinedOutput(); done <- out }()
	select {
	case out := <-done:
		if cmd.ProcessState.ExitCode() == 0 || !strings.Contains(string(out), "chmod 0640") {
			t.Errorf("sact serve with a token file readable by all: exit %d\n%s", cmd.ProcessState.ExitCode(), out)
		}
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		t.Errorf("sact serve with a token file readable by all kept running")
	}
}
