package docker

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestOwnLabels(t *testing.T) {
	image := map[string]string{
		"sact.enable": "true", "sact.upstream": "unix:/var/run/docker.sock", "sact.listen": "tcp:0.0.0.0:2375",
		"maintainer": "someone",
	}
	container := map[string]string{
		"sact.enable": "true", "sact.upstream": "unix:/var/run/docker.sock", "sact.listen": "tcp:127.0.0.1:9001",
		"maintainer": "someone", "sact.port": "8080",
	}
	want := map[string]string{"sact.listen": "tcp:127.0.0.1:9001", "maintainer": "someone", "sact.port": "8080"}
	if diff := cmp.Diff(want, ownLabels(container, image)); diff != "" {
		t.Errorf("ownLabels (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(container, ownLabels(container, nil)); diff != "" {
		t.Errorf("without image labels (-want +got):\n%s", diff)
	}
}
