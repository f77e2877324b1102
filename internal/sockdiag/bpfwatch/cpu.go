package bpfwatch

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// CPU reads the CPU time used by a cgroup: for a container, every process in it. It is
// the backup signal for what the programs cannot see (bytes on a unix connection kept
// open): an idle app uses next to none (0 µs a second for unicorn and sact's test
// server here), a request hundreds of microseconds (450-2200 µs measured).
type CPU struct {
	path string // cpuacct.usage (v1, nanoseconds) or cpu.stat (v2, usage_usec)
	v2   bool
}

// CgroupCPU finds the cgroup of process pid (for a container, its first process's)
// from /proc/PID/cgroup: the cgroup v1 cpuacct hierarchy's if there is one, else the
// cgroup2 one. The cgroup is found once; a container stays in its cgroup for life. A
// process in the calling process's own cgroup, or in the root, has no CPU time of its
// own to read (a plain process app that sact runs, say): that is an error.
func CgroupCPU(pid int) (*CPU, error) {
	v1, haveV1, v2, haveV2, err := cgroupsOf(strconv.Itoa(pid))
	if err != nil {
		return nil, fmt.Errorf("finding the cgroup of process %d: %w", pid, err)
	}
	s1, _, s2, _, err := cgroupsOf("self")
	if err != nil {
		return nil, fmt.Errorf("finding sact's own cgroup: %w", err)
	}
	if haveV1 && (v1 == "/" || v1 == s1) {
		return nil, fmt.Errorf("process %d has no cpuacct cgroup of its own (it is in %s, as sact is)", pid, v1)
	}
	if !haveV1 && haveV2 && (v2 == "/" || v2 == s2) {
		return nil, fmt.Errorf("process %d has no cgroup of its own (it is in %s, as sact is)", pid, v2)
	}
	mounts, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	if haveV1 {
		if mnt, ok := findMount(mounts, "cgroup", "cpuacct"); ok {
			return checkCPU(&CPU{path: filepath.Join(mnt, v1, "cpuacct.usage")})
		}
	}
	if haveV2 {
		if mnt, ok := findMount(mounts, "cgroup2", ""); ok {
			return checkCPU(&CPU{path: filepath.Join(mnt, v2, "cpu.stat"), v2: true})
		}
	}
	return nil, fmt.Errorf("process %d is in no cgroup that accounts CPU time (no cpuacct v1 hierarchy or cgroup2 mounted)", pid)
}

// cgroupsOf reads /proc/PROC/cgroup: the process's cgroup in the v1 cpuacct hierarchy
// and in the v2 one.
func cgroupsOf(proc string) (v1 string, haveV1 bool, v2 string, haveV2 bool, err error) {
	b, err := os.ReadFile("/proc/" + proc + "/cgroup")
	if err != nil {
		return "", false, "", false, err
	}
	for line := range strings.Lines(string(b)) {
		// hierarchy-ID:controllers:path
		f := strings.SplitN(strings.TrimSpace(line), ":", 3)
		if len(f) != 3 {
			continue
		}
		if f[0] == "0" && f[1] == "" {
			v2, haveV2 = f[2], true
			continue
		}
		for c := range strings.SplitSeq(f[1], ",") {
			if c == "cpuacct" {
				v1, haveV1 = f[2], true
			}
		}
	}
	return v1, haveV1, v2, haveV2, nil
}

func checkCPU(c *CPU) (*CPU, error) {
	if _, err := c.Read(); err != nil {
		return nil, err
	}
	return c, nil
}

// findMount returns where the root of a hierarchy of fstype is mounted, whose super
// options include option (if not "").
func findMount(mountinfo []byte, fstype, option string) (string, bool) {
	for line := range strings.Lines(string(mountinfo)) {
		pre, post, ok := strings.Cut(strings.TrimSpace(line), " - ")
		if !ok {
			continue
		}
		pf, sf := strings.Fields(pre), strings.Fields(post)
		if len(pf) < 5 || len(sf) < 3 || sf[0] != fstype || pf[3] != "/" {
			continue
		}
		if option != "" && !strings.Contains(","+sf[2]+",", ","+option+",") {
			continue
		}
		return unescapeMount(pf[4]), true
	}
	return "", false
}

// Read returns the CPU time used so far.
func (c *CPU) Read() (time.Duration, error) {
	b, err := os.ReadFile(c.path)
	if err != nil {
		return 0, fmt.Errorf("reading CPU time: %w", err)
	}
	if !c.v2 {
		ns, err := strconv.ParseUint(string(bytes.TrimSpace(b)), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("reading CPU time from %s: %w", c.path, err)
		}
		return time.Duration(ns), nil
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			us, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("reading CPU time from %s: %w", c.path, err)
			}
			return time.Duration(us) * time.Microsecond, nil
		}
	}
	return 0, fmt.Errorf("reading CPU time from %s: no usage_usec", c.path)
}

// Path is the file Read reads.
func (c *CPU) Path() string { return c.path }
