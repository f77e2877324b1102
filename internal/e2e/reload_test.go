package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// TestReload changes a running sact's config: one app unchanged, one changed, one removed,
// one added and one renamed, with connections open and a client looping all along.
func TestReload(t *testing.T) {
	t.Parallel()
	needDocker(t)
	keep, change, gone, added := uniqueName(t, "rkeep"), uniqueName(t, "rchg"), uniqueName(t, "rgone"), uniqueName(t, "radd")
	oldName, newName := uniqueName(t, "rold"), uniqueName(t, "rnew")
	keepAddr, changeAddr, goneAddr, addAddr, renameAddr := freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t), freeAddr(t)

	v1 := "apps:" + appConfig(keep, keepAddr, "") + appConfig(change, changeAddr, "") +
		appConfig(gone, goneAddr, "") + appConfig(oldName, renameAddr, "")
	d := startSact(t, v1)
	for _, a := range []string{keepAddr, changeAddr, goneAddr} {
		if _, err := httpGet(a, "/"); err != nil {
			t.Fatal(err)
		}
	}

	// Streams that must survive the reload, and a client that must never fail.
	var wg, loop sync.WaitGroup
	streams := map[string]string{keep: keepAddr, change: changeAddr}
	streamErr := make(chan error, 2)
	for name, addr := range streams {
		wg.Go(func() {
			body, err := httpGet(addr, "/slow?d=4s&every=100ms")
			if err != nil || !strings.HasSuffix(body, "done\n") {
				streamErr <- fmt.Errorf("%s: stream across the reload: %q, %v", name, body, err)
			}
		})
	}
	stopLoop := make(chan struct{})
	var served, failed atomic.Int64
	var loopErr atomic.Value
	loop.Go(func() {
		for {
			select {
			case <-stopLoop:
				return
			case <-time.After(5 * time.Millisecond):
			}
			if _, err := httpGet(keepAddr, "/"); err != nil {
				failed.Add(1)
				loopErr.Store(err)
			} else {
				served.Add(1)
			}
		}
	})
	time.Sleep(500 * time.Millisecond)

	// v2: a comment moves every line (unchanged must still be unchanged), change gets a
	// new env, gone goes, added comes, old is renamed new on the same address.
	v2 := "# edited\napps:" + appConfig(keep, keepAddr, "") + appConfig(change, changeAddr, `, EXTRA: "v2"`) +
		appConfig(added, addAddr, "") + appConfig(newName, renameAddr, "")
	if err := os.WriteFile(d.config, []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := sactCLI(t, d, "reload")
	if err != nil {
		t.Fatalf("sact reload: %v\n%s", err, out)
	}
	for _, want := range []string{"added " + added + ", " + newName, "changed " + change, "removed " + gone + ", " + oldName, "1 unchanged"} {
		if !strings.Contains(out, want) {
			t.Errorf("sact reload said %q, want it to contain %q", out, want)
		}
	}

	// The removed app's address is closed; the added and renamed ones serve.
	if _, err := dialOnce(goneAddr); err == nil {
		t.Errorf("%s still accepts after its app was removed", goneAddr)
	}
	for name, addr := range map[string]string{added: addAddr, newName: renameAddr} {
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
			t.Errorf("%s after the reload: %q, %v", name, body, err)
		}
	}
	wg.Wait() // the streams end after 4s
	close(stopLoop)
	loop.Wait()
	close(streamErr)
	for err := range streamErr {
		t.Error(err)
	}
	if n := failed.Load(); n > 0 {
		t.Errorf("%d of %d requests to the unchanged app failed across the reload; last: %v", n, n+served.Load(), loopErr.Load())
	}
	if n := d.countLog(`cannot keep a listening socket`); n != 0 {
		t.Errorf("the renamed app's socket was closed and bound anew")
	}
	if n := d.countLog(`"msg":"app ready"&&` + keep); n != 1 {
		t.Errorf("the unchanged app started %d times, want 1", n)
	}
	// The changed app gets a new container with its new env beside the old one, which
	// drains (issue 17).
	d.waitLog(`"msg":"deployed app;&&"reason":"config changed"&&`+change, 30*time.Second)
	if _, err := httpGet(changeAddr, "/"); err != nil {
		t.Fatal(err)
	}
	if env := docker(t, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", "sact-"+change); !strings.Contains(env, "EXTRA=v2") {
		t.Errorf("changed app runs with env %q, want EXTRA=v2", env)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"removed from config"&&`+gone, 15*time.Second)

	// An invalid config is refused with its line, and the running one stays.
	if err := os.WriteFile(d.config, []byte(v2+"    idel: 5m\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = sactCLI(t, d, "reload")
	if err == nil || !strings.Contains(out, "sact.yaml:") || !strings.Contains(out, "idel: unknown key") || !strings.Contains(out, "running config was kept") {
		t.Errorf("sact reload of an invalid config: %v\n%s", err, out)
	}
	if _, err := httpGet(keepAddr, "/"); err != nil {
		t.Errorf("after a refused reload: %v", err)
	}

	// A config whose new address cannot be bound changes nothing, not even the apps
	// that could have been added.
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	okAddr := freeAddr(t)
	bad := v2 + appConfig(uniqueName(t, "rok"), okAddr, "") + appConfig(uniqueName(t, "rbusy"), taken.Addr().String(), "")
	if err := os.WriteFile(d.config, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err = sactCLI(t, d, "reload")
	if err == nil || !strings.Contains(out, "address already in use") {
		t.Errorf("sact reload with a busy address: %v\n%s", err, out)
	}
	if _, err := dialOnce(okAddr); err == nil {
		t.Errorf("a refused reload bound %s anyway", okAddr)
	}

	// SIGHUP reloads too.
	third := uniqueName(t, "rhup")
	thirdAddr := freeAddr(t)
	if err := os.WriteFile(d.config, []byte(v2+appConfig(third, thirdAddr, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	d.cmd.Process.Signal(syscall.SIGHUP)
	d.waitLog(`"msg":"config reloaded"&&`+third, 10*time.Second)
	if body, err := httpGet(thirdAddr, "/"); err != nil || !strings.Contains(body, third) {
		t.Errorf("app added by SIGHUP: %q, %v", body, err)
	}
}

// TestReloadHandoff changes a handoff app in place (its new container is deployed beside
// the old one on the same sockets, and the old one, graceful, finishes its stream) and
// turns a proxied app into a handoff app (replaced, on the same
// socket, with a request arriving meanwhile).
func TestReloadHandoff(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name, flip := uniqueName(t, "rhand"), uniqueName(t, "rflip")
	tcp, sock, flipAddr := freeAddr(t), filepath.Join(t.TempDir(), "app.sock"), freeAddr(t)
	proxied := appConfig(flip, flipAddr, "") + "    user: \"1001\"\n"
	graceful := func(c string) string {
		return strings.Replace(c, "env: {NAME: "+name, "env: {GRACEFUL: \"1\", NAME: "+name, 1)
	}
	d := startSact(t, graceful(handoffConfig(name, tcp, sock, ""))+proxied)
	if _, err := httpGet(tcp, "/"); err != nil {
		t.Fatal(err)
	}
	if _, err := httpGet(flipAddr, "/"); err != nil {
		t.Fatal(err)
	}

	streamed := make(chan error, 1)
	var stopsDuringStream int
	go func() {
		// Over TCP: the kernel counts its bytes (a unix stream of small writes read at
		// once is invisible to sock_diag; see internal/sockdiag).
		body, err := httpGet(tcp, "/slow?d=3s&every=100ms")
		// Counted as the stream ends, not after the flipped app's request below, which
		// may take longer than the stream on a loaded machine.
		stopsDuringStream = d.countLog(`"msg":"stopped app"&&"reason":"config changed"&&` + name)
		if err == nil && !strings.HasSuffix(body, "done\n") {
			err = fmt.Errorf("stream cut: %q", body)
		}
		streamed <- err
	}()
	time.Sleep(300 * time.Millisecond)
	v2 := graceful(strings.Replace(handoffConfig(name, tcp, sock, ""), "env: {NAME: "+name+"}", "env: {NAME: "+name+", EXTRA: v2}", 1)) +
		strings.Replace(proxied, "    port: 8080\n", "    handoff: true\n", 1)
	if err := os.WriteFile(d.config, []byte(v2), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := sactCLI(t, d, "reload")
	if err != nil || !strings.Contains(out, "changed "+name+", "+flip) && !strings.Contains(out, "changed "+flip+", "+name) {
		t.Fatalf("sact reload: %v\n%s", err, out)
	}
	// The flipped app's socket stays open across the replacement: this request waits in
	// its backlog and is served by the app itself.
	if body, err := httpGet(flipAddr, "/"); err != nil || !strings.Contains(body, "hello from "+flip) {
		t.Errorf("proxied app turned handoff: %q, %v", body, err)
	}
	if err := <-streamed; err != nil {
		t.Errorf("handoff stream across the reload: %v", err)
	}
	if stopsDuringStream != 0 {
		t.Errorf("handoff app restarted while its stream was open")
	}
	// Deployed once the new one has taken a connection.
	for deadline := time.Now().Add(60 * time.Second); d.countLog(`"msg":"deployed app;&&`+name) == 0; time.Sleep(50 * time.Millisecond) {
		if _, err := httpGet(tcp, "/"); err != nil {
			t.Fatalf("during the deploy: %v", err)
		}
		if time.Now().After(deadline) {
			t.Fatal("the changed handoff app was not deployed within 60s")
		}
	}
	waitGone(t, "sact-"+name+"-Old", 20*time.Second)
	if env := docker(t, "inspect", "-f", "{{range .Config.Env}}{{println .}}{{end}}", "sact-"+name); !strings.Contains(env, "EXTRA=v2") {
		t.Errorf("handoff app runs with env %q after the reload, want EXTRA=v2", env)
	}
	if ep := docker(t, "inspect", "-f", "{{json .Config.Entrypoint}}", "sact-"+flip); !strings.Contains(ep, "/sact") {
		t.Errorf("%s runs with entrypoint %s after the reload, want sact's shim (handoff)", flip, ep)
	}
}
