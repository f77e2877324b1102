// Package activator holds one state machine per app: it decides when an app starts, who waits
// for it, and when it stops. It knows nothing of Docker (it drives a backend.Runtime) and
// nothing of sockets beyond dialing the upstream to see whether the app is ready.
//
// States and transitions:
//
//	           first connection (one start per cold period)
//	stopped ─────────────────────────────────────────────▶ starting
//	   ▲  ▲                                                   │
//	   │  └──────────── start failed / timed out ─────────────┤ (waiters released at once,
//	   │                 (fail fast for a backoff)            │  new ones fail fast for a while)
//	   │                                                      ▼ ready (Readiness: accepts,
//	   │                                                      │  HTTP check, healthcheck)
//	stopping ◀──────────── idle for Idle ─────────────── running
//	   │        (connections still open are closed)           │
//	   │                                                      │ exited on its own (crash, OOM,
//	   └─▶ stopped ◀──────────────────────────────────────────┘  docker stop, removed)
//
// Connections that arrive while an app is starting or stopping wait (at most MaxWaiting of
// them); when a stop completes and someone waits, the next start begins at once, so a
// connection that races an idle stop is served by a fresh start, never dropped.
//
// Idle means: no connection accepted, none closed and no byte moved on any open connection
// for Idle. A connection that stays open but silent does not keep the app (nginx keepalive
// pools would otherwise pin every app forever) unless KeepWhileOpen is set; it is closed when
// the app stops. The idle clock is a single timer per app armed for the earliest moment the
// app could be idle, so a sleeping host costs no wakeups.
//
// A running app whose version changes (a new spec, a rebuilt image, a restart) stays
// Running while its new incarnation starts beside the old one, on a runtime that can run
// two (backend.Deployer): see deploy.go. A container started outside sact while the app
// is stopped (backend.Watcher) moves it to Running as an adoption at Run does.
package activator
