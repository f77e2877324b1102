package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestReloadOfABrokenFileSaysWhy: `sact reload -c FILE` on a file with a YAML error, for
// a sact whose admin socket the file itself names, prints the error with its line, not
// "cannot reach sact" at the default socket; and the daemon logs every failed reload,
// whoever asked for it (issue 13).
func TestReloadOfABrokenFileSaysWhy(t *testing.T) {
	needDocker(t)
	name := uniqueName(t, "rbroken")
	sock := filepath.Join(t.TempDir(), "adm.sock")
	config := fmt.Sprintf("admin:\n  socket: %s\napps:", sock) + appConfig(name, freeAddr(t), "")
	d := startSact(t, config)

	tests := []struct {
		name, text, want string
	}{
		{"yaml syntax", config + "    idle: [unclosed\n", "sact.yaml:"},
		{"invalid value", config + "    idle: soon\n", `"soon" is not a duration`},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := os.WriteFile(d.config, []byte(tt.text), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := sactCLI(t, d, "reload")
			if err == nil {
				t.Fatalf("sact reload of a broken file succeeded:\n%s", out)
			}
			if strings.Contains(out, "cannot reach sact") || !strings.Contains(out, tt.want) {
				t.Errorf("sact reload said:\n%s\nwant the file's error (%q)", out, tt.want)
			}
			if n := d.awaitCount(`"msg":"config not reloaded`, i+1); n != i+1 {
				t.Errorf("%d failed reloads logged by sact, want %d", n, i+1)
			}
		})
	}
	os.WriteFile(d.config, []byte(config), 0o644)
	if out, err := sactCLI(t, d, "reload"); err != nil {
		t.Errorf("reload of the repaired file: %v\n%s", err, out)
	}
	d.waitLog(`"msg":"config reloaded"`, 5*time.Second)
}
