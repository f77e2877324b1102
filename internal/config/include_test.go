package config

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// TestIncludeReadsOnlyFiles: include: and env_file: naming a device, a directory or a
// huge file are refused at once, never read without end (issue 14).
func TestIncludeReadsOnlyFiles(t *testing.T) {
	dir := t.TempDir()
	big := filepath.Join(dir, "big.env")
	if err := os.WriteFile(big, []byte(strings.Repeat("A=1\n", maxReadFile/4+1)), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.env")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	main := filepath.Join(dir, "sact.yaml")
	cfg := "include: [/dev/zero]\napps:\n  web:\n    image: web:1\n    port: 80\n    listen: [\"tcp:127.0.0.1:0\"]\n    env_file: /dev/zero\n  big:\n    image: web:1\n    port: 80\n    listen: [\"tcp:127.0.0.1:1\"]\n    env_file: big.env\n  dir:\n    image: web:1\n    port: 80\n    listen: [\"tcp:127.0.0.1:2\"]\n    env_file: /tmp\n  fifo:\n    image: web:1\n    port: 80\n    listen: [\"tcp:127.0.0.1:3\"]\n    env_file: fifo.env\n"
	os.WriteFile(main, []byte(cfg), 0o644)
	_, err := Load(main, testOptions())
	if err == nil {
		t.Fatal("no error")
	}
	for _, want := range []string{"/dev/zero is not a regular file", "big.env is larger than", "/tmp is not a regular file", "fifo.env is not a regular file"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not say %q:\n%v", want, err)
		}
	}
}

func TestIncludeTooMany(t *testing.T) {
	dir := t.TempDir()
	os.MkdirAll(filepath.Join(dir, "apps.d"), 0o755)
	for i := range maxIncluded + 1 {
		os.WriteFile(filepath.Join(dir, "apps.d", strconv.Itoa(i)+".yaml"), nil, 0o644)
	}
	main := filepath.Join(dir, "sact.yaml")
	os.WriteFile(main, []byte("include: [apps.d/*.yaml]\n"), 0o644)
	_, err := Load(main, testOptions())
	if err == nil || !strings.Contains(err.Error(), "more than 5000; narrow them") {
		t.Errorf("include of %d files: %v, want an error saying to narrow the pattern", maxIncluded+1, err)
	}
}
