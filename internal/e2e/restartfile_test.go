package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// Touching an app's restart_file, as a Passenger deploy touches tmp/restart.txt, gives a
// new container at the next request; the config is not reloaded for it, and an app whose
// file is untouched keeps its container (issue 14).
func TestRestartFileRecreatesContainer(t *testing.T) {
	t.Parallel()
	needDocker(t)
	name, other := uniqueName(t, "restartf"), uniqueName(t, "restartg")
	addr, otherAddr := freeAddr(t), freeAddr(t)
	tmp := filepath.Join(t.TempDir(), "tmp")
	if err := os.MkdirAll(tmp, 0o755); err != nil {
		t.Fatal(err)
	}
	restart := filepath.Join(tmp, "restart.txt")
	otherRestart := filepath.Join(tmp, "other.txt")
	d := startSact(t, "apps:"+appConfig(name, addr, "")+"    idle: 1h\n    restart_file: "+restart+"\n"+
		appConfig(other, otherAddr, "")+"    idle: 1h\n    restart_file: "+otherRestart+"\n")
	for _, a := range []string{addr, otherAddr} {
		if _, err := httpGet(a, "/"); err != nil {
			t.Fatalf("cold request: %v", err)
		}
	}
	id1, other1 := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name), docker(t, "inspect", "-f", "{{.Id}}", "sact-"+other)

	// The file did not exist: creating it is a touch.
	if err := os.WriteFile(restart, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d.waitLog(`"msg":"restart file touched`+`&&`+name, 5*time.Second)
	d.waitLog(`"msg":"deployed app;&&`+name, 20*time.Second) // beside the old one (issue 17)
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("request after the touch: %v", err)
	}
	id2 := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name)
	if id2 == id1 {
		t.Fatalf("same container %.12s after restart.txt was created", id1)
	}

	// Touching it again (only its times change) restarts it again.
	later := time.Now().Add(time.Second)
	if err := os.Chtimes(restart, later, later); err != nil {
		t.Fatal(err)
	}
	if n := d.awaitCount(`"msg":"restart file touched`+`&&`+name, 2); n != 2 {
		t.Fatalf("%d restarts logged after the second touch, want 2", n)
	}
	for deadline := time.Now().Add(30 * time.Second); d.countLog(`"msg":"deployed app;&&`+name) < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no second deploy 30s after the second touch")
		}
	}
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("request after the second touch: %v", err)
	}
	if id3 := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+name); id3 == id2 || id3 == id1 {
		t.Fatalf("container %.12s not new after the second touch", id3)
	}
	if id := docker(t, "inspect", "-f", "{{.Id}}", "sact-"+other); id != other1 {
		t.Errorf("the other app's container changed though its restart file was never touched")
	}
	// An app that touches its own file in a loop (its tmp/ is its own) is restarted once
	// a second at most, the last touch never lost.
	before := d.countLog(`"msg":"restart file touched` + `&&` + name)
	storm := time.Now()
	for i := range 200 {
		at := storm.Add(time.Duration(i+2) * time.Second)
		os.Chtimes(restart, at, at)
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(storm)
	time.Sleep(2500 * time.Millisecond)
	got := d.countLog(`"msg":"restart file touched`+`&&`+name) - before
	if limit := int(took/time.Second) + 3; got > limit || got < 1 {
		t.Errorf("200 touches in %v: %d restarts, want 1 to %d", took.Round(time.Millisecond), got, limit)
	}
	t.Logf("200 touches in %v: %d restarts", took.Round(time.Millisecond), got)
	if n := d.countLog(`"msg":"config reloaded"`); n != 0 {
		t.Errorf("a touch reloaded the config (%d times)", n)
	}
}
