// Package upstream connects to an app's upstream without letting the app choose what sact
// connects to.
//
// sact runs as root on the host, and an app's unix upstream usually lives in a directory
// the app itself can write: `upstream: unix:/apps/x/tmp/app.sock` with
// `volumes: ["/apps/x/tmp:/app/tmp"]`. A plain dial follows symbolic links, so an app that
// replaces its socket with a link to /var/run/docker.sock (or makes tmp/ a link to
// /var/run) would have sact, and through sact every client of the app, talk to the Docker
// engine (issue 11). Dial resolves such a path in two parts:
//
//  1. The trusted prefix, from / down to the first directory an app or a local user can
//     write, is resolved one component at a time. Links found there were made by the admin
//     (/var/run -> /run) and are followed, their targets checked by the same rule. A
//     directory counts as writable by an app if it is the host source of a volume (given
//     by the caller: a container running as root writes there as host root, whatever the
//     owner), lies under the engine's data root (named volumes), is owned by anyone but
//     root (or sact's own user), or is writable by group or others.
//  2. The rest is opened beneath that directory with openat2(2) and RESOLVE_BENEATH |
//     RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV as an O_PATH file
//     descriptor. The final component is never followed, whoever owns its directory.
//
// The descriptor must be a socket; sact then connects to /proc/self/fd/N, which reaches the
// very inode that was checked: replacing the path after the check changes nothing. A link,
// a non-socket, a mount crossed or a ".." out of the directory is refused with an
// *UnsafePathError naming the path, the component and why; callers log it, count it
// (reason "upstream_unsafe") and treat the app as not accepting.
//
// Limits: a named volume is known as a path under /var/lib/docker only (the default data
// root; an engine with another data-root must keep upstreams out of it or own it
// otherwise), and a bind mount of a container sact does not run is seen only through the
// directory's owner and mode.
package upstream
