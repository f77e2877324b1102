package daemon

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/sact-project/sact/internal/config"
)

// AdminTokenFile is where the token that admin.listen asks for is kept: admin.token_file,
// or admin.token in the state directory.
func AdminTokenFile(cfg *config.Config, stateDir string) string {
	if cfg.Admin.TokenFile != "" {
		return cfg.Admin.TokenFile
	}
	return filepath.Join(stateDir, "admin.token")
}

// adminToken reads the admin token from path, or, when there is no file, makes one with a
// random token: root's (sact's user's), mode 0640, group admin.group. The file must be a
// regular file (a link is not followed), owned by root or sact's user, that no user
// outside root and the admin group may read; anything else is refused with how to fix it,
// because whoever reads the token can stop every app. warn says what is odd but safe.
func adminToken(path, group string) (token string, created bool, warn string, err error) {
	gid := os.Getegid()
	if group != "" {
		if gid, err = lookupGID(group); err != nil {
			return "", false, "", fmt.Errorf("admin.group %q: %w", group, err)
		}
	}
	for range 2 {
		f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
		if errors.Is(err, fs.ErrNotExist) {
			tok, err := makeToken(path, gid)
			if errors.Is(err, fs.ErrExist) {
				continue // made meanwhile: read that one
			}
			return tok, err == nil, "", err
		}
		if errors.Is(err, syscall.ELOOP) {
			return "", false, "", fmt.Errorf("admin token file %s is a symbolic link, which sact does not follow; put the file itself there, or remove the link and sact makes one", path)
		}
		if err != nil {
			return "", false, "", fmt.Errorf("reading admin token file %s: %w", path, err)
		}
		defer f.Close()
		tok, warn, err := readToken(f, path, gid)
		return tok, false, warn, err
	}
	return "", false, "", fmt.Errorf("admin token file %s keeps appearing and vanishing; is another sact using it?", path)
}

func readToken(f *os.File, path string, adminGID int) (token, warn string, err error) {
	st, err := f.Stat()
	if err != nil {
		return "", "", fmt.Errorf("reading admin token file %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return "", "", fmt.Errorf("admin token file %s is not a regular file (%v); remove it, and sact makes one", path, st.Mode().Type())
	}
	sys := st.Sys().(*syscall.Stat_t)
	perm := st.Mode().Perm()
	switch {
	case sys.Uid != 0 && int(sys.Uid) != os.Geteuid():
		return "", "", fmt.Errorf("admin token file %s belongs to uid %d, who could change it; chown root %s", path, sys.Uid, path)
	case perm&0o007 != 0:
		return "", "", fmt.Errorf("admin token file %s may be read or written by every user (mode %04o); chmod 0640 %s", path, perm, path)
	case perm&0o070 != 0 && sys.Gid != 0 && int(sys.Gid) != adminGID && int(sys.Gid) != os.Getegid():
		return "", "", fmt.Errorf("admin token file %s may be read by group %d, which is not admin.group; chgrp it to admin.group, or chmod 0600 %s", path, sys.Gid, path)
	}
	if int(sys.Gid) != adminGID {
		warn = fmt.Sprintf("its group is %d, not admin.group's %d: members of admin.group cannot read it (chgrp %d %s)", sys.Gid, adminGID, adminGID, path)
	}
	data, err := io.ReadAll(io.LimitReader(f, 4<<10))
	if err != nil {
		return "", "", fmt.Errorf("reading admin token file %s: %w", path, err)
	}
	token = strings.TrimSpace(string(data))
	if len(token) < 32 || strings.IndexFunc(token, func(r rune) bool { return r <= ' ' || r > '~' }) >= 0 {
		return "", "", fmt.Errorf("admin token file %s holds %d characters; write at least 32 printable ones without spaces (openssl rand -hex 32 > %s), or remove it and sact makes one", path, len(token), path)
	}
	return token, warn, nil
}

// makeToken writes a new token to path, which must not exist.
func makeToken(path string, gid int) (string, error) {
	b := make([]byte, 32)
	rand.Read(b)
	token := hex.EncodeToString(b)
	// 0600 until the group is right: nobody else may read it in between.
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", err
		}
		return "", fmt.Errorf("making admin token file %s: %w; make its directory writable for sact, or set admin.token_file", path, err)
	}
	err = f.Chown(-1, gid)
	if err == nil {
		err = f.Chmod(0o640)
	}
	if err == nil {
		_, err = f.WriteString(token + "\n")
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return "", fmt.Errorf("making admin token file %s: %w", path, err)
	}
	return token, nil
}

// lookupGID returns a group given by name or number.
func lookupGID(group string) (int, error) {
	if n, err := strconv.Atoi(group); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(group)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
