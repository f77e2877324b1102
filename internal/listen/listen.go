package listen

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Listen binds a. For a unix socket it first removes a stale socket file left by a sact
// that did not exit cleanly (nothing answers on it), but never a socket something still
// serves, nor a file that is not a socket; then it applies Mode (0666 if zero), Owner and
// Group, so that nginx running as another user can connect.
func Listen(ctx context.Context, a Addr) (net.Listener, error) {
	var lc net.ListenConfig
	if a.Network != "unix" {
		ln, err := lc.Listen(ctx, a.Network, a.Address)
		if err != nil {
			hint := ""
			if errors.Is(err, syscall.EADDRINUSE) {
				hint = "; another process listens there (ss -ltnp shows which): stop it or choose another port"
			}
			return nil, fmt.Errorf("listening on %s: %w%s", a, err, hint)
		}
		hold(ln, false)
		return ln, nil
	}
	if err := removeStale(ctx, a.Address); err != nil {
		return nil, fmt.Errorf("listening on %s: %w", a, err)
	}
	ln, err := lc.Listen(ctx, "unix", a.Address)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w%s", a, err, bindHint(a.Address, err))
	}
	if err := a.applyPerms(); err != nil {
		ln.Close()
		return nil, fmt.Errorf("listening on %s: %w", a, err)
	}
	hold(ln, false)
	return ln, nil
}

// removeStale removes the socket file at path if no one listens on it.
func removeStale(ctx context.Context, path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return fmt.Errorf("%s exists and is not a socket; remove it or choose another path", path)
	}
	d := net.Dialer{Timeout: time.Second}
	c, err := d.DialContext(ctx, "unix", path)
	if err == nil {
		c.Close()
		return fmt.Errorf("%s is in use by another process (another sact?); stop it or choose another path", path)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("checking whether %s is still in use: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale socket: %w", err)
	}
	return nil
}

func (a Addr) applyPerms() error {
	mode := a.Mode
	if mode == 0 {
		mode = 0o666
	}
	// The socket is changed through a descriptor of the file just bound, never by path: in a
	// directory someone else can write, the name may be swapped for a link to a host file
	// between bind and chmod, and os.Chmod would follow it.
	fd, err := openSocketFile(a.Address)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := unix.Fchmodat(unix.AT_FDCWD, fdPath(fd), uint32(mode), 0); err != nil {
		return fmt.Errorf("setting the socket's mode: %w", err)
	}
	if a.Owner == "" && a.Group == "" {
		return nil
	}
	uid, gid := -1, -1
	if a.Owner != "" {
		id, err := lookupID(a.Owner, func(s string) (string, error) {
			u, err := user.Lookup(s)
			if err != nil {
				return "", err
			}
			return u.Uid, nil
		})
		if err != nil {
			return fmt.Errorf("socket owner: %w", err)
		}
		uid = id
	}
	if a.Group != "" {
		id, err := lookupID(a.Group, func(s string) (string, error) {
			g, err := user.LookupGroup(s)
			if err != nil {
				return "", err
			}
			return g.Gid, nil
		})
		if err != nil {
			return fmt.Errorf("socket group: %w", err)
		}
		gid = id
	}
	if err := unix.Fchownat(fd, "", uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("setting the socket's owner: %w", err)
	}
	return nil
}

// openSocketFile opens path without following a link in its last component, as an O_PATH
// descriptor, and refuses anything that is not a socket.
func openSocketFile(path string) (int, error) {
	fd, err := unix.Open(path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, fmt.Errorf("opening the socket file to set its permissions: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("checking the socket file: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		unix.Close(fd)
		return -1, fmt.Errorf("%s was replaced after bind (now mode %#o, not a socket): something else can write its directory; choose a directory only root can write, like /run/sact", path, st.Mode)
	}
	return fd, nil
}

// fdPath names an O_PATH descriptor's file for calls that take a path: chmod through it
// changes that very inode, whatever its name is now.
func fdPath(fd int) string { return "/proc/self/fd/" + strconv.Itoa(fd) }

// lookupID returns s as a number if it is one, or looks the name up.
func lookupID(s string, lookup func(string) (string, error)) (int, error) {
	if n, err := strconv.Atoi(s); err == nil {
		return n, nil
	}
	id, err := lookup(s)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(id)
}

// bindHint says how to fix a unix socket that cannot be made where it is asked.
func bindHint(path string, err error) string {
	dir := filepath.Dir(path)
	switch {
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Sprintf("; sact may not create files in %s: make it writable for sact's user, or choose another directory", dir)
	case errors.Is(err, syscall.EROFS):
		return fmt.Sprintf("; %s is on a read-only filesystem: choose another directory (like /run/sact)", dir)
	case errors.Is(err, syscall.ENOSPC), errors.Is(err, syscall.EDQUOT):
		return fmt.Sprintf("; the filesystem of %s is full: free space or choose another directory", dir)
	case errors.Is(err, syscall.ENOENT):
		return fmt.Sprintf("; %s does not exist: create it (systemd: RuntimeDirectory=), or choose another directory", dir)
	case errors.Is(err, syscall.EINVAL) && len(path) > 107:
		return "; the path is longer than a unix socket address may be (107 bytes): choose a shorter one"
	}
	return ""
}
