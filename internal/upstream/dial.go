package upstream

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// EngineRoots are host directories treated as writable by apps whatever their owner and
// mode: the Docker engine's default data root, under which named volumes live.
var EngineRoots = []string{"/var/lib/docker"}

// maxLinks bounds the links followed in the trusted prefix, as the kernel's own limit.
const maxLinks = 40

// Reasons an *UnsafePathError gives: a short fixed set, for logs.
const (
	ReasonSymlink     = "symlink"            // a component is a symbolic link
	ReasonNotSocket   = "not a socket"       // the final component is a file, directory, FIFO, ...
	ReasonNotRegular  = "not a regular file" // for ReadFile: a FIFO, device, directory, ...
	ReasonEscapes     = "escapes"            // leaves the writable directory, or crosses a mount
	ReasonTooManyLink = "too many links"
	ReasonHardLink    = "hard link" // beneath a writable directory, a second name of a file
	ReasonRelative    = "not absolute"
)

// UnsafePathError is a unix upstream sact refuses to connect to.
type UnsafePathError struct {
	// Path is the upstream as configured.
	Path string
	// At is the component found unsafe: Path itself, or one of its directories.
	At string
	// Dir is At's directory if the app (or a local user) can write it, or "" if no
	// directory on the way is writable (a link at the socket's own name is refused even
	// so).
	Dir string
	// Reason is one of the Reason constants.
	Reason string
	// Kind is what was found at At when it is not what was wanted ("regular file", ...).
	Kind string
	// File is set for a file sact reads (ReadFile), not an upstream it dials.
	File bool
}

func (e *UnsafePathError) Error() string {
	if e.File {
		return e.fileError()
	}
	where := ""
	if e.Dir != "" {
		where = fmt.Sprintf(" in %s, which the app or a local user can write", e.Dir)
	}
	there := "there"
	if e.Dir == "" {
		there = "at a socket's own name"
	}
	switch e.Reason {
	case ReasonSymlink:
		return fmt.Sprintf("unsafe upstream %s: %s is a symbolic link%s; sact follows no links %s, so that the app cannot point it at a host socket: let the app create its socket at %s itself, or set upstream: to a path without links", e.Path, e.At, where, there, e.Path)
	case ReasonNotSocket:
		return fmt.Sprintf("unsafe upstream %s: %s is a %s, not a socket%s; sact connects only to a socket: let the app listen at that path, or set upstream: to where it listens", e.Path, e.At, e.Kind, where)
	case ReasonEscapes:
		return fmt.Sprintf("unsafe upstream %s: %s leads out of the directory it is in or crosses a mount point; set upstream: to the socket's real path", e.Path, e.At)
	case ReasonHardLink:
		return fmt.Sprintf("unsafe upstream %s: %s is a socket with %s; sact connects only to a socket the app made there: let the app create its socket at that path itself", e.Path, e.At, "more than one name (a hard link)"+where)
	case ReasonTooManyLink:
		return fmt.Sprintf("unsafe upstream %s: more than %d symbolic links on the way; set upstream: to the socket's real path", e.Path, maxLinks)
	case ReasonRelative:
		return fmt.Sprintf("unsafe upstream %s: not an absolute path; give the socket's absolute path", e.Path)
	}
	return fmt.Sprintf("unsafe upstream %s: %s: %s", e.Path, e.At, e.Reason)
}

func (e *UnsafePathError) fileError() string {
	where := ""
	if e.Dir != "" {
		where = fmt.Sprintf(" in %s, which an app or a local user can write", e.Dir)
	}
	switch e.Reason {
	case ReasonSymlink:
		return fmt.Sprintf("unsafe file %s: %s is a symbolic link%s; sact follows no links there, so that nobody can point it at a host file: keep a regular file at %s, or give a path without links", e.Path, e.At, where, e.Path)
	case ReasonNotRegular:
		return fmt.Sprintf("unsafe file %s: %s is a %s, not a regular file%s; put a regular file there", e.Path, e.At, e.Kind, where)
	case ReasonHardLink:
		return fmt.Sprintf("unsafe file %s: %s has more than one name (a hard link)%s; put a file of its own there", e.Path, e.At, where)
	case ReasonRelative:
		return fmt.Sprintf("unsafe file %s: not an absolute path; give the file's absolute path", e.Path)
	}
	return fmt.Sprintf("unsafe file %s: %s %s%s; give the file's real path", e.Path, e.At, e.Reason, where)
}

// Dial connects to a "tcp" or "unix" upstream. A unix path goes through DialUnix with
// writable; anything else is a plain net.Dialer dial.
func Dial(ctx context.Context, network, address string, writable *Dirs) (net.Conn, error) {
	if network == "unix" {
		return DialUnix(ctx, address, writable)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// DialUnix connects to the unix stream socket at path without following a link that an app
// or a local user could have planted: writable are host directories apps can write (their
// volumes' host sources; nil: none but EngineRoots), in addition to what the file
// system's owners and modes say. See the package doc for the rule. An unsafe path is an
// *UnsafePathError; a missing or refusing socket is the usual *net.OpError.
func DialUnix(ctx context.Context, path string, writable *Dirs) (net.Conn, error) {
	fd, err := OpenSocket(path, writable)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", "/proc/self/fd/"+strconv.Itoa(fd))
	if err != nil {
		var oe *net.OpError
		if errors.As(err, &oe) {
			oe.Addr = &net.UnixAddr{Name: path, Net: "unix"} // not /proc/self/fd/N
		}
		return nil, err
	}
	return c, nil
}

// OpenSocket returns an O_PATH descriptor of the socket at path, resolved as DialUnix
// does. The caller closes it.
func OpenSocket(path string, writable *Dirs) (int, error) {
	fd, st, wdir, err := openNoLinks(path, writable)
	if err != nil {
		return -1, err
	}
	reason := ""
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFSOCK:
		reason = ReasonNotSocket
	case st.Nlink > 1 && wdir != "":
		// A socket made there has one name. A second one is a hard link to a socket
		// elsewhere (possible for a local user where fs.protected_hardlinks is 0).
		reason = ReasonHardLink
	default:
		return fd, nil
	}
	unix.Close(fd)
	ue := &UnsafePathError{Path: path, At: path, Reason: reason, Kind: kindOf(st.Mode)}
	if wdir != "" {
		ue.Dir = filepath.Dir(path)
	}
	return -1, ue
}

// openNoLinks returns an O_PATH descriptor of what is at path, resolved as the package
// doc says, and its stat; a link there is an *UnsafePathError. wdir is the first
// directory on the way an app can write, or "".
func openNoLinks(path string, writable *Dirs) (fd int, st unix.Stat_t, wdir string, err error) {
	if !filepath.IsAbs(path) {
		return -1, st, "", &UnsafePathError{Path: path, At: path, Reason: ReasonRelative}
	}
	dirfd, dir, rest, wdir, err := trustedPrefix(path, writable)
	if err != nil {
		return -1, st, "", err
	}
	defer unix.Close(dirfd)
	fd, err = openBeneath(dirfd, rest)
	switch {
	case errors.Is(err, unix.ENOSYS), errors.Is(err, unix.EPERM):
		// No openat2 (before Linux 5.6, or a seccomp filter refuses it): the same,
		// one component at a time.
		fd, err = walkBeneath(dirfd, dir, rest)
		if err != nil {
			return -1, st, wdir, classify(err, path, wdir)
		}
	case errors.Is(err, unix.ELOOP), errors.Is(err, unix.EXDEV):
		// Which component? Walk to find it, for the message.
		wfd, werr := walkBeneath(dirfd, dir, rest)
		if werr == nil { // changed in between
			unix.Close(wfd)
			werr = &UnsafePathError{At: filepath.Join(dir, rest), Reason: ReasonSymlink}
			if errors.Is(err, unix.EXDEV) {
				werr = &UnsafePathError{At: filepath.Join(dir, rest), Reason: ReasonEscapes}
			}
		}
		return -1, st, wdir, classify(werr, path, wdir)
	case err != nil:
		return -1, st, wdir, opError(path, err)
	}
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, st, wdir, opError(path, err)
	}
	if st.Mode&unix.S_IFMT == unix.S_IFLNK {
		unix.Close(fd)
		ue := &UnsafePathError{Path: path, At: path, Reason: ReasonSymlink}
		if wdir != "" {
			ue.Dir = filepath.Dir(path)
		}
		return -1, st, wdir, ue
	}
	return fd, st, wdir, nil
}

// openat2 is replaceable by tests, to exercise the fallback for kernels without it.
var openat2 = unix.Openat2

// openBeneath opens rest beneath dirfd as an O_PATH descriptor: no link (the final one
// included: with O_NOFOLLOW the link itself is opened, and then refused), no "..", no
// mount crossed.
func openBeneath(dirfd int, rest string) (int, error) {
	return openat2(dirfd, rest, &unix.OpenHow{
		Flags:   unix.O_PATH | unix.O_NOFOLLOW | unix.O_CLOEXEC,
		Resolve: unix.RESOLVE_BENEATH | unix.RESOLVE_NO_SYMLINKS | unix.RESOLVE_NO_MAGICLINKS | unix.RESOLVE_NO_XDEV,
	})
}

// walkBeneath is openBeneath without openat2: one component at a time, each opened
// O_NOFOLLOW relative to the last, refusing links and other file systems. rest is clean,
// so it holds no "..". dir names dirfd, for messages.
func walkBeneath(dirfd int, dir, rest string) (int, error) {
	var base unix.Stat_t
	if err := unix.Fstat(dirfd, &base); err != nil {
		return -1, err
	}
	comps := strings.Split(rest, "/")
	fd := dirfd
	closeFd := func() {
		if fd != dirfd {
			unix.Close(fd)
		}
	}
	for i, c := range comps {
		if c == "" || c == "." || c == ".." {
			closeFd()
			return -1, &UnsafePathError{At: filepath.Join(dir, strings.Join(comps[:i+1], "/")), Reason: ReasonEscapes}
		}
		nfd, err := unix.Openat(fd, c, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		closeFd()
		if err != nil {
			return -1, err
		}
		fd = nfd
		at := filepath.Join(dir, strings.Join(comps[:i+1], "/"))
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			closeFd()
			return -1, err
		}
		switch {
		case st.Mode&unix.S_IFMT == unix.S_IFLNK:
			closeFd()
			return -1, &UnsafePathError{At: at, Reason: ReasonSymlink}
		case st.Dev != base.Dev:
			closeFd()
			return -1, &UnsafePathError{At: at, Reason: ReasonEscapes}
		case i < len(comps)-1 && st.Mode&unix.S_IFMT != unix.S_IFDIR:
			closeFd()
			return -1, unix.ENOTDIR
		}
	}
	return fd, nil
}

// classify completes an error of walkBeneath for path.
func classify(err error, path, wdir string) error {
	var ue *UnsafePathError
	if errors.As(err, &ue) {
		ue.Path = path
		if wdir != "" {
			ue.Dir = filepath.Dir(ue.At)
		}
		return ue
	}
	return opError(path, err)
}

// trustedPrefix opens the trusted prefix of path (see the package doc) and returns it with
// its name, the rest of the path beneath it, and the first directory on the way that an
// app can write ("" if none is: then the prefix is the final component's directory).
func trustedPrefix(orig string, writable *Dirs) (dirfd int, dir, rest, wdir string, err error) {
	roots := writable
	if roots == nil {
		roots = NewDirs()
	}
	links := 0
	path := filepath.Clean(orig)
restart:
	fd, err := unix.Open("/", unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, "", "", "", opError(orig, err)
	}
	comps := strings.Split(path[1:], "/")
	cur := "/"
	for i := 0; ; i++ {
		w, err := roots.writable(fd, cur)
		if err != nil {
			unix.Close(fd)
			return -1, "", "", "", opError(orig, err)
		}
		if w {
			return fd, cur, strings.Join(comps[i:], "/"), cur, nil
		}
		if i == len(comps)-1 {
			return fd, cur, comps[i], "", nil
		}
		nfd, err := unix.Openat(fd, comps[i], unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		unix.Close(fd)
		if err != nil {
			return -1, "", "", "", opError(orig, err)
		}
		fd = nfd
		var st unix.Stat_t
		if err := unix.Fstat(fd, &st); err != nil {
			unix.Close(fd)
			return -1, "", "", "", opError(orig, err)
		}
		next := filepath.Join(cur, comps[i])
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFDIR:
			cur = next
		case unix.S_IFLNK:
			// Made by whoever may write cur, which is trusted: follow it, checking its
			// target by the same rule from the top.
			target, err := readlink(fd)
			unix.Close(fd)
			if err != nil {
				return -1, "", "", "", opError(orig, err)
			}
			if links++; links > maxLinks {
				return -1, "", "", "", &UnsafePathError{Path: orig, At: next, Reason: ReasonTooManyLink}
			}
			if !filepath.IsAbs(target) {
				target = filepath.Join(cur, target)
			}
			path = filepath.Clean(target + "/" + strings.Join(comps[i+1:], "/"))
			goto restart
		default:
			unix.Close(fd)
			return -1, "", "", "", opError(orig, unix.ENOTDIR)
		}
	}
}

func readlink(fd int) (string, error) {
	for n := 256; ; n *= 2 {
		buf := make([]byte, n)
		k, err := unix.Readlinkat(fd, "", buf)
		if err != nil {
			return "", err
		}
		if k < n {
			return string(buf[:k]), nil
		}
	}
}

// Dirs are host directories apps can write, by name and by identity (a bind source named
// through a link is the same directory). Make them once with NewDirs for many dials: each
// is looked at (stat) then, not on every dial. The zero value and nil hold EngineRoots
// only.
type Dirs struct {
	paths []string
	ids   []fileID
}

type fileID struct{ dev, ino uint64 }

// NewDirs returns the absolute paths of lists, and EngineRoots.
func NewDirs(lists ...[]string) *Dirs {
	d := &Dirs{}
	for _, list := range append(lists, EngineRoots) {
		for _, p := range list {
			if !filepath.IsAbs(p) {
				continue
			}
			p = filepath.Clean(p)
			if slices.Contains(d.paths, p) {
				continue
			}
			d.paths = append(d.paths, p)
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil {
				d.ids = append(d.ids, fileID{st.Dev, st.Ino})
			}
		}
	}
	return d
}

// Len is how many directories d holds, EngineRoots included.
func (d *Dirs) Len() int { return len(d.paths) }

// euid is sact's own user: its directories are as trusted as root's.
var euid = uint32(os.Geteuid())

// writable reports whether an app or a local user may change the entries of directory fd,
// named dir (its real path: the links on the way are resolved).
func (r *Dirs) writable(fd int, dir string) (bool, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return false, err
	}
	if st.Uid != 0 && st.Uid != euid || st.Mode&0o002 != 0 || st.Mode&0o020 != 0 && st.Gid != 0 {
		return true, nil
	}
	id := fileID{st.Dev, st.Ino}
	for _, x := range r.ids {
		if x == id {
			return true, nil
		}
	}
	for _, p := range r.paths {
		if within(dir, p) {
			return true, nil
		}
	}
	return false, nil
}

// within reports whether path is dir or lies beneath it; both are clean.
func within(path, dir string) bool {
	if dir == "/" {
		return true
	}
	return path == dir || strings.HasPrefix(path, dir+"/")
}

func opError(path string, err error) error {
	return &net.OpError{Op: "dial", Net: "unix", Addr: &net.UnixAddr{Name: path, Net: "unix"}, Err: os.NewSyscallError("open", err)}
}

func kindOf(mode uint32) string {
	switch mode & unix.S_IFMT {
	case unix.S_IFREG:
		return "regular file"
	case unix.S_IFDIR:
		return "directory"
	case unix.S_IFIFO:
		return "FIFO"
	case unix.S_IFCHR:
		return "character device"
	case unix.S_IFBLK:
		return "block device"
	case unix.S_IFSOCK:
		return "socket"
	}
	return "non-socket file"
}
