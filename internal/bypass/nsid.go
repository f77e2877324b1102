package bypass

import (
	"fmt"
	"os"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// currentNetns is the program's netns argument for "the connecting socket's own
// namespace" (BPF_F_CURRENT_NETNS, -1 as a signed 32-bit value).
const currentNetns = 0xffffffff

// netnsOf is the id, in sact's network namespace, of the namespace process pid is in,
// as bpf_sk_lookup_tcp takes it: currentNetns when it is sact's own, else the id the
// kernel gives that namespace here, assigned first if it has none.
func netnsOf(pid int) (uint32, error) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/ns/net")
	if err != nil {
		return 0, fmt.Errorf("opening the network namespace of process %d: %w", pid, err)
	}
	defer f.Close()
	var theirs, ours unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &theirs); err != nil {
		return 0, err
	}
	// The calling thread's: a thread may be in a namespace of its own (the tests').
	if err := unix.Stat("/proc/thread-self/ns/net", &ours); err != nil {
		return 0, err
	}
	if theirs.Dev == ours.Dev && theirs.Ino == ours.Ino {
		return currentNetns, nil
	}
	// rtnetlink's RTM_GETNSID; a namespace without an id here gets one (-1: the
	// kernel picks it) and is asked again.
	id, err := netlink.GetNetNsIdByFd(int(f.Fd()))
	if err == nil && id < 0 {
		if err = netlink.SetNetNsIdByFd(int(f.Fd()), -1); err == nil {
			id, err = netlink.GetNetNsIdByFd(int(f.Fd()))
		}
	}
	if err != nil {
		return 0, fmt.Errorf("the id of the network namespace of process %d: %w", pid, err)
	}
	if id < 0 {
		return 0, fmt.Errorf("the network namespace of process %d has no id here", pid)
	}
	return uint32(id), nil
}
