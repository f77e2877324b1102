package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestTrustedConfigFile: whoever may write sact.yaml runs commands as root, so sact serve
// refuses a config that another user owns or every user may write.
func TestTrustedConfigFile(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give the file to another user")
	}
	tests := []struct {
		name    string
		mode    os.FileMode
		uid     int
		wantErr string
	}{
		{name: "root 0644", mode: 0o644, uid: 0},
		{name: "root 0640", mode: 0o640, uid: 0},
		{name: "group-writable (the admin group may)", mode: 0o664, uid: 0},
		{name: "world-writable", mode: 0o666, uid: 0, wantErr: "chmod o-w"},
		{name: "another user's", mode: 0o644, uid: 65534, wantErr: "chown root"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "sact.yaml")
			if err := os.WriteFile(path, []byte("apps: {}\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(path, tt.mode)
			os.Chown(path, tt.uid, 0)
			err := trustedConfigFile(path)
			switch {
			case tt.wantErr == "" && err != nil:
				t.Errorf("refused: %v", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Errorf("error %v, want one saying %q", err, tt.wantErr)
			}
		})
	}
}
