package listen

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// addrsOf are the addresses of the sockets in files.
func addrsOf(t *testing.T, files []*os.File) []string {
	t.Helper()
	var out []string
	for _, f := range files {
		ln, err := net.FileListener(f)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ln.Addr().String())
		ln.Close()
		f.Close()
	}
	return out
}

func TestFilesAndKeepSocketFiles(t *testing.T) {
	ctx := context.Background()
	sock := filepath.Join(t.TempDir(), "a.sock")
	tcp, err := Listen(ctx, Addr{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	unix, err := Listen(ctx, Addr{Network: "unix", Address: sock})
	if err != nil {
		t.Fatal(err)
	}
	closed, err := Listen(ctx, Addr{Network: "tcp", Address: "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()

	files, err := Files()
	if err != nil {
		t.Fatal(err)
	}
	got := addrsOf(t, files)
	for _, want := range []string{tcp.Addr().String(), sock} {
		if !slices.Contains(got, want) {
			t.Errorf("Files() = %v, lacks %s", got, want)
		}
	}
	if slices.Contains(got, closed.Addr().String()) {
		t.Errorf("Files() = %v, has the closed listener %s", got, closed.Addr())
	}

	// Without KeepSocketFiles, a listener closing removes its path; with it, not.
	KeepSocketFiles()
	unix.Close()
	if _, err := os.Lstat(sock); err != nil {
		t.Errorf("after KeepSocketFiles, closing the listener removed its socket file: %v", err)
	}
	tcp.Close()
	other := filepath.Join(t.TempDir(), "b.sock")
	ln, err := Listen(ctx, Addr{Network: "unix", Address: other})
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	if _, err := os.Lstat(other); err == nil {
		t.Errorf("a listener bound after KeepSocketFiles left its socket file on close")
	}
}
