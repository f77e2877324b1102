package daemon

import (
	"context"
	"log/slog"
	"time"

	sd "github.com/coreos/go-systemd/v22/daemon"
)

// notify tells systemd about sact's state (Type=notify).
func notify(log *slog.Logger, state string) {
	if _, err := sd.SdNotify(false, state); err != nil {
		log.Warn("cannot notify systemd", "state", state, "reason", err)
	}
}

// watchdogEvery is how often systemd wants to hear from sact (half of WatchdogSec=), or 0.
func watchdogEvery() time.Duration {
	every, err := sd.SdWatchdogEnabled(false)
	if err != nil || every <= 0 {
		return 0
	}
	return every / 2
}

// watchdog pings systemd every interval until ctx ends, but only after healthy answers
// within the interval: a ping then says the daemon works, not merely that a ticker runs.
func watchdog(ctx context.Context, log *slog.Logger, every time.Duration, healthy func(context.Context) error) {
	t := time.NewTicker(every)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		hctx, cancel := context.WithTimeout(ctx, every)
		err := healthy(hctx)
		cancel()
		if err != nil {
			if !warned && ctx.Err() == nil {
				log.Warn("not pinging systemd's watchdog", "reason", err)
				warned = true
			}
			continue
		}
		warned = false
		sd.SdNotify(false, sd.SdNotifyWatchdog)
	}
}
