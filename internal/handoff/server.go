package handoff

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Socket is one listening socket to hand off, and the name the app sees for it in
// LISTEN_FDNAMES.
type Socket struct {
	// Name follows systemd's FileDescriptorName= rules: 1 to 255 printable ASCII bytes
	// without ':'. Names need not be unique.
	Name string
	// Conn is the listening socket: a *net.TCPListener, *net.UnixListener or an *os.File
	// holding one. NewServer duplicates its fd, so the caller keeps ownership of Conn and
	// may close it whenever it likes; the Server's copy lives until the Server is closed.
	Conn syscall.Conn
}

// Peer is the process at the other end of a handoff connection as the kernel saw it
// when it connected (SO_PEERCRED), in sact's own namespaces: PID is the pid on the host
// (for a container whose first process is the shim, the State.Pid that `docker inspect`
// shows), UID and GID are host ids, after any user-namespace remapping.
type Peer struct {
	PID, UID, GID int
}

// Options tunes a Server. The zero value works.
type Options struct {
	// User is the numeric "UID" or "UID:GID" the container's processes run as, as the host
	// sees them (with docker's userns-remap, the remapped ids). The handoff socket is
	// chowned to it (the directory stays sact's), and peers with another uid are
	// refused. "" means the container runs as sact's own uid (root, docker's default). A
	// peer with sact's own uid is always let in: it could read sact's memory anyway.
	User string
	// Pid, if not nil, returns the host pid of the container's first process (0 while the
	// engine has not recorded it): only that process gets the sockets. The Server caches
	// the answer and asks again only for a peer with another pid, at most once per
	// PidEvery whatever the number of peers, so that a container cannot make sact flood
	// the engine. A fresh answer with another pid refuses the peer at once; an answer of
	// 0 is asked again until the peer's Timeout.
	Pid func(ctx context.Context) (int, error)
	// Next, if not nil, names a second process let in beside Pid's while ok is true:
	// during a deploy, the first process of the app's next incarnation, which shares the
	// sockets with the running one until that one is gone. It is asked with Pid, under
	// the same cache; a pid of 0 with ok (the new container starts, the engine has not
	// recorded its pid yet) is asked again as Pid's 0 is, and no peer is refused at once
	// meanwhile.
	Next func(ctx context.Context) (pid int, ok bool, err error)
	// PidEvery is the least time between two calls of Pid. Zero means 250ms.
	PidEvery time.Duration
	// Authorize, if not nil, is asked about every peer that passed the uid and pid
	// checks; an error refuses the peer and is sent to the shim, so say how to fix it. It
	// is called from the connection's goroutine and may block briefly. nil lets in every
	// peer that passed them.
	Authorize func(Peer) error
	// MaxPeers bounds the peers served at once; one more is closed as soon as it is
	// accepted (a shim only ever needs one). Zero means 4.
	MaxPeers int
	// Timeout bounds one peer's whole exchange. Zero means 3 seconds: the engine records
	// a container's pid a moment after its first process runs.
	Timeout time.Duration
	// Logger receives one line per handoff and per refused or failed peer (at most a few
	// a second: a flood is summed up in "suppressed"), and one per repair of the handoff
	// directory. nil discards.
	Logger *slog.Logger
}

// Server gives the listening sockets to every peer that connects to its unix socket and
// passes the checks, until its Run ends.
//
// It serves any number of peers, one after the other or at once, rather than one per
// container start: a restart policy or a `docker restart` may start the container again
// without sact, and the sockets a second peer gets are the ones the first already has.
// What keeps others out is the directory (only this container mounts it; it is sact's,
// 0711, and only the socket in it is the container's), the uid check, the pid check
// (Options.Pid) and Options.Authorize. What bounds a hostile container is MaxPeers,
// Timeout and the cached pid.
type Server struct {
	path      string
	dir       string
	ln        *net.UnixListener
	sockFile  os.FileInfo // the socket file ln made, removed by Close if still there
	files     []int       // our duplicates of the listening sockets
	names     []string
	uid       int       // the container's uid, or -1 when it is sact's own
	pids      *pidCache // nil without Options.Pid
	authorize func(Peer) error
	timeout   time.Duration
	maxPeers  int
	log       *slog.Logger
	noisy     *limiter // per-peer log lines
	overCap   *limiter // "too many handoff peers"

	mu      sync.Mutex
	running bool
	closed  bool
}

// NewServer makes the directory that holds path sact's (owned by its euid, 0711: a
// container may enter it but not write in it), binds a unix SOCK_SEQPACKET socket at
// path (0600, owned by Options.User) and duplicates the sockets' fds. The directory is
// the Server's alone: anything in it, or in its place, that is not the socket (a file, a
// symlink, a directory a container left) is removed without following links, and
// logged. It does not accept connections until Run. Call Close if Run is never called.
func NewServer(path string, sockets []Socket, opts Options) (*Server, error) {
	if !filepath.IsAbs(path) {
		return nil, fmt.Errorf("handoff socket path %q must be absolute", path)
	}
	if len(path) > 107 {
		return nil, fmt.Errorf("handoff socket path %q is %d bytes, the kernel allows 107; use a shorter handoff directory", path, len(path))
	}
	if len(sockets) == 0 {
		return nil, errors.New("no sockets to hand off: an app in handoff mode needs at least one listen address")
	}
	if len(sockets) > MaxFiles {
		return nil, fmt.Errorf("%d sockets to hand off, at most %d are allowed", len(sockets), MaxFiles)
	}
	uid, gid, err := parseUser(opts.User)
	if err != nil {
		return nil, err
	}
	if uid == os.Geteuid() {
		uid = -1
	}
	s := &Server{
		path:      path,
		dir:       filepath.Dir(path),
		uid:       uid,
		authorize: opts.Authorize,
		timeout:   opts.Timeout,
		maxPeers:  opts.MaxPeers,
		log:       opts.Logger,
		noisy:     newLimiter(5, time.Second),
		overCap:   newLimiter(1, time.Second),
	}
	if s.timeout <= 0 {
		s.timeout = 3 * time.Second
	}
	if s.maxPeers <= 0 {
		s.maxPeers = 4
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.Pid != nil {
		s.pids = &pidCache{lookup: opts.Pid, next: opts.Next, every: opts.PidEvery}
		if s.pids.every <= 0 {
			s.pids.every = 250 * time.Millisecond
		}
	}
	for _, sk := range sockets {
		if err := checkName(sk.Name); err != nil {
			s.closeFiles()
			return nil, err
		}
		fd, err := dupListener(sk)
		if err != nil {
			s.closeFiles()
			return nil, err
		}
		s.files = append(s.files, fd)
		s.names = append(s.names, sk.Name)
	}
	if err := s.bind(gid); err != nil {
		s.closeFiles()
		return nil, err
	}
	return s, nil
}

// parseUser parses docker's numeric "UID" or "UID:GID". It returns -1 for what is not
// given.
func parseUser(user string) (uid, gid int, err error) {
	if user == "" {
		return -1, -1, nil
	}
	u, g, hasGroup := strings.Cut(user, ":")
	uid, err = strconv.Atoi(u)
	if err != nil || uid < 0 {
		return 0, 0, fmt.Errorf("user %q: handoff needs the numeric uid the container runs as, like \"1001\" or \"1001:1001\"; sact cannot look up names inside the image", user)
	}
	gid = -1
	if hasGroup {
		gid, err = strconv.Atoi(g)
		if err != nil || gid < 0 {
			return 0, 0, fmt.Errorf("user %q: the group must be a numeric gid, like \"1001:1001\"", user)
		}
	}
	return uid, gid, nil
}

// dupListener duplicates the socket's fd (close-on-exec, above the standard fds) after
// checking that it is a listening socket. Going through Control rather than File.Fd
// leaves the socket in non-blocking mode, which sact's own poller relies on.
func dupListener(sk Socket) (int, error) {
	if sk.Conn == nil {
		return -1, fmt.Errorf("socket %q: no listener given", sk.Name)
	}
	rc, err := sk.Conn.SyscallConn()
	if err != nil {
		return -1, fmt.Errorf("socket %q: %w", sk.Name, err)
	}
	fd := -1
	var opErr error
	err = rc.Control(func(raw uintptr) {
		if opErr = checkListening(int(raw)); opErr != nil {
			return
		}
		fd, opErr = unix.FcntlInt(raw, unix.F_DUPFD_CLOEXEC, 3)
	})
	if err == nil {
		err = opErr
	}
	if err != nil {
		return -1, fmt.Errorf("socket %q: %w", sk.Name, err)
	}
	return fd, nil
}

func checkListening(fd int) error {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return fmt.Errorf("not a socket: %w", err)
	}
	if typ == unix.SOCK_STREAM || typ == unix.SOCK_SEQPACKET {
		on, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ACCEPTCONN)
		if err != nil {
			return fmt.Errorf("read SO_ACCEPTCONN: %w", err)
		}
		if on == 0 {
			return errors.New("the socket is not listening; hand off the listener, not a connection")
		}
	}
	return nil
}

func (s *Server) bind(gid int) error {
	// The parent stays as it is if it exists; if we create it, only root may enter.
	if err := os.MkdirAll(filepath.Dir(s.dir), 0o700); err != nil {
		return fmt.Errorf("create handoff directory: %w", err)
	}
	if err := s.prepareDir(); err != nil {
		return err
	}
	// From here on the directory is sact's and nobody else may write in it, so paths in
	// it stay what we make them (a container that still mounts it read-write from an
	// earlier sact, as root, is the one exception: see secureSocket).
	if err := s.clearDir(); err != nil {
		return err
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("listen for the shim: %w", err)
	}
	if err := s.secureSocket(gid); err != nil {
		ln.Close()
		return err
	}
	// Close removes the file only while it is this socket: a newer sact (sact restart)
	// may have bound its own at the same path before this one exits.
	ln.SetUnlinkOnClose(false)
	s.sockFile, _ = os.Lstat(s.path)
	s.ln = ln
	return nil
}

// dirMode is the handoff directory's mode: the container may reach the socket in it
// (through its bind mount) but neither list nor change the directory.
const dirMode = 0o711

// prepareDir makes s.dir a directory owned by sact, dirMode. What stands in its place
// (a symlink, a file) is removed; a directory with another owner or mode is fixed through
// a descriptor, so that no link is followed.
func (s *Server) prepareDir() error {
	for range 3 {
		fd, err := unix.Open(s.dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		switch {
		case err == nil:
			err = s.fixDir(fd)
			unix.Close(fd)
			return err
		case errors.Is(err, unix.ENOENT):
			if err := os.Mkdir(s.dir, dirMode); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("create handoff directory: %w", err)
			}
		case errors.Is(err, unix.ELOOP) || errors.Is(err, unix.ENOTDIR):
			// A symlink (O_NOFOLLOW) or something else than a directory. os.Remove
			// unlinks a symlink itself, never its target.
			what := describe(s.dir)
			if err := os.Remove(s.dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return fmt.Errorf("handoff directory %s is a %s and cannot be removed: %w; remove it", s.dir, what, err)
			}
			s.log.Warn("removed what stood in place of the handoff directory", "path", s.dir, "what", what)
		default:
			return fmt.Errorf("open handoff directory %s: %w", s.dir, err)
		}
	}
	return fmt.Errorf("handoff directory %s keeps changing while sact sets it up; check what else writes in %s", s.dir, filepath.Dir(s.dir))
}

// fixDir gives the open directory fd to sact with dirMode, and logs what it was.
func (s *Server) fixDir(fd int) error {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("handoff directory %s: %w", s.dir, err)
	}
	uid, gid := os.Geteuid(), os.Getegid()
	if int(st.Uid) != uid || int(st.Gid) != gid {
		if err := unix.Fchown(fd, uid, gid); err != nil {
			return fmt.Errorf("handoff directory %s belongs to %d:%d and cannot be given back to sact: %w", s.dir, st.Uid, st.Gid, err)
		}
	}
	if st.Mode&0o7777 != dirMode {
		if err := unix.Fchmod(fd, dirMode); err != nil {
			return fmt.Errorf("restrict handoff directory %s: %w", s.dir, err)
		}
	}
	if int(st.Uid) != uid || int(st.Gid) != gid || st.Mode&0o7777 != dirMode {
		s.log.Warn("repaired the handoff directory", "path", s.dir,
			"was", fmt.Sprintf("%d:%d %#o", st.Uid, st.Gid, st.Mode&0o7777), "now", fmt.Sprintf("%d:%d %#o", uid, gid, dirMode))
	}
	return nil
}

// clearDir removes everything in s.dir: a stale socket silently (an earlier sact's: nobody
// serves it any more, the directory is per app and the admin socket keeps a second daemon
// out), anything else with a log line. os.RemoveAll never follows a symlink.
func (s *Server) clearDir() error {
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("read handoff directory: %w", err)
	}
	for _, e := range ents {
		p := filepath.Join(s.dir, e.Name())
		what := describe(p)
		if err := os.RemoveAll(p); err != nil {
			return fmt.Errorf("remove %s (a %s) from the handoff directory: %w; remove it by hand", p, what, err)
		}
		switch {
		case p == s.path && what == "socket":
		case p == s.path:
			s.log.Warn("removed what stood at the handoff socket's path", "path", p, "what", what)
		default:
			s.log.Warn("removed a stray entry from the handoff directory", "path", p, "what", what)
		}
	}
	return nil
}

// describe names the type of file at path, without following a link.
func describe(path string) string {
	fi, err := os.Lstat(path)
	if err != nil {
		return "missing file"
	}
	switch t := fi.Mode().Type(); {
	case t == 0:
		return "regular file"
	case t&fs.ModeDir != 0:
		return "directory"
	case t&fs.ModeSymlink != 0:
		return "symlink"
	case t&fs.ModeNamedPipe != 0:
		return "fifo"
	case t&fs.ModeSocket != 0:
		return "socket"
	case t&fs.ModeDevice != 0:
		return "device"
	}
	return "special file"
}

// secureSocket makes the socket file just bound 0600 and the container's. It works on an
// O_PATH descriptor opened without following links, and refuses anything but a socket:
// nothing at that path can make sact chmod or chown another file.
func (s *Server) secureSocket(gid int) error {
	fd, err := unix.Open(s.path, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("restrict handoff socket: %w", err)
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return fmt.Errorf("restrict handoff socket: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		return fmt.Errorf("%s was replaced while sact bound it; check what else writes in %s", s.path, s.dir)
	}
	// chmod(2) on the descriptor's /proc link reaches the inode the descriptor holds
	// (what fchmodat(AT_SYMLINK_NOFOLLOW) does where the kernel lacks fchmodat2).
	if err := os.Chmod(fmt.Sprintf("/proc/self/fd/%d", fd), 0o600); err != nil {
		return fmt.Errorf("restrict handoff socket: %w", err)
	}
	if s.uid < 0 {
		return nil
	}
	if err := unix.Fchownat(fd, "", s.uid, gid, unix.AT_EMPTY_PATH); err != nil {
		return fmt.Errorf("hand %s to uid %d: %w; sact must run as root to hand sockets to a container that runs as another user", s.path, s.uid, err)
	}
	return nil
}

// Recheck drops the pids the Server has cached, so that the next peer is judged on a
// fresh lookup: at the end of a deploy, a next incarnation that failed is no longer let
// in under its cached pid.
func (s *Server) Recheck() {
	if s.pids == nil {
		return
	}
	c := s.pids
	c.mu.Lock()
	defer c.mu.Unlock()
	c.pid, c.nextPid, c.nextWait = 0, 0, false
}

// Path is where the Server listens.
func (s *Server) Path() string { return s.path }

// Run accepts peers and hands them the sockets until ctx ends, then closes the Server
// (see Close) and returns nil after every peer's exchange has finished. A peer that fails
// or is refused is logged and does not end Run. Run returns an error if accepting fails
// for another reason, or if it is called twice or after Close.
func (s *Server) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running || s.closed {
		s.mu.Unlock()
		return errors.New("handoff server: Run called twice or after Close")
	}
	s.running = true
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	var wg sync.WaitGroup
	slots := make(chan struct{}, s.maxPeers)
	defer func() {
		stop()
		wg.Wait()
		s.Close()
		s.mu.Lock()
		s.closeFiles() // only now: the peers' goroutines send these fds
		s.mu.Unlock()
	}()
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept on handoff socket %s: %w", s.path, err)
		}
		select {
		case slots <- struct{}{}:
			wg.Go(func() {
				defer func() { <-slots }()
				s.serve(ctx, conn)
			})
		default:
			// A shim needs one exchange; this many at once is a container flooding
			// sact. Closing costs no goroutine and no engine call.
			conn.Close()
			s.overCap.do(func(suppressed int) {
				s.log.Warn("too many handoff peers at once; closed the new one", "max_peers", s.maxPeers, "suppressed", suppressed)
			})
		}
	}
}

// Close stops accepting, removes the socket file and releases the Server's copies of the
// listening sockets (the caller's stay open). Processes that already got them keep
// theirs. Close is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	err := s.ln.Close()
	if errors.Is(err, net.ErrClosed) {
		err = nil
	}
	if now, e := os.Lstat(s.path); e == nil && s.sockFile != nil && os.SameFile(now, s.sockFile) {
		os.Remove(s.path)
	}
	if !s.running {
		s.closeFiles() // else Run does, once its peers are done
	}
	return err
}

func (s *Server) closeFiles() {
	for _, fd := range s.files {
		unix.Close(fd)
	}
	s.files = nil
}

// serve runs one peer's exchange and logs its outcome. The hello is read before the
// peer is judged, so that a refused peer reads our error rather than a reset connection
// (closing a unix socket with unread data resets it). The sockets are sent only to a
// peer whose credentials passed and who said hello in our version.
func (s *Server) serve(ctx context.Context, conn *net.UnixConn) {
	defer conn.Close()
	start := time.Now()
	ctx, cancel := context.WithDeadline(ctx, start.Add(s.timeout))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(start.Add(s.timeout))

	peer, err := peerOf(conn)
	if err != nil {
		s.warn("handoff peer failed", "err", err)
		return
	}
	args := []any{"pid", peer.PID, "uid", peer.UID}
	buf := make([]byte, maxPacket)
	if err := s.hello(conn, buf); err != nil {
		s.warn("handoff failed", append(args, "err", err)...)
		return
	}
	next, err := s.check(ctx, peer, start)
	if err != nil {
		s.warn("handoff peer refused", append(args, "err", err)...)
		conn.Write(encodeError("sact refused the handoff: " + err.Error()))
		return
	}
	kind := byte(kindFiles)
	if next {
		// The running one holds these sockets: their mode (O_NONBLOCK, shared by every
		// holder) stays what it set, or its accept would block under it.
		kind = kindShared
		args = append(args, "next_incarnation", true)
	}
	if err := s.send(conn, buf, kind); err != nil {
		s.warn("handoff failed", append(args, "err", err)...)
		return
	}
	s.noisy.do(func(suppressed int) {
		s.log.Info("sockets handed off", append(args, "duration", time.Since(start), "suppressed", suppressed)...)
	})
}

// warn logs a peer's failure, a few a second at most: a container can connect as often
// as it likes.
func (s *Server) warn(msg string, args ...any) {
	s.noisy.do(func(suppressed int) {
		s.log.Warn(msg, append(args, "suppressed", suppressed)...)
	})
}

func peerOf(conn *net.UnixConn) (Peer, error) {
	rc, err := conn.SyscallConn()
	if err != nil {
		return Peer{}, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := rc.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Peer{}, err
	}
	if credErr != nil {
		return Peer{}, fmt.Errorf("read peer credentials: %w", credErr)
	}
	return Peer{PID: int(cred.Pid), UID: int(cred.Uid), GID: int(cred.Gid)}, nil
}

// check judges a peer, and says whether it is the next incarnation's (Options.Next).
func (s *Server) check(ctx context.Context, p Peer, connected time.Time) (next bool, err error) {
	if p.UID != os.Geteuid() && p.UID != s.uid {
		if s.uid < 0 {
			return false, fmt.Errorf("the shim runs as uid %d but sact expected uid %d (the app sets no `user:`); set the app's `user:` to the numeric uid the container runs as", p.UID, os.Geteuid())
		}
		return false, fmt.Errorf("the shim runs as uid %d but the app's `user:` says uid %d; make `user:` the numeric uid the container really runs as", p.UID, s.uid)
	}
	if s.pids != nil {
		if next, err = s.pids.match(ctx, p.PID, connected); err != nil {
			return false, err
		}
	}
	if s.authorize != nil {
		return next, s.authorize(p)
	}
	return next, nil
}

// pidCache is the container's first pid as Options.Pid last told it, shared by every
// peer of one Server.
type pidCache struct {
	lookup func(context.Context) (int, error)
	next   func(context.Context) (int, bool, error) // nil without Options.Next
	every  time.Duration

	mu  sync.Mutex
	pid int
	// nextPid is the next incarnation's first process (0: none, or not known yet);
	// nextWait says one is expected but not known yet.
	nextPid  int
	nextWait bool
	err      error
	at       time.Time     // when the last lookup began; zero before the first
	gap      time.Duration // the least time from at to the next lookup
	zeroGap  time.Duration // the gap after an answer of 0: short at first, see match
	pending  chan struct{} // closed when the lookup in flight ends; nil if none
}

// firstZeroGap is the wait after a first answer of 0: the shim of a container that has
// just started connects before the engine has recorded its pid, and every such wait adds
// to a cold start. It doubles with each further 0, up to every, so a peer that connects
// while the container does not run costs no more lookups than any other.
const firstZeroGap = 10 * time.Millisecond

// match returns nil if pid is the container's first process: at once if the cache says
// so, else after a lookup that began after the peer connected (shared with the other
// peers waiting, and at most one per c.every). A fresh answer naming another process
// refuses the peer without another lookup; "not running yet" (0) or an error is asked
// again until ctx ends, soon at first (firstZeroGap).
func (c *pidCache) match(ctx context.Context, pid int, connected time.Time) (next bool, err error) {
	for {
		c.mu.Lock()
		if c.pid != 0 && c.pid == pid {
			c.mu.Unlock()
			return false, nil
		}
		if c.nextPid != 0 && c.nextPid == pid {
			c.mu.Unlock()
			return true, nil
		}
		if c.pending == nil && !c.at.IsZero() && !c.at.Before(connected) && c.err == nil && c.pid != 0 && !c.nextWait {
			first := c.pid
			c.mu.Unlock()
			return false, fmt.Errorf("process %d is not the container's first process (that is %d); only the app's own container may fetch its sockets", pid, first)
		}
		if ch := c.pending; ch != nil {
			c.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return false, c.timedOut(pid)
			}
		}
		if wait := time.Until(c.at.Add(c.gap)); wait > 0 {
			c.mu.Unlock()
			t := time.NewTimer(wait)
			select {
			case <-t.C:
				continue
			case <-ctx.Done():
				t.Stop()
				return false, c.timedOut(pid)
			}
		}
		ch := make(chan struct{})
		c.pending, c.at = ch, time.Now()
		c.mu.Unlock()
		got, err := c.lookup(ctx)
		nextPid, nextWait := 0, false
		if c.next != nil {
			n, ok, nerr := c.next(ctx)
			if ok && nerr == nil {
				nextPid = n
			}
			nextWait = ok && (n == 0 || nerr != nil)
		}
		c.mu.Lock()
		c.pid, c.err, c.pending = got, err, nil
		c.nextPid, c.nextWait = nextPid, nextWait
		if err != nil || got == 0 || nextWait {
			c.zeroGap = min(max(2*c.zeroGap, firstZeroGap), c.every)
			c.gap = c.zeroGap
		} else {
			c.zeroGap, c.gap = 0, c.every
		}
		c.mu.Unlock()
		close(ch)
	}
}

func (c *pidCache) timedOut(pid int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err != nil {
		return fmt.Errorf("cannot tell whether process %d is the container's first process: %w", pid, c.err)
	}
	if c.pid == 0 {
		return fmt.Errorf("process %d connected but the engine reports no running first process for the container; only the app's own container may fetch its sockets", pid)
	}
	return fmt.Errorf("process %d is not the container's first process (that is %d); only the app's own container may fetch its sockets", pid, c.pid)
}

// limiter lets a few actions through per interval and counts the others: a token
// bucket of burst tokens, one back every interval.
type limiter struct {
	mu         sync.Mutex
	burst      int
	every      time.Duration
	tokens     int
	last       time.Time
	suppressed int
}

func newLimiter(burst int, every time.Duration) *limiter {
	return &limiter{burst: burst, every: every, tokens: burst}
}

// do calls f, with the count of calls suppressed since the last one, unless the bucket
// is empty.
func (l *limiter) do(f func(suppressed int)) {
	l.mu.Lock()
	now := time.Now()
	if l.last.IsZero() {
		l.last = now
	}
	if n := int(now.Sub(l.last) / l.every); n > 0 {
		l.tokens = min(l.burst, l.tokens+n)
		l.last = l.last.Add(time.Duration(n) * l.every)
	}
	if l.tokens == 0 {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	l.tokens--
	n := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	f(n)
}

// hello reads the shim's hello; a shim of another protocol version is told so.
func (s *Server) hello(conn *net.UnixConn, buf []byte) error {
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("read hello: %w", err)
	}
	kind, _, err := decode(buf[:n])
	var verr versionError
	switch {
	case errors.As(err, &verr):
		msg := fmt.Sprintf("the shim in the container speaks handoff protocol version %d but the sact daemon speaks version %d: the container runs another sact binary than the daemon; recreate the container (docker rm -f it, sact creates it again)", verr.got, protoVersion)
		conn.Write(encodeError(msg))
		return errors.New(msg)
	case err != nil:
		return fmt.Errorf("read hello: %w", err)
	case kind != kindHello:
		return fmt.Errorf("read hello: got message kind %q", kind)
	}
	return nil
}

// send sends the sockets and waits for the shim's ack.
func (s *Server) send(conn *net.UnixConn, buf []byte, files byte) error {
	if _, _, err := conn.WriteMsgUnix(encode(files, encodeNames(s.names)), unix.UnixRights(s.files...), nil); err != nil {
		return fmt.Errorf("send sockets: %w", err)
	}
	n, err := conn.Read(buf)
	if err != nil {
		return fmt.Errorf("wait for the shim's ack: %w", err)
	}
	kind, _, err := decode(buf[:n])
	var perr peerError
	switch {
	case errors.As(err, &perr):
		return fmt.Errorf("the shim failed: %s", perr.text)
	case err != nil:
		return fmt.Errorf("wait for the shim's ack: %w", err)
	case kind != kindAck:
		return fmt.Errorf("wait for the shim's ack: got message kind %q", kind)
	}
	return nil
}
