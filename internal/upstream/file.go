package upstream

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"

	"golang.org/x/sys/unix"
)

// ReadFile reads the regular file at path, of at most max bytes, resolved as DialUnix
// resolves a socket: a file that sact reads as root and an app may have replaced
// (quiet.robots_txt in the app's own public/ directory) is never read through a link, and
// never opened at all unless it is a regular file: a FIFO would block sact, a device node
// made by a root container would be the host's disk. An unsafe path is an
// *UnsafePathError with File set; others are *fs.PathError.
func ReadFile(path string, writable *Dirs, max int64) ([]byte, error) {
	fd, st, wdir, err := openNoLinks(path, writable)
	if err != nil {
		var ue *UnsafePathError
		if errors.As(err, &ue) {
			ue.File = true
			return nil, ue
		}
		var oe *net.OpError
		if errors.As(err, &oe) {
			err = oe.Err
			var se *os.SyscallError
			if errors.As(err, &se) {
				err = se.Err
			}
		}
		return nil, &fs.PathError{Op: "open", Path: path, Err: err}
	}
	defer unix.Close(fd)
	reason := ""
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		reason = ReasonNotRegular
	case st.Nlink > 1 && wdir != "":
		reason = ReasonHardLink // a second name of a file elsewhere, /etc/shadow say
	}
	if reason != "" {
		ue := &UnsafePathError{Path: path, At: path, Reason: reason, Kind: kindOf(st.Mode), File: true}
		if wdir != "" {
			ue.Dir = filepath.Dir(path)
		}
		return nil, ue
	}
	if st.Size > max {
		return nil, fmt.Errorf("%s is %d bytes, more than the %d allowed; shorten it", path, st.Size, max)
	}
	// The O_PATH descriptor pins the checked inode; opening it again through /proc reads
	// that very file, whatever the path names now.
	f, err := os.OpenFile("/proc/self/fd/"+strconv.Itoa(fd), os.O_RDONLY|unix.O_NOCTTY, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: path, Err: errors.Unwrap(err)}
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, &fs.PathError{Op: "read", Path: path, Err: err}
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%s is more than the %d bytes allowed; shorten it", path, max)
	}
	return b, nil
}
