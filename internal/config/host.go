package config

import (
	"io/fs"
	"os"
	"os/user"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/sact-project/sact/internal/backend"
)

// Options are what parsing needs from outside the file: the kinds of apps, and what the
// checks may learn of the host.
type Options struct {
	// Kinds are the kinds an app may be, in the order their names are listed in
	// messages (internal/kinds.All for sact itself). A config with apps needs at least
	// one.
	Kinds []backend.Kind
	// Host is every look at the machine: the directories of unix sockets, the accounts of
	// socket owners, included and env files. Nil means OS.
	Host Host
}

func (o Options) host() Host {
	if o.Host == nil {
		return OS{}
	}
	return o.Host
}

// Host is what the config's checks may learn of the machine they run on. Parsing looks
// at nothing else, so that tests give a fake and get the same result on every machine.
type Host interface {
	// Stat and Lstat are os.Stat and os.Lstat.
	Stat(path string) (fs.FileInfo, error)
	Lstat(path string) (fs.FileInfo, error)
	// Writable returns nil if sact may create files in dir.
	Writable(dir string) error
	// UID is sact's user id, for messages.
	UID() int
	// LookupUser and LookupGroup return user.UnknownUserError or
	// user.UnknownGroupError if the account does not exist.
	LookupUser(name string) error
	LookupGroup(name string) error
	// ReadFile reads a regular file of a bounded size (include:, env_file:).
	ReadFile(path string) ([]byte, error)
	// Glob is filepath.Glob.
	Glob(pattern string) ([]string, error)
}

// OS is the machine sact runs on.
type OS struct{}

func (OS) Stat(path string) (fs.FileInfo, error)  { return os.Stat(path) }
func (OS) Lstat(path string) (fs.FileInfo, error) { return os.Lstat(path) }
func (OS) Writable(dir string) error              { return unix.Access(dir, unix.W_OK) }
func (OS) UID() int                               { return os.Getuid() }
func (OS) LookupUser(name string) error           { _, err := user.Lookup(name); return err }
func (OS) LookupGroup(name string) error          { _, err := user.LookupGroup(name); return err }
func (OS) ReadFile(path string) ([]byte, error)   { return readRegular(path) }
func (OS) Glob(pattern string) ([]string, error)  { return filepath.Glob(pattern) }
