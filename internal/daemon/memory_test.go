package daemon

import (
	"testing"

	"github.com/sact-project/sact/internal/config"
)

func TestReadiness(t *testing.T) {
	app := &config.App{Hosts: []string{"*.shop.example.com", "shop.example.com/api"},
		Ready: config.Ready{HTTP: &config.ReadyHTTP{Path: "/up", Method: "HEAD", StatusMin: 200, StatusMax: 299}}}
	r := readiness(app)
	if r.HTTP == nil || r.HTTP.Host != "shop.example.com" || r.HTTP.Method != "HEAD" || r.HTTP.Path != "/up" || r.HTTP.StatusMax != 299 {
		t.Errorf("readiness %+v", r.HTTP)
	}
	if got := readyHost(nil); got != "localhost" {
		t.Errorf("no hosts: Host %q", got)
	}
	if got := readyHost([]string{"*.example.com"}); got != "localhost" {
		t.Errorf("only a wildcard: Host %q", got)
	}
	if r := readiness(&config.App{Ready: config.Ready{Healthcheck: true}}); !r.Healthcheck || r.HTTP != nil {
		t.Errorf("healthcheck: %+v", r)
	}
	if r := readiness(&config.App{}); r.String() != "accepts" {
		t.Errorf("default: %s", r)
	}
}
