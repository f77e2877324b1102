// Package activator holds one state machine per app: it decides when an app starts, who waits
// for it, when it is paused, thawed, evicted, refreshed and stopped, in every mode. It knows
// nothing of Docker (it drives a backend.Runtime) and nothing of sockets beyond dialing the
// upstream to see whether the app is ready.
//
// What differs between modes is only where clients, activity and open connections come
// from. A relayed app (the relay, the HTTP front door) gets its clients through Acquire and
// its connections are leases. A handed-off app accepts its connections itself: a Source,
// the kernel's view of its sockets (a client in a backlog, counters, sock_diag, CPU time),
// tells the App, and Serve turns that into the same Acquire and the same idle clock.
//
// States and transitions (the table is transitions, in states.go; setState refuses any
// other move):
//
//	                first connection                 ready: Readiness
//	  stopped ───────────────────────────▶ starting ─────────────────▶ running ◀──┐
//	   ▲ │ ▲ ▲                                │                         │ │  ▲     │
//	   │ │ │ └──── start failed, timed out ───┘                         │ │  │     │
//	   │ │ └────── exited on its own (crash, OOM, docker stop) ─────────┘ │  │     │
//	   │ └──────── adopted by Run (an instance already runs) ─────────────┼──┘     │
//	   │                                                                  │        │
//	   │        idle, evicted, manual, config changed,                    │        │ thawed
//	   │        dependents stopped, drained, sact exiting                 │        │
//	stopping ◀────────────────────────────────────────────────────────────┤        │
//	   ▲                                                      pause_after ▼        │
//	   │                                                               pausing     │
//	   │                                           (or back to running if │ frozen │
//	   │                                            the pause fails)      │        │
//	   │        idle, evicted, manual, thaw failed                        ▼        │
//	   └─────────────────────────────────────────────────────────────── paused ─▶ waking
//	                                                                     a connection
//
// Every move, as the table has them:
//
//	stopped  → starting (a connection, keep_warm, a dependent, by hand), running (adopted)
//	starting → running (ready by its Readiness: accepts, HTTP check, healthcheck),
//	           stopped (failed, timed out, exited while starting)
//	running  → stopping (idle, evicted, manual, config changed, dependents stopped,
//	           drained after a reload, sact exiting with on_exit: stop), pausing
//	           (pause_after, by hand), stopped (exited on its own)
//	stopping → stopped
//	pausing  → paused (frozen), running (the pause failed)
//	paused   → waking (a connection, or a client in a Source's backlog), stopping (idle,
//	           evicted, manual, config changed, sact exiting), stopped (exited on its own)
//	waking   → running (thawed), paused (the thaw failed; it goes on to stopping at once)
//
// Broken is not one of the
// App's states: the daemon shows it in place of the App's state while it cannot serve the
// app at all (its handoff cannot be set up), refusing its clients and retrying with
// backoff; once repaired, the App's own state shows again. A retiring App (Retire: a reload
// took it out) drains its open connections while running, and is never started again.
//
// Connections that arrive while an app is starting, stopping, pausing or waking wait (at
// most MaxWaiting of them); when a stop completes and someone waits, the next start begins
// at once, so a connection that races an idle stop is served by a fresh start, never
// dropped. An app that exits on its own soon after a start from a Source's backlog has its
// queued clients refused and is not started again for a backoff.
//
// Idle means: no connection accepted, none closed and no byte moved on any open connection
// for Idle. A connection that stays open but silent does not keep the app (nginx keepalive
// pools would otherwise pin every app forever) unless KeepWhileOpen is set; it is closed when
// the app stops. The idle clock is a single timer per app armed for the earliest moment the
// app could be idle, so a sleeping host costs no wakeups.
//
// A running app whose version changes (a new spec, a rebuilt image, a restart) stays
// Running while its new incarnation starts beside the old one, on a runtime that can run
// two (backend.Deployer): see deploy.go. A handed-off app's two share its listening
// sockets, through a Source that is a Sharer. A container started outside sact while the app
// is stopped (backend.Watcher) moves it to Running as an adoption at Run does.
//
// Goroutines: every one the App starts (starts, stops, pauses, thaws, exit watches, the
// keep_warm loop) is counted in its WaitGroup, and Run returns after all of them; Serve runs
// on its caller's goroutine, and the Source's Watch on Serve's.
package activator
