package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// depends_on under max_running: two web+db pairs asked for at once under max_running 2.
// Each start used to take its db's slot and then wait for its own, so each pair held one
// slot and waited for the other's: neither was served (issue 13). A start now reserves
// the slots of the app and its dependency together: one pair is served, then evicted to
// make room for the other.
func TestDependsOnPairsUnderMaxRunning(t *testing.T) {
	needDocker(t)
	webs := []string{uniqueName(t, "pweb1"), uniqueName(t, "pweb2")}
	dbs := []string{uniqueName(t, "pdb1"), uniqueName(t, "pdb2")}
	addrs := []string{freeAddr(t), freeAddr(t)}
	cfg := "pool:\n  max_running: 2\napps:"
	for i := range webs {
		cfg += appConfig(webs[i], addrs[i], "") + fmt.Sprintf("    idle: 5m\n    depends_on: [%s]\n", dbs[i]) +
			fmt.Sprintf("\n  %[1]s:\n    image: %[2]s\n    env: {NAME: %[1]s}\n    idle: 5m\n    stop_timeout: 2s\n", dbs[i], testImage)
	}
	d := startSact(t, cfg)

	began := time.Now()
	type answer struct {
		i    int
		body string
		err  error
		took time.Duration
	}
	answers := make(chan answer, len(webs))
	for i := range webs {
		go func() {
			body, err := httpGetTimeout(addrs[i], "/", 30*time.Second)
			answers <- answer{i, body, err, time.Since(began)}
		}()
	}
	for range webs {
		a := <-answers
		if a.err != nil {
			t.Errorf("%s not answered within 30s: %v", webs[a.i], a.err)
			continue
		}
		if want := "hello from " + webs[a.i]; !strings.Contains(a.body, want) {
			t.Errorf("%s answered %q, want %q", webs[a.i], a.body, want)
		}
		t.Logf("%s answered after %v", webs[a.i], a.took.Round(time.Millisecond))
	}
	if t.Failed() {
		return
	}
	// The first pair made room for the second: its web was evicted, its db followed.
	rec := d.waitLog(`"msg":"stopped app"&&"reason":"evicted"`, 5*time.Second)
	if app := rec["app"]; app != webs[0] && app != webs[1] {
		t.Errorf("evicted %v, want one of the webs (a db is pinned by its running web)", app)
	}
	filter := []string{"ps", "-q"}
	for _, n := range append(append([]string{}, webs...), dbs...) {
		filter = append(filter, "--filter", "label=sact.app="+n)
	}
	if running := strings.Fields(docker(t, filter...)); len(running) > 2 {
		t.Errorf("%d containers run, max_running is 2", len(running))
	}
}
