package daemon

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
)

func TestAdminTokenFile(t *testing.T) {
	good := strings.Repeat("7e", 32)
	for _, tt := range []struct {
		name    string
		make    func(path string) // what is at path before sact starts; nil: nothing
		group   string
		wantErr string // "" if the token is read or made
	}{
		{name: "missing: made", group: "4242"},
		{name: "missing, no admin.group: made with sact's group"},
		{name: "existing 0640", make: func(p string) { writeTokenFile(t, p, good+"\n", 0o640) }},
		{name: "existing 0600", make: func(p string) { writeTokenFile(t, p, good, 0o600) }},
		{name: "readable by others", make: func(p string) { writeTokenFile(t, p, good, 0o644) }, wantErr: "chmod 0640"},
		{name: "writable by others", make: func(p string) { writeTokenFile(t, p, good, 0o602) }, wantErr: "chmod 0640"},
		{name: "a symlink", make: func(p string) {
			writeTokenFile(t, p+".real", good, 0o600)
			os.Symlink(p+".real", p)
		}, wantErr: "symbolic link"},
		{name: "a dangling symlink", make: func(p string) { os.Symlink("/nonexistent/admin.token", p) }, wantErr: "symbolic link"},
		{name: "a directory", make: func(p string) { os.Mkdir(p, 0o700) }, wantErr: "not a regular file"},
		{name: "a fifo", make: func(p string) { syscall.Mkfifo(p, 0o600) }, wantErr: "not a regular file"},
		{name: "too short", make: func(p string) { writeTokenFile(t, p, "secret\n", 0o600) }, wantErr: "at least 32"},
		{name: "with spaces", make: func(p string) { writeTokenFile(t, p, strings.Repeat("ab ", 20), 0o600) }, wantErr: "at least 32"},
		{name: "another user's", make: func(p string) {
			writeTokenFile(t, p, good, 0o600)
			os.Chown(p, 65534, -1)
		}, wantErr: "chown root"},
		{name: "a foreign group may read it", group: "4242", make: func(p string) {
			writeTokenFile(t, p, good, 0o640)
			os.Chown(p, -1, 4343)
		}, wantErr: "not admin.group"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if os.Geteuid() != 0 && (tt.group != "" || strings.Contains(tt.name, "user's")) {
				t.Skip("needs root to chown")
			}
			path := filepath.Join(t.TempDir(), "admin.token")
			if tt.make != nil {
				tt.make(path)
			}
			token, created, _, err := adminToken(path, tt.group)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), path) {
					t.Fatalf("err = %v; want one naming %s and saying %q", err, path, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if created != (tt.make == nil) {
				t.Errorf("created = %v", created)
			}
			if tt.make != nil {
				if token != good {
					t.Errorf("token %q, want the file's %q", token, good)
				}
				return
			}
			if !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(token) {
				t.Errorf("made token %q: want 64 hex digits", token)
			}
			st, _ := os.Lstat(path)
			sys := st.Sys().(*syscall.Stat_t)
			wantGID := uint32(os.Getegid())
			if tt.group != "" {
				wantGID = 4242
			}
			if st.Mode() != 0o640 || int(sys.Uid) != os.Geteuid() || sys.Gid != wantGID {
				t.Errorf("made %v uid %d gid %d; want 0640, uid %d, gid %d", st.Mode(), sys.Uid, sys.Gid, os.Geteuid(), wantGID)
			}
			again, created, _, err := adminToken(path, tt.group)
			if err != nil || created || again != token {
				t.Errorf("read again: %q created %v err %v; want the same token", again, created, err)
			}
		})
	}
}

func writeTokenFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path, mode) // past the umask
}
