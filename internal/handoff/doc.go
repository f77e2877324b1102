// Package handoff passes an app's listening sockets from sact into its container, so that
// the app accepts its clients itself (systemd-style socket activation) instead of sact
// relaying every byte.
//
// # How it goes
//
//  1. sact owns the app's listeners (TCP or unix) and, per app, a host directory such as
//     /run/sact/handoff/NAME. NewServer makes it sact's own (root, 0711), removes
//     whatever else is in it or in its place, and binds NAME/handoff.sock in it (a unix
//     SOCK_SEQPACKET socket, 0600, owned by the uid the container runs as).
//
//  2. The container is created with two bind mounts, the sact binary read-only as its
//     entrypoint and the app's directory read-only at /run/sact-handoff, and runs
//     `sact shim -- CMD [ARG...]` (the command is below).
//
//  3. Shim connects to /run/sact-handoff/handoff.sock (or $SACT_HANDOFF_SOCKET), receives
//     the fds and their names, puts them at fd 3, 4, ... in blocking mode and without
//     close-on-exec, marks every other fd above 2 close-on-exec, sets LISTEN_FDS=n,
//     LISTEN_PID=its own pid (it execs, so the pid stays), LISTEN_FDNAMES=a:b, removes
//     LISTEN_PIDFDID, NOTIFY_SOCKET, WATCHDOG_PID, WATCHDOG_USEC and SACT_HANDOFF_SOCKET,
//     resolves CMD through PATH without a shell and execs it. It works as any user, on a
//     read-only root filesystem, in an image with nothing but the app.
//
//  4. Connections that arrive before the app accepts wait in the kernel's backlog; sact
//     does not accept on a handed-off listener (see below).
//
// The container of step 2, as docker would create it by hand:
//
//	docker create --name sact-api --network none --user 1001 \
//	  -v /usr/local/bin/sact:/sact:ro -v /run/sact/handoff/api:/run/sact-handoff:ro \
//	  --entrypoint /sact api:1 shim -- ./server --flag
//
// The shim exits 125 if it cannot get the sockets, 126 if CMD cannot be executed and 127
// if it is not found, each with one line on stderr saying what to do (the conventions of
// env(1) and `docker run`).
//
// # The protocol
//
// Every message is one SOCK_SEQPACKET packet: "sact", a version byte (1), a kind byte,
// a body. Packets keep their boundaries, so the fds cannot arrive apart from their names.
//
//	shim -> sact  'H'  hello
//	sact -> shim  'F'  count, then count x (length byte, name); SCM_RIGHTS with count fds
//	sact -> shim  'S'  as 'F', to a deploy's next incarnation: the sockets are in use by
//	                   the running one, and the shim leaves their O_NONBLOCK as it is
//	shim -> sact  'A'  ack: the fds arrived
//	either        'E'  UTF-8 text: what went wrong and how to fix it
//
// At most MaxFiles (64) sockets; names follow systemd's FileDescriptorName= rules. An
// 'E' packet is read whatever its version, so a shim and a daemon from different sact
// releases tell the user to recreate the container rather than fail obscurely. sact
// reads the hello, checks the peer, and sends 'E' instead of 'F' to a refused peer. The Server serves every peer that passes, not only the first after a start: a
// restart policy or `docker restart` may start the container without sact.
//
// # What the container gets, and what it does not
//
// Shared: the listening sockets themselves, which is the point. The app can accept on
// them, and also read their options and local address, set options on them, and call
// shutdown(2) on them, which stops them for sact too. The socket's open file description
// is shared as well, so its O_NONBLOCK flag is one flag for sact and app: the shim clears
// it (systemd's default, NonBlocking=no), and app servers set it again as they like. A deploy's next incarnation ('S') leaves it as the running one set it. For
// that reason and because the app owns the queue while it runs, sact must never call
// Accept on a handed-off listener; to learn that a client is waiting while the app is
// stopped, wait for readability (syscall.RawConn.Read) instead.
//
// Also shared: one unix socket in a directory that only this container mounts, through
// which it can get those same sockets again and nothing else.
//
// Not shared: the host's network namespace (the app can run with --network none and still
// serve host clients), sact's other fds, its admin socket, other apps' sockets, the host
// filesystem beyond the per-app directory, and the host's systemd environment.
//
// Who may connect: the per-app directory is root's, 0711, and mounted read-only (a
// container, even one running as root, can neither replace the socket nor leave anything
// for sact to follow: connect(2) needs no write access to the mount); the socket is 0600
// and the container uid's. Server also reads the peer's credentials (SO_PEERCRED) and
// refuses a uid other than the configured one (or sact's own, which could read sact's
// memory anyway). The pid it reads is the host pid, not the one inside the container, so
// Options.Pid compares it with the container's State.Pid to let in only the container's
// first process, with the answer cached and asked again at most every 250ms. During a
// deploy (Options.Next) the first process of the app's next container is let in too:
// both share the listening sockets until the old one is gone. At most
// MaxPeers (4) peers are served at once, each for at most Timeout (3s); more are closed
// as they are accepted. So a container that floods its handoff socket costs sact a few
// goroutines and a few engine calls a second, and only delays its own handoffs.
//
// The directory's parent (say /run/sact/handoff) is root's and 0711, so that a plain
// process running as its own user reaches its socket by the host path: a host user who
// happens to have the container's uid may then connect, and is refused by the pid check.
//
// # Which app servers take inherited sockets
//
// Checked against the projects' sources or documentation unless marked unverified:
//
//   - Go: github.com/coreos/go-systemd/v22/activation.Listeners() (or net.FileListener on
//     os.NewFile(3, "")).
//   - unicorn: automatically, from LISTEN_FDS (its test suite pretends to be systemd);
//     DESIGN.md records unicorn 6 serving a socket passed this way.
//   - puma: `bind_to_activated_sockets` (or `bind_to_activated_sockets 'only'` to ignore
//     the configured binds) in the config file.
//   - gunicorn: automatically, from LISTEN_FDS ("add systemd sockets support", 0.17.3;
//     `--bind fd://3` also works since 19.9).
//   - uWSGI: automatically, from LISTEN_FDS (core: uwsgi_setup_systemd). They speak the
//     uwsgi protocol unless configured otherwise; for plain HTTP on them, unverified.
//   - Node.js: server.listen({fd: 3}); the app reads LISTEN_FDS itself.
//   - PHP-FPM: not LISTEN_FDS, but its own FPM_SOCKETS="ADDR=3" variable, where ADDR must
//     equal the pool's `listen` value (fpm_sockets.c); set it in the app's env. Unverified
//     end to end.
package handoff
