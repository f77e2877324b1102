package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/sact-project/sact/internal/config"
)

// TestTrustedIncludedFiles: an included app file or an env_file every user may write is
// refused like a world-writable sact.yaml (issue 14).
func TestTrustedIncludedFiles(t *testing.T) {
	dir := t.TempDir()
	write := func(name, data string, mode os.FileMode) {
		t.Helper()
		p := filepath.Join(dir, name)
		os.MkdirAll(filepath.Dir(p), 0o755)
		if err := os.WriteFile(p, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
	}
	write("sact.yaml", "include: [apps.d/*.yaml]\n", 0o644)
	write("apps.d/web.yaml", "apps:\n  web:\n    image: web:1\n    port: 80\n    listen: [\"tcp:127.0.0.1:0\"]\n    env_file: web.env\n", 0o644)
	write("apps.d/web.env", "A=1\n", 0o644)
	load := func() *config.Config {
		t.Helper()
		cfg, err := config.Load(filepath.Join(dir, "sact.yaml"), configOptions)
		if err != nil {
			t.Fatal(err)
		}
		return cfg
	}
	if err := trustedConfigFiles(load()); err != nil {
		t.Fatalf("refused files only their owner may write: %v", err)
	}
	for _, f := range []string{"apps.d/web.yaml", "apps.d/web.env"} {
		os.Chmod(filepath.Join(dir, f), 0o666)
		err := trustedConfigFiles(load())
		if err == nil || !strings.Contains(err.Error(), "chmod o-w "+filepath.Join(dir, f)) {
			t.Errorf("%s writable by every user: error %v, want one saying chmod o-w", f, err)
		}
		os.Chmod(filepath.Join(dir, f), 0o644)
	}
}
