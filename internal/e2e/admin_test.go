package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"image/png"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
)

// sactCLI runs a client command of the built binary against a config.
func sactCLI(t *testing.T, d *daemon, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(sactBin, append([]string{args[0], "-c", d.config, "-run-dir", d.runDir}, args[1:]...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestAdminCLIAndMetrics(t *testing.T) {
	needDocker(t)
	web, api := uniqueName(t, "aweb"), uniqueName(t, "aapi")
	adminAddr, webAddr := freeAddr(t), freeAddr(t)
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\napps:", adminAddr)+appConfig(web, webAddr, "")+appConfig(api, freeAddr(t), ""))

	out, err := sactCLI(t, d, "status")
	if err != nil || !strings.Contains(out, "APP") || !strings.Contains(out, web) || !strings.Contains(out, "stopped") {
		t.Fatalf("sact status: %v\n%s", err, out)
	}
	if out, err := sactCLI(t, d, "start", web); err != nil || !strings.Contains(out, "running") {
		t.Fatalf("sact start: %v\n%s", err, out)
	}
	if containerState(t, web) != "running" {
		t.Fatalf("sact start did not start the container")
	}
	out, _ = sactCLI(t, d, "status")
	for _, line := range strings.Split(out, "\n") {
		if strings.HasPrefix(line, web) && !strings.Contains(line, "running") {
			t.Errorf("status line after start: %q", line)
		}
	}
	if out, err := sactCLI(t, d, "pause", web); err != nil || !strings.Contains(out, "paused") || containerState(t, web) != "paused" {
		t.Errorf("sact pause: %v, container %s\n%s", err, containerState(t, web), out)
	}
	if _, err := httpGet(webAddr, "/"); err != nil || containerState(t, web) != "running" {
		t.Errorf("a request to a paused app: %v, container %s; want it thawed and served", err, containerState(t, web))
	}
	if out, err := sactCLI(t, d, "logs", web); err != nil || !strings.Contains(out, "listening on") {
		t.Errorf("sact logs: %v\n%s", err, out)
	}
	if out, err := sactCLI(t, d, "start", "nope"); err == nil || !strings.Contains(out, "no app named") {
		t.Errorf("sact start of an unknown app: %v\n%s", err, out)
	}

	// Metrics over HTTP.
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		fmt.Sprintf(`sact_cold_starts_total{app=%q} 1`, web),
		fmt.Sprintf(`sact_app_state{app=%q,state="running"} 1`, web),
		fmt.Sprintf(`sact_app_state{app=%q,state="stopped"} 1`, api),
		fmt.Sprintf(`sact_start_duration_seconds_count{app=%q,outcome="ok"} 1`, web),
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// Changes over HTTP need the admin token (admin_auth_test.go has the rest).
	resp, err = http.Post("http://"+adminAddr+"/api/apps/"+web+"/stop", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 401 || containerState(t, web) != "running" {
		t.Errorf("stop over HTTP without a token: %d, container %s; want 401 and still running", resp.StatusCode, containerState(t, web))
	}

	if out, err := sactCLI(t, d, "stop", web); err != nil || !strings.Contains(out, "stopped") {
		t.Fatalf("sact stop: %v\n%s", err, out)
	}
	var st struct {
		State      string `json:"state"`
		StopReason string `json:"stop_reason"`
	}
	out, _ = sactCLI(t, d, "status", "-json")
	var list struct{ Apps []json.RawMessage }
	json.Unmarshal([]byte(out), &list)
	for _, raw := range list.Apps {
		if strings.Contains(string(raw), `"name": "`+web+`"`) {
			json.Unmarshal(raw, &st)
		}
	}
	if st.State != "stopped" || st.StopReason != "manual" {
		t.Errorf("after sact stop: %+v, want stopped for reason manual", st)
	}

	// Last activity outlives a restart of sact (the dashboard's "dead for 90 days").
	d.stop()
	restarted := time.Now()
	d = startSactFile(t, d.config)
	out, _ = sactCLI(t, d, "status", "-json")
	var again struct {
		Apps []struct {
			Name         string     `json:"name"`
			LastActivity *time.Time `json:"last_activity"`
		}
	}
	json.Unmarshal([]byte(out), &again)
	for _, a := range again.Apps {
		if a.Name == web && (a.LastActivity == nil || !a.LastActivity.Before(restarted)) {
			t.Errorf("after a restart, %s's last activity is %v; want the one before the restart", web, a.LastActivity)
		}
		if a.Name == api && a.LastActivity != nil {
			t.Errorf("an app never used has last activity %v", a.LastActivity)
		}
	}
}

// The dashboard in headless Chromium: the login with the token file's token, the table,
// its start button, and a screenshot.
func TestDashboardInChromium(t *testing.T) {
	needDocker(t)
	browser := needTool(t, "chromium", "chromium-browser", "google-chrome")
	name := uniqueName(t, "dash")
	adminAddr := freeAddr(t)
	d := startSact(t, fmt.Sprintf("admin:\n  listen: %q\napps:", adminAddr)+appConfig(name, freeAddr(t), ""))
	token, err := os.ReadFile(filepath.Join(d.runDir, "state", "admin.token"))
	if err != nil {
		t.Fatalf("the admin token: %v", err)
	}

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browser), chromedp.NoSandbox, chromedp.Headless, chromedp.WindowSize(1200, 500))
	actx, cancel := chromedp.NewExecAllocator(context.Background(), opts...)
	defer cancel()
	ctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	ctx, cancel = context.WithTimeout(ctx, 90*time.Second)
	defer cancel()

	row := fmt.Sprintf(`tr[data-app=%q]`, name)
	step := func(what string, err error) {
		t.Helper()
		if err != nil {
			t.Fatalf("dashboard: %s: %v", what, err)
		}
	}
	_, err = chromedp.Run(ctx, chromedp.Navigate("http://"+adminAddr+"/"))
	step("navigate", err)
	_, err = chromedp.Run(ctx, chromedp.WaitVisible(chromedp.CSS("#login #token")))
	step("the login form", err)
	hint, err := chromedp.Run(ctx, chromedp.Text(chromedp.CSS("#login p")))
	step("the login hint", err)
	if !strings.Contains(hint, "sudo cat "+filepath.Join(d.runDir, "state", "admin.token")) {
		t.Errorf("login hint %q does not say where the token is", hint)
	}
	loginShot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	step("login screenshot", err)
	_, err = chromedp.Run(ctx, chromedp.SendKeys(chromedp.CSS("#token"), "wrong"))
	step("typing a wrong token", err)
	_, err = chromedp.Run(ctx, chromedp.Click(chromedp.CSS("#login button")))
	step("log in with it", err)
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("login-err").textContent.includes("401")`))
	step("the refusal of a wrong token", err)
	_, err = chromedp.Run(ctx, chromedp.SetValue(chromedp.CSS("#token"), strings.TrimSpace(string(token))))
	step("pasting the token", err)
	_, err = chromedp.Run(ctx, chromedp.Click(chromedp.CSS("#login button")))
	step("log in", err)
	// Before the login's answer the page shows the table read-only (loopback may read),
	// and a click on start then asks to log in: wait for the session.
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](`document.getElementById("login").hidden && !document.getElementById("logout").hidden`))
	step("logged in", err)
	// The table is redrawn whenever an event arrives (live updates): a node found by one
	// step may be gone at the next, so each step finds its element anew, in the page.
	q := func(sel string) string { return fmt.Sprintf("document.querySelector(%q)", sel) }
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](q(row)+" !== null"))
	step("the app's row", err)
	stateBefore, err := chromedp.Run(ctx, chromedp.Evaluate[string](q(row+" .state")+".textContent"))
	step("state", err)
	_, err = chromedp.Run(ctx, chromedp.Evaluate[bool]("("+q(row+" button")+".click(), true)"))
	step("start button", err)
	_, err = chromedp.Run(ctx, chromedp.Poll[bool](q(row+" .state.running")+" !== null"))
	step("running after start", err)
	stateAfter, err := chromedp.Run(ctx, chromedp.Evaluate[string](q(row+" .state")+".textContent"))
	step("state after", err)
	summary, err := chromedp.Run(ctx, chromedp.Evaluate[string](q("#summary")+".textContent"))
	step("summary", err)
	shot, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	step("screenshot", err)
	if stateBefore != "stopped" || stateAfter != "running" || containerState(t, name) != "running" {
		t.Errorf("dashboard: state %q, after start button %q, container %s", stateBefore, stateAfter, containerState(t, name))
	}
	if !strings.Contains(summary, "1 running") || !strings.Contains(summary, "no traffic for 30 days") {
		t.Errorf("summary %q", summary)
	}
	img, err := png.Decode(bytes.NewReader(shot))
	if err != nil || img.Bounds().Dx() < 800 {
		t.Fatalf("screenshot: %v", err)
	}
	dir := os.Getenv("SACT_ARTIFACTS")
	if dir == "" {
		dir = t.TempDir()
	}
	path := filepath.Join(dir, "dashboard.png")
	os.WriteFile(path, shot, 0o644)
	os.WriteFile(filepath.Join(dir, "dashboard-login.png"), loginShot, 0o644)
	t.Logf("dashboard screenshot: %s (%dx%d), login page dashboard-login.png", path, img.Bounds().Dx(), img.Bounds().Dy())
}
