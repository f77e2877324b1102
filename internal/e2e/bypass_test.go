package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// bypassStatus is an app's bypass in `sact status -json`.
type bypassStatus struct {
	Name              string `json:"name"`
	State             string `json:"state"`
	Bypass            bool   `json:"bypass"`
	BypassElsewhere   bool   `json:"bypass_elsewhere"`
	BypassConnections int    `json:"bypass_connections"`
	ColdStarts        int    `json:"cold_starts"`
	Connections       int    `json:"connections_total"`
}

func bypassOf(t *testing.T, d *daemon, app string) bypassStatus {
	t.Helper()
	return appStatusAs[bypassStatus](t, d, app)
}

// TestBypassLocalClients: with SACT_RELAY=kernel, a local client's connections to a
// running app go past the relay, straight to the container: they are served while sact
// itself is frozen (SIGSTOP), steady light traffic on one keep-alive connection past the
// relay keeps the app running beyond its idle time, and once silent the app stops and
// the next client starts it again through sact.
func TestBypassLocalClients(t *testing.T) {
	t.Parallel()
	needDocker(t)
	if os.Geteuid() != 0 {
		if required() {
			t.Fatal("the bypass needs root (CI or SACT_REQUIRE_DOCKER=1)")
		}
		t.Skip("needs root")
	}
	name := uniqueName(t, "bypass")
	addr := freeAddr(t)
	path := filepath.Join(t.TempDir(), "sact.yaml")
	if err := os.WriteFile(path, []byte("apps:"+appConfig(name, addr, "")+"    idle: 3s\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	d := startSactFileEnv(t, path, "SACT_RELAY=kernel")
	d.waitLog(`"msg":"local clients reach running apps past the relay"`, 5*time.Second)

	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("cold request: %v", err)
	}
	if st := bypassOf(t, d, name); !st.Bypass || st.State != "running" {
		t.Fatalf("after the cold start: %+v, want running and bypassed", st)
	}

	// Frozen, sact relays nothing: what is served now went past it.
	if err := d.whileFrozen(func() error {
		for i := range 5 {
			if _, err := httpGetTimeout(addr, "/", 5*time.Second); err != nil {
				return fmt.Errorf("request %d: %w", i, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatalf("while sact is stopped: %v", err)
	}
	if st := bypassOf(t, d, name); st.BypassConnections < 5 || st.Connections < st.BypassConnections+1 {
		t.Errorf("bypass_connections = %d, connections_total = %d: want at least the 5 made while sact was stopped, and all counted as served", st.BypassConnections, st.Connections)
	}

	// Steady light traffic on one pooled connection, twice the idle time: sact sees it
	// only as the kernel counts it, and must not stop the app under it.
	dials := 0
	tr := &http.Transport{DialContext: func(ctx context.Context, network, a string) (net.Conn, error) {
		dials++
		var dd net.Dialer
		return dd.DialContext(ctx, "tcp", addr)
	}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: 5 * time.Second}
	for i := range 12 {
		resp, err := client.Get("http://sact/")
		if err != nil {
			t.Fatalf("keep-alive request %d: %v", i, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		time.Sleep(500 * time.Millisecond)
	}
	if dials != 1 {
		t.Errorf("%d connections for the keep-alive requests, want 1 (the app was stopped under it?)", dials)
	}
	if st := bypassOf(t, d, name); st.State != "running" || st.ColdStarts != 1 {
		t.Errorf("after steady traffic past the relay: %+v, want running after 1 cold start", st)
	}
	tr.CloseIdleConnections()

	// Silent: stopped on idle; the next client goes to sact, which starts it again.
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)
	if st := bypassOf(t, d, name); st.Bypass {
		t.Errorf("a stopped app is still bypassed: %+v", st)
	}
	if _, err := httpGet(addr, "/"); err != nil {
		t.Fatalf("request after the idle stop: %v", err)
	}
	if st := bypassOf(t, d, name); st.ColdStarts != 2 || !st.Bypass {
		t.Errorf("after the second cold start: %+v, want 2 cold starts, bypassed", st)
	}
}

// kernelPath is the test whose subtests run sact with SACT_RELAY=kernel (the harness
// sees their names): the relay's e2e tests again, on the kernel's path, where this
// host's clients go past the relay and others through the sockmap.
const kernelPath = "TestKernelPath"

// TestKernelPath runs the tests of what the relay must get right (cold start and idle
// stop, a connection during a stop, a container killed mid-request, the idle stop's
// race, silent and half-closed connections, a deploy without a cold start) with
// SACT_RELAY=kernel, side by side.
func TestKernelPath(t *testing.T) {
	t.Parallel()
	needDocker(t)
	for _, tt := range []struct {
		name string
		f    func(*testing.T)
	}{
		{"ColdStartServedThenIdleStop", TestColdStartServedThenIdleStop},
		{"ConnectionDuringStopIsServed", TestConnectionDuringStopIsServed},
		{"ContainerKilledMidRequest", TestContainerKilledMidRequest},
		{"IdleStopRace", TestIdleStopRace},
		{"SilentAndHalfClosedConnections", TestSilentAndHalfClosedConnections},
		{"DeployWithoutColdStart", TestDeployWithoutColdStart},
		{"Idle", TestIdle},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			tt.f(t)
		})
	}
}
