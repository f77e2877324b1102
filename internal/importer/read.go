package importer

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// maxRead bounds each file the importer reads: nginx configs and an app's small files.
const maxRead = 4 << 20

// readSmall reads a regular file of at most maxRead bytes. An app's directory is the
// app's to write, so its Gemfile.lock may be a FIFO (an open that waits for a writer: hence
// O_NONBLOCK) or a link to /dev/zero (a read without end).
func readSmall(path string) ([]byte, error) {
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
	b, err := io.ReadAll(io.LimitReader(f, maxRead+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxRead {
		return nil, fmt.Errorf("%s is larger than %d bytes", path, maxRead)
	}
	return b, nil
}
