package listen

import (
	"context"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

func TestListenUnix(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		prepare func(t *testing.T, path string) // what is at path before Listen
		mode    fs.FileMode
		wantErr string // "" for success
	}{
		{name: "fresh path", prepare: func(*testing.T, string) {}},
		{name: "mode applied", prepare: func(*testing.T, string) {}, mode: 0o600},
		{
			name: "stale socket of a dead process is replaced",
			prepare: func(t *testing.T, path string) {
				ln, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				ln.(*net.UnixListener).SetUnlinkOnClose(false)
				ln.Close()
			},
		},
		{
			name: "live socket is refused",
			prepare: func(t *testing.T, path string) {
				ln, err := net.Listen("unix", path)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { ln.Close() })
			},
			wantErr: "in use",
		},
		{
			name: "plain file is never removed",
			prepare: func(t *testing.T, path string) {
				os.WriteFile(path, []byte("data"), 0o644)
			},
			wantErr: "not a socket",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "s.sock")
			tt.prepare(t, path)
			ln, err := Listen(ctx, Addr{Network: "unix", Address: path, Mode: tt.mode})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				if _, serr := os.Stat(path); serr != nil {
					t.Errorf("Listen removed what was at the path: %v", serr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			want := tt.mode
			if want == 0 {
				want = 0o666
			}
			if got := fi.Mode() & fs.ModePerm; got != want {
				t.Errorf("mode %v, want %v", got, want)
			}
			c, err := net.Dial("unix", path)
			if err != nil {
				t.Fatalf("dialing the new listener: %v", err)
			}
			c.Close()
		})
	}
}

func TestParse(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: "unix:/run/sact/a.sock", want: "unix:/run/sact/a.sock"},
		{in: "tcp:127.0.0.1:9001", want: "tcp:127.0.0.1:9001"},
		{in: "tcp:[::1]:80", want: "tcp:[::1]:80"},
		{in: "unix:relative.sock", wantErr: "absolute"},
		{in: "127.0.0.1:80", wantErr: "unknown scheme"},
		{in: "tcp:127.0.0.1:99999", wantErr: "port"},
		{in: "unix:/" + strings.Repeat("x", 120), wantErr: "107"},
	}
	for _, tt := range tests {
		a, err := Parse(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("Parse(%q) err = %v, want %q", tt.in, err, tt.wantErr)
			}
			continue
		}
		if err != nil || a.String() != tt.want {
			t.Errorf("Parse(%q) = %v, %v; want %s", tt.in, a, err, tt.want)
		}
	}
}

func TestBindErrorsSayHowToFix(t *testing.T) {
	tests := []struct{ addr, want string }{
		{"/sys/sact-listen-test.sock", "may not create files in /sys"},
		{"/nonexistent-sact-dir/app.sock", "/nonexistent-sact-dir does not exist"},
	}
	for _, tt := range tests {
		_, err := Listen(context.Background(), Addr{Network: "unix", Address: tt.addr})
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Listen(%s) = %v, want it to say %q", tt.addr, err, tt.want)
		}
	}
	ln, err := Listen(context.Background(), Addr{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if _, err := Listen(context.Background(), Addr{Network: "tcp", Address: ln.Addr().String()}); err == nil || !strings.Contains(err.Error(), "another process listens there") {
		t.Errorf("binding a port in use: %v", err)
	}
}

// TestPermsNeverFollowALink: a socket name swapped for a link to a host file between bind
// and chmod (a directory someone else can write) must not change the file it points to.
func TestPermsNeverFollowALink(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "shadow")
	if err := os.WriteFile(secret, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "app.sock")
	if err := os.Symlink(secret, sock); err != nil {
		t.Fatal(err)
	}
	a := Addr{Network: "unix", Address: sock, Mode: 0o666, Group: strconv.Itoa(os.Getgid() + 1)}
	err := a.applyPerms()
	st, _ := os.Stat(secret)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("the link's target became %v", st.Mode().Perm())
	}
	if err == nil {
		t.Fatalf("setting permissions through a link: no error")
	}
	t.Log(err)
}
