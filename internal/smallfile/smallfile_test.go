package smallfile

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestRead(t *testing.T) {
	dir := t.TempDir()
	ok := filepath.Join(dir, "ok")
	big := filepath.Join(dir, "big")
	fifo := filepath.Join(dir, "fifo")
	os.WriteFile(ok, []byte("A=1\n"), 0o644)
	os.WriteFile(big, []byte(strings.Repeat("x", 11)), 0o644)
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		path, want, err string
	}{
		{ok, "A=1\n", ""},
		{big, "", "larger than 10 bytes"},
		{fifo, "", "not a regular file"},
		{dir, "", "not a regular file"},
		{"/dev/zero", "", "not a regular file"},
		{filepath.Join(dir, "missing"), "", "no such file"},
	}
	for _, tt := range tests {
		done := make(chan struct{})
		var b []byte
		var err error
		go func() { b, err = Read(tt.path, 10); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Fatalf("Read(%s) hangs", tt.path)
		}
		if tt.err == "" && (err != nil || string(b) != tt.want) {
			t.Errorf("Read(%s) = %q, %v; want %q", tt.path, b, err, tt.want)
		}
		if tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)) {
			t.Errorf("Read(%s) error %v, want one saying %q", tt.path, err, tt.err)
		}
	}
}
