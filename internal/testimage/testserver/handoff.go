package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// What a hostile handoff container does to its handoff socket, run by a test as a second
// process in the container (`docker exec -e HANDOFF_FLOOD=500 sact-NAME /testserver`): not
// the container's first process, so sact must refuse it the sockets.

// handoffSocket is where sact mounts the app's handoff socket (handoff.DefaultSocket).
func handoffSocket() string { return env("HANDOFF_SOCKET", "/run/sact-handoff/handoff.sock") }

// hello is the shim's first packet in sact's handoff protocol, version 1: "sact", the
// version byte, 'H' (internal/handoff/protocol.go).
var hello = []byte("sact\x01H")

// handoffFlood connects n peers at once to the handoff socket, each saying hello like a
// shim, and prints one JSON line: how many were refused with a reason ('E'), got the
// sockets ('F', a hole), were closed without an answer, or could not connect.
func handoffFlood(n int) error {
	var refused, files, closed, dialErrs atomic.Int64
	var firstErr sync.Once
	first := ""
	var wg sync.WaitGroup
	began := time.Now()
	for range n {
		wg.Go(func() {
			c, err := net.DialTimeout("unixpacket", handoffSocket(), 10*time.Second)
			if err != nil {
				dialErrs.Add(1)
				firstErr.Do(func() { first = err.Error() })
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			if _, err := c.Write(hello); err != nil {
				closed.Add(1)
				return
			}
			buf := make([]byte, 2048)
			k, err := c.Read(buf)
			switch {
			case err != nil || k < 6:
				closed.Add(1)
			case buf[5] == 'E':
				refused.Add(1)
				firstErr.Do(func() { first = string(buf[6:k]) })
			case buf[5] == 'F':
				files.Add(1)
			default:
				closed.Add(1)
			}
		})
	}
	wg.Wait()
	return json.NewEncoder(os.Stdout).Encode(map[string]any{
		"peers": n, "refused": refused.Load(), "files": files.Load(), "closed": closed.Load(),
		"dial_errors": dialErrs.Load(), "took": time.Since(began).String(), "first": first, "pid": os.Getpid(),
	})
}

// handoffProbe tries to change the handoff directory in every way a container on an
// earlier sact could, and prints one JSON object: each attempt and its error ("" if it
// worked, which is a hole).
func handoffProbe() error {
	sock := handoffSocket()
	dir := filepath.Dir(sock)
	res := map[string]string{}
	try := func(name string, err error) {
		res[name] = ""
		if err != nil {
			res[name] = err.Error()
		}
	}
	try("create file", os.WriteFile(filepath.Join(dir, "evil"), []byte("x"), 0o644))
	try("mkdir", os.Mkdir(filepath.Join(dir, "d"), 0o755))
	try("symlink", os.Symlink("/", filepath.Join(dir, "l")))
	try("chmod dir", os.Chmod(dir, 0o777))
	try("chmod socket", os.Chmod(sock, 0o777))
	try("rename socket", os.Rename(sock, sock+".old"))
	try("remove socket", os.Remove(sock))
	if err := os.Remove(sock); err == nil || errors.Is(err, os.ErrNotExist) {
		// Gone: put a directory in its place, as the attack on sact's next start did.
		try("replace socket with a directory", os.Mkdir(sock, 0o755))
	}
	return json.NewEncoder(os.Stdout).Encode(res)
}

// handoffMode runs a HANDOFF_* mode if one is set; ok is false if none is.
func handoffMode() (ok bool, err error) {
	if v := os.Getenv("HANDOFF_FLOOD"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n <= 0 {
			return true, fmt.Errorf("HANDOFF_FLOOD=%q: want a number of peers", v)
		}
		return true, handoffFlood(n)
	}
	if os.Getenv("HANDOFF_PROBE") != "" {
		return true, handoffProbe()
	}
	return false, nil
}
