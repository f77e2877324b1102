package backend

import (
	"slices"
	"testing"
)

func TestBindSources(t *testing.T) {
	s := Spec{
		Volumes: []string{"/apps/x/tmp:/app/tmp", "/srv/ro:/data:ro", "/srv/roz:/z:z,ro", "/srv/rw:/rw:rw", "named:/cache", "/var/run/docker.sock:/var/run/docker.sock"},
		Handoff: &Handoff{Dir: "/run/sact/handoff/x"},
	}
	want := []string{"/apps/x/tmp", "/srv/rw", "/var/run/docker.sock", "/run/sact/handoff/x"}
	if got := s.BindSources(); !slices.Equal(got, want) {
		t.Errorf("BindSources() = %q, want %q", got, want)
	}
	if got := (Spec{}).BindSources(); got != nil {
		t.Errorf("no volumes: %q, want nil", got)
	}
}
