package config

import (
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/sact-project/sact/internal/kinds"
)

// testOptions parse with sact's kinds on the real machine, for tests that make what they
// look at in t.TempDir().
func testOptions() Options { return Options{Kinds: kinds.All} }

// fakeHost is a machine on which only what it lists exists: the golden files come out the
// same on every machine, whatever exists there (/run/sact where sact ran, stale sockets
// in /tmp, users). Files under testdata/ are read from the repository, which the tests
// ship with.
type fakeHost struct {
	// dirs exist and are writable.
	dirs map[string]bool
	// users and groups exist.
	users, groups map[string]bool
	// real is the directory whose files are the repository's own (testdata).
	real string
}

func newFakeHost(t *testing.T) *fakeHost {
	t.Helper()
	real, err := filepath.Abs("testdata")
	if err != nil {
		t.Fatal(err)
	}
	return &fakeHost{
		dirs:   map[string]bool{"/": true, "/tmp": true},
		users:  map[string]bool{"root": true},
		groups: map[string]bool{"root": true},
		real:   real,
	}
}

// inRepo reports whether path is the repository's own, read for real.
func (h *fakeHost) inRepo(path string) bool {
	abs, err := filepath.Abs(path)
	return err == nil && (abs == h.real || strings.HasPrefix(abs, h.real+string(filepath.Separator)))
}

func (h *fakeHost) Stat(path string) (fs.FileInfo, error) {
	if h.inRepo(path) {
		return os.Stat(path)
	}
	if h.dirs[filepath.Clean(path)] {
		return dirInfo(filepath.Base(path)), nil
	}
	return nil, &fs.PathError{Op: "stat", Path: path, Err: fs.ErrNotExist}
}

func (h *fakeHost) Lstat(path string) (fs.FileInfo, error) {
	if h.inRepo(path) {
		return os.Lstat(path)
	}
	return h.Stat(path)
}

func (h *fakeHost) Writable(dir string) error {
	if h.dirs[filepath.Clean(dir)] || h.inRepo(dir) {
		return nil
	}
	return fs.ErrPermission
}

func (h *fakeHost) UID() int { return 0 }

func (h *fakeHost) LookupUser(name string) error {
	if h.users[name] {
		return nil
	}
	return user.UnknownUserError(name)
}

func (h *fakeHost) LookupGroup(name string) error {
	if h.groups[name] {
		return nil
	}
	return user.UnknownGroupError(name)
}

func (h *fakeHost) ReadFile(path string) ([]byte, error) {
	if h.inRepo(path) {
		return readRegular(path)
	}
	return nil, &fs.PathError{Op: "open", Path: path, Err: fs.ErrNotExist}
}

func (h *fakeHost) Glob(pattern string) ([]string, error) {
	if h.inRepo(pattern) {
		return filepath.Glob(pattern)
	}
	if _, err := filepath.Match(pattern, ""); err != nil {
		return nil, err
	}
	return nil, nil
}

// dirInfo is a directory's FileInfo.
type dirInfo string

func (d dirInfo) Name() string       { return string(d) }
func (d dirInfo) Size() int64        { return 0 }
func (d dirInfo) Mode() fs.FileMode  { return fs.ModeDir | 0o755 }
func (d dirInfo) ModTime() time.Time { return time.Time{} }
func (d dirInfo) IsDir() bool        { return true }
func (d dirInfo) Sys() any           { return nil }
func (d dirInfo) String() string     { return fmt.Sprintf("dir %s", string(d)) }
