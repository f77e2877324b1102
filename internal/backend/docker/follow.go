package docker

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/moby/moby/api/pkg/stdcopy"
	"github.com/moby/moby/client"

	"github.com/sact-project/sact/internal/backend"
)

// FollowLogs writes the app's last tail lines (with timestamps; all of them since since,
// if since is set) and then its new ones as the container writes them, until ctx ends or
// the container stops (then it returns nil).
func (r *Runtime) FollowLogs(ctx context.Context, spec backend.Spec, tail int, since time.Time, w io.Writer) error {
	opts := client.ContainerLogsOptions{ShowStdout: true, ShowStderr: true, Follow: true, Timestamps: true, Tail: strconv.Itoa(tail)}
	if !since.IsZero() {
		opts.Tail = "all"
		opts.Since = strconv.FormatFloat(float64(since.UnixNano())/1e9, 'f', 9, 64)
	}
	rc, err := r.cli.ContainerLogs(ctx, containerRef(spec), opts)
	if err != nil {
		return fmt.Errorf("following the logs of container %s: %w", containerRef(spec), err)
	}
	defer rc.Close()
	stop := context.AfterFunc(ctx, func() { rc.Close() })
	defer stop()
	if _, err := stdcopy.StdCopy(w, w, rc); err != nil && ctx.Err() == nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("following the logs of container %s: %w", containerRef(spec), err)
	}
	return nil
}
