package listen

import (
	"fmt"
	"hash/fnv"
	"net"
	"os"

	"golang.org/x/sys/unix"
)

// Under systemd, the sockets sact binds itself (those no .socket unit holds) are put into
// the service's file descriptor store as sact stops (systemd.service(5),
// FileDescriptorStoreMax=; sd_notify(3), FDSTORE=1): systemd keeps them open across
// `systemctl restart sact` (and hands them back in LISTEN_FDS), so clients wait in the
// backlog instead of being refused. When the unit is stopped for good, systemd closes them.
// Each is stored under a name made from its address; one a new sact does not claim (its
// app was removed) is removed from the store (FDSTOREREMOVE=1), so the address is free.

// storedPrefix begins the names of the sockets sact stores.
const storedPrefix = "sact-listen-"

// storedName is the store's name for the socket at a: the FDNAME rules forbid ':'.
func storedName(a net.Addr) string {
	h := fnv.New64a()
	fmt.Fprintf(h, "%s %s", a.Network(), a.String())
	return fmt.Sprintf("%s%016x", storedPrefix, h.Sum64())
}

// StoreInSystemd puts every listening socket this process bound itself into systemd's
// file descriptor store, and returns how many. Without NOTIFY_SOCKET it does nothing.
func StoreInSystemd() (int, error) {
	if os.Getenv("NOTIFY_SOCKET") == "" {
		return 0, nil
	}
	files, addrs, err := heldFiles(false)
	if err != nil {
		return 0, err
	}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	for i, f := range files {
		state := "FDSTORE=1\nFDNAME=" + storedName(addrs[i])
		if err := notifyWithFd(state, int(f.Fd())); err != nil {
			return i, fmt.Errorf("storing the socket %s in systemd: %w", addrs[i], err)
		}
	}
	return len(files), nil
}

// forgetStored removes the socket stored as name from systemd's store.
func forgetStored(name string) error {
	return notifyWithFd("FDSTOREREMOVE=1\nFDNAME="+name, -1)
}

// notifyWithFd sends state to $NOTIFY_SOCKET, with fd attached if it is not -1.
func notifyWithFd(state string, fd int) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	s, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	var oob []byte
	if fd >= 0 {
		oob = unix.UnixRights(fd)
	}
	// A leading '@' is the abstract namespace, which SockaddrUnix understands too.
	return unix.Sendmsg(s, []byte(state), oob, &unix.SockaddrUnix{Name: path}, 0)
}
