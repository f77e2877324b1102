package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// A container made elsewhere (docker create, as compose does) declares itself an app with
// labels; sact serves it without a line in sact.yaml, and reports bad labels like config
// errors.
func TestLabelledContainerIsAnApp(t *testing.T) {
	needDocker(t)
	name, other := uniqueName(t, "label"), uniqueName(t, "labelfile")
	_, value, _ := strings.Cut(labelSelector, "=")
	addr := freeAddr(t)
	docker(t, "create", "--name", "sact-"+name,
		"--label", "sact.enable="+value, "--label", "sact.name="+name,
		"--label", "sact.listen=tcp:"+addr, "--label", "sact.port=8080", "--label", "sact.idle=2s",
		"-e", "NAME="+name, "-e", "LISTEN=tcp:0.0.0.0:8080", testImage)

	d := startSact(t, "apps:"+appConfig(other, freeAddr(t), ""))
	d.waitLog(`"msg":"apps declared by container labels"&&"count":1`, time.Second)
	body, err := httpGet(addr, "/")
	if err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("labelled app: %q, %v", body, err)
	}
	d.waitLog(`"msg":"stopped app"&&"reason":"idle"&&`+name, 20*time.Second)

	// A bad label is a config error naming the container and the label.
	bad := uniqueName(t, "badlabel")
	docker(t, "create", "--name", "sact-"+bad, "--label", "sact.enable="+value,
		"--label", "sact.listen=tcp:"+freeAddr(t), "--label", "sact.port=8080", "--label", "sact.idle=soon", testImage)
	out, err := exec.Command(sactBin, "check", "-c", d.config, "-labels", labelSelector).CombinedOutput()
	want := fmt.Sprintf("container sact-%s: apps.sact-%s.idle: label sact.idle=soon:", bad, bad)
	if err == nil || !strings.Contains(string(out), want) {
		t.Errorf("sact check with a bad label: %v\n%s\nwant a line with %q", err, out, want)
	}
}
