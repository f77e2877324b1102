package importer

import "github.com/sact-project/sact/internal/smallfile"

// maxRead bounds each file the importer reads: nginx configs and an app's small files.
const maxRead = 4 << 20

// readSmall reads a regular file of at most maxRead bytes. An app's directory is the
// app's to write, so its Gemfile.lock may be a FIFO or a link to /dev/zero.
func readSmall(path string) ([]byte, error) { return smallfile.Read(path, maxRead) }
