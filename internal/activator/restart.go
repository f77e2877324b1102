package activator

import (
	"context"
	"fmt"
)

// Restart restarts the app by hand (sact restart NAME, the dashboard): a running or
// paused app is stopped, closing its connections, and started again; a stopped one is
// started. It waits until the app is ready or its start failed.
//
// Today this is a stop followed by a start, so clients see a cold start; a deploy
// without one (issue 17) replaces it.
func (a *App) Restart(ctx context.Context) error {
	if err := a.StopFor(ctx, "restart"); err != nil {
		return fmt.Errorf("stopping %s to restart it: %w", a.Name(), err)
	}
	return a.Start(ctx)
}
