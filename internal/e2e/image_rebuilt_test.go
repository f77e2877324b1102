package e2e

import (
	"strings"
	"testing"
	"time"
)

// TestRebuiltImageIsUsed: an image rebuilt under the same tag is what the app's next start
// runs, whether sact saw the rebuild (the engine's tag event) or was restarted since; the
// container made from the old image is recreated, not started again (issue 17).
func TestRebuiltImageIsUsed(t *testing.T) {
	other := needHostileImage(t)
	name := uniqueName(t, "rebuilt")
	tag := "sact-e2e-rebuilt:" + name
	docker(t, "tag", testImage, tag)
	t.Cleanup(func() { docker(t, "rmi", "-f", tag) })
	addr := freeAddr(t)
	config := "apps:" + strings.Replace(appConfig(name, addr, ""), "image: "+testImage, "image: "+tag, 1)
	d := startSact(t, config)
	if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
		t.Fatalf("first start: %q, %v", body, err)
	}

	t.Run("rebuilt while sact runs", func(t *testing.T) {
		if out, err := sactCLI(t, d, "stop", name); err != nil {
			t.Fatalf("sact stop: %v\n%s", err, out)
		}
		docker(t, "tag", other, tag)       // as `docker build -t` does
		time.Sleep(200 * time.Millisecond) // the tag event reaches sact
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hostile app") {
			t.Fatalf("after the rebuild: %q, %v; want the new image's answer", body, err)
		}
		d.waitLog(`"msg":"recreating container"&&`+name+`&&its image was rebuilt`, 5*time.Second)
	})

	t.Run("rebuilt while sact was down", func(t *testing.T) {
		if out, err := sactCLI(t, d, "stop", name); err != nil {
			t.Fatalf("sact stop: %v\n%s", err, out)
		}
		d.stop()
		docker(t, "tag", testImage, tag)
		d2 := startSactFile(t, d.config)
		if body, err := httpGet(addr, "/"); err != nil || !strings.Contains(body, "hello from "+name) {
			t.Fatalf("after a rebuild while sact was down: %q, %v; want the new image's answer", body, err)
		}
		d2.waitLog(`"msg":"recreating container"&&`+name+`&&its image was rebuilt`, 5*time.Second)
	})
}
