package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// max_running: the least recently used idle app is evicted to make room; a busy one never.
func TestMaxRunningEvictsLRU(t *testing.T) {
	t.Parallel()
	needDocker(t)
	a, b, c := uniqueName(t, "lrua"), uniqueName(t, "lrub"), uniqueName(t, "lruc")
	addrs := map[string]string{a: freeAddr(t), b: freeAddr(t), c: freeAddr(t)}
	cfg := "pool:\n  max_running: 2\napps:" +
		appConfig(a, addrs[a], "") + "    idle: 5m\n" +
		appConfig(b, addrs[b], "") + "    idle: 5m\n" +
		appConfig(c, addrs[c], "") + "    idle: 5m\n"
	d := startSact(t, cfg)

	if _, err := httpGet(addrs[a], "/"); err != nil {
		t.Fatal(err)
	}
	// b streams for a while: busy.
	streamed := make(chan error, 1)
	go func() {
		_, err := httpGet(addrs[b], "/slow?d=6s&every=200ms")
		streamed <- err
	}()
	d.waitLog(`"msg":"app ready"&&`+b, 30*time.Second)
	if _, err := httpGet(addrs[a], "/"); err != nil { // a is the most recent, but idle
		t.Fatal(err)
	}
	if _, err := httpGet(addrs[c], "/"); err != nil {
		t.Fatalf("third app over max_running 2: %v", err)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"evicted"&&`+a, 5*time.Second)
	if n := d.countLog(`"msg":"stopping app"&&` + b); n != 0 {
		t.Errorf("the busy app was stopped")
	}
	if err := <-streamed; err != nil {
		t.Errorf("the busy app's stream broke: %v", err)
	}
	running := strings.Fields(docker(t, "ps", "-q", "--filter", "label=sact.app="+a, "--filter", "label=sact.app="+b, "--filter", "label=sact.app="+c))
	if len(running) > 2 {
		t.Errorf("%d containers run, max_running is 2", len(running))
	}
}

// pause_after: an idle app is frozen, the next connection thaws it (fast), idle stops it.
func TestPauseThenWakeOnConnection(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name := uniqueName(t, "pause")
	addr := freeAddr(t)
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    pause_after: 1s\n    idle: 6s\n")
	first, err := httpGet(addr, "/pid")
	if err != nil {
		t.Fatal(err)
	}
	d.waitLog(`"msg":"paused app"&&`+name, 10*time.Second)
	if s := docker(t, "inspect", "-f", "{{.State.Status}}", "sact-"+name); s != "paused" {
		t.Fatalf("container %s after pause_after, want paused", s)
	}
	began := time.Now()
	again, err := httpGet(addr, "/pid")
	if err != nil || again != first {
		t.Fatalf("after the pause: %q, %v; want the same process %q", again, err, first)
	}
	rec := d.waitLog(`"msg":"woke paused app"&&`+name, time.Second)
	t.Logf("woke in %v (sact's unpause: %v)", time.Since(began), rec["duration"])

	// A sact killed while its app is paused: the next one adopts the app, thawed.
	waitContainerState(t, name, "paused", 10*time.Second)
	d.kill()
	d = startSactFile(t, d.config)
	d.waitLog(`"msg":"adopted running app"&&`+name, 5*time.Second)
	if again, err := httpGetTimeout(addr, "/pid", 10*time.Second); err != nil || again != first {
		t.Fatalf("after a restart while paused: %q, %v; want the same process %q", again, err, first)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
	waitContainerState(t, name, "exited", 5*time.Second)
}

// depends_on: the dependency starts first, stays while its dependent runs, and stops
// with it; min_running starts an app with no client at all.
func TestDependsOnAndMinRunning(t *testing.T) {
	needDocker(t)
	web, db, warm := uniqueName(t, "dweb"), uniqueName(t, "ddb"), uniqueName(t, "dwarm")
	addr, warmAddr := freeAddr(t), freeAddr(t)
	cfg := "apps:" + appConfig(web, addr, "") + fmt.Sprintf("    idle: 3s\n    depends_on: [%s]\n", db) +
		fmt.Sprintf("\n  %[1]s:\n    image: %[2]s\n    env: {NAME: %[1]s}\n    idle: 1s\n    stop_timeout: 2s\n", db, testImage) +
		appConfig(warm, warmAddr, "") + "    idle: 1s\n    min_running: 1\n"
	d := startSact(t, cfg)
	d.waitLog(`"msg":"app ready"&&`+warm, 30*time.Second)

	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatal(err)
	}
	// sact wrote the line before it answered, but the test reads sact's log from a pipe:
	// the line may not be read yet (CI saw it missing).
	d.waitLog(`"msg":"app ready"&&`+web, 10*time.Second)
	dbReady := d.logs.lines([]string{`"msg":"app ready"`, db})
	webStart := d.logs.lines([]string{`"msg":"starting app"`, web})
	if len(dbReady) != 1 || len(webStart) != 1 || strings.Index(d.logs.String(), dbReady[0]) > strings.Index(d.logs.String(), d.logs.lines([]string{`"msg":"app ready"`, web})[0]) {
		t.Fatalf("the dependency was not ready before its dependent")
	}
	time.Sleep(2 * time.Second) // past db's own idle: its dependent keeps it
	if containerState(t, db) != "running" {
		t.Fatalf("dependency stopped while its dependent runs")
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"dependents stopped"&&`+db, 20*time.Second)
	if containerState(t, warm) != "running" {
		t.Errorf("min_running app stopped for idleness")
	}
}

// memory_budget: two apps limited to 40 MiB do not fit a 64 MiB budget together; starting
// the second evicts the first, and the engine agrees on the limits.
func TestMemoryBudgetEvicts(t *testing.T) {
	needDocker(t)
	a, b := uniqueName(t, "mema"), uniqueName(t, "memb")
	addrs := map[string]string{a: freeAddr(t), b: freeAddr(t)}
	d := startSact(t, "pool:\n  memory_budget: 64m\napps:"+
		appConfig(a, addrs[a], "")+"    memory: 40m\n    idle: 5m\n"+
		appConfig(b, addrs[b], "")+"    memory: 40m\n    idle: 5m\n")
	if _, err := httpGet(addrs[a], "/"); err != nil {
		t.Fatal(err)
	}
	if _, err := httpGet(addrs[b], "/"); err != nil {
		t.Fatalf("second app over the memory budget: %v", err)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"evicted"&&`+a, 10*time.Second)
	if st := containerState(t, a); st == "running" {
		t.Errorf("evicted app's container is %s", st)
	}
	if mem := docker(t, "inspect", "-f", "{{.HostConfig.Memory}}", "sact-"+b); mem != fmt.Sprint(40<<20) {
		t.Errorf("container memory limit %s, want %d", mem, 40<<20)
	}
}
