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
	// sees them (with docker's userns-remap, the remapped ids). The handoff directory is
	// chowned to it, and peers with another uid are refused. "" means the container runs
	// as sact's own uid (root, docker's default); the directory then stays sact's. A
	// peer with sact's own uid is always let in: it could read sact's memory anyway.
	User string
	// Authorize, if not nil, is asked about every peer that passed the uid check; an
	// error refuses the peer and is sent to the shim, so say how to fix it. It is called
	// from the connection's goroutine and may block briefly (to ask the engine for the
	// container's pid, say). nil lets in every peer that passed the uid check.
	Authorize func(Peer) error
	// Timeout bounds one peer's whole exchange. Zero means 5 seconds.
	Timeout time.Duration
	// Logger receives one line per handoff and per refused or failed peer. nil discards.
	Logger *slog.Logger
}

// Server gives the listening sockets to every peer that connects to its unix socket and
// passes the checks, until its Run ends.
//
// It serves any number of peers, one after the other or at once, rather than one per
// container start: a restart policy or a `docker restart` may start the container again
// without sact, and the sockets a second peer gets are the ones the first already has.
// What keeps others out is the directory (only this container mounts it, and it is
// 0700 and owned by the container's uid), the uid check and Options.Authorize.
type Server struct {
	path      string
	dir       string
	ln        *net.UnixListener
	files     []int // our duplicates of the listening sockets
	names     []string
	uid       int // the container's uid, or -1 when it is sact's own
	authorize func(Peer) error
	timeout   time.Duration
	log       *slog.Logger

	mu      sync.Mutex
	running bool
	closed  bool
}

// NewServer creates the directory that holds path (0700, owned by Options.User), binds a
// unix SOCK_SEQPACKET socket at path (removing a stale one) and duplicates the sockets'
// fds. It does not accept connections until Run. Call Close if Run is never called.
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
		log:       opts.Logger,
	}
	if s.timeout <= 0 {
		s.timeout = 5 * time.Second
	}
	if s.log == nil {
		s.log = slog.New(slog.NewTextHandler(io.Discard, nil))
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
	if err := os.Mkdir(s.dir, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("create handoff directory: %w", err)
	}
	fi, err := os.Lstat(s.dir)
	if err != nil {
		return fmt.Errorf("create handoff directory: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("handoff directory %s exists and is not a directory; remove it", s.dir)
	}
	if err := os.Chmod(s.dir, 0o700); err != nil {
		return fmt.Errorf("restrict handoff directory: %w", err)
	}
	if err := s.chown(s.dir, gid); err != nil {
		return err
	}
	if fi, err := os.Lstat(s.path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("%s exists and is not a socket; remove it or choose another handoff directory", s.path)
		}
		// A socket left by an earlier sact: nobody serves it any more, because the
		// directory is per app and sact's admin socket keeps a second daemon out.
		if err := os.Remove(s.path); err != nil {
			return fmt.Errorf("remove stale handoff socket: %w", err)
		}
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: s.path, Net: "unixpacket"})
	if err != nil {
		return fmt.Errorf("listen for the shim: %w", err)
	}
	if err := os.Chmod(s.path, 0o600); err != nil {
		ln.Close()
		return fmt.Errorf("restrict handoff socket: %w", err)
	}
	if err := s.chown(s.path, gid); err != nil {
		ln.Close()
		return err
	}
	s.ln = ln
	return nil
}

func (s *Server) chown(path string, gid int) error {
	if s.uid < 0 {
		return nil
	}
	if err := os.Lchown(path, s.uid, gid); err != nil {
		return fmt.Errorf("hand %s to uid %d: %w; sact must run as root to hand sockets to a container that runs as another user", path, s.uid, err)
	}
	return nil
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
		wg.Go(func() { s.serve(ctx, conn) })
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
	err := s.ln.Close() // a listener made by ListenUnix unlinks its file
	if errors.Is(err, net.ErrClosed) {
		err = nil
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
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	start := time.Now()
	conn.SetDeadline(start.Add(s.timeout))

	peer, err := peerOf(conn)
	if err != nil {
		s.log.Warn("handoff peer failed", "err", err)
		return
	}
	log := s.log.With("pid", peer.PID, "uid", peer.UID)
	buf := make([]byte, maxPacket)
	if err := s.hello(conn, buf); err != nil {
		log.Warn("handoff failed", "err", err)
		return
	}
	if err := s.check(peer); err != nil {
		log.Warn("handoff peer refused", "err", err)
		conn.Write(encodeError("sact refused the handoff: " + err.Error()))
		return
	}
	if err := s.send(conn, buf); err != nil {
		log.Warn("handoff failed", "err", err)
		return
	}
	log.Info("sockets handed off", "duration", time.Since(start))
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

func (s *Server) check(p Peer) error {
	if p.UID != os.Geteuid() && p.UID != s.uid {
		if s.uid < 0 {
			return fmt.Errorf("the shim runs as uid %d but sact expected uid %d (the app sets no `user:`); set the app's `user:` to the numeric uid the container runs as", p.UID, os.Geteuid())
		}
		return fmt.Errorf("the shim runs as uid %d but the app's `user:` says uid %d; make `user:` the numeric uid the container really runs as", p.UID, s.uid)
	}
	if s.authorize != nil {
		return s.authorize(p)
	}
	return nil
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
func (s *Server) send(conn *net.UnixConn, buf []byte) error {
	if _, _, err := conn.WriteMsgUnix(encode(kindFiles, encodeNames(s.names)), unix.UnixRights(s.files...), nil); err != nil {
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
