// Package smallfile reads files that someone else may have replaced with something that
// is not a small regular file: a FIFO (an open that waits for a writer), a device such as
// /dev/zero (a read without end) or a directory. The config's included and env files and
// the importer's view of an app's directory are read through it.
package smallfile

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// Read returns the content of the regular file at path if it holds at most max bytes.
// It never blocks on a FIFO and never reads more than max+1 bytes.
func Read(path string, max int) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s is not a regular file", path)
	}
	b, err := io.ReadAll(io.LimitReader(f, int64(max)+1))
	if err != nil {
		return nil, err
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, max)
	}
	return b, nil
}
