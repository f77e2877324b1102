package daemon

import (
	"context"
	"log/slog"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notify tells systemd about sact's state (Type=notify), and on READY starts the
// watchdog pings if WatchdogSec= is set.
func notify(ctx context.Context, log *slog.Logger, state string) {
	if ok, err := sd.SdNotify(false, state); err != nil {
		log.Warn("cannot notify systemd", "state", state, "reason", err)
		return
	} else if !ok {
		return // not run by systemd
	}
	if state[:min(len(state), 7)] != "READY=1" {
		return
	}
	every, err := sd.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return
	}
	go func() {
		t := time.NewTicker(every / 2)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				sd.SdNotify(false, sd.SdNotifyWatchdog)
			}
		}
	}()
}
