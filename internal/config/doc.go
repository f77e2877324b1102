// Package config reads sact's config file: it decodes the YAML, checks every setting and
// how they fit together, fills in defaults, and returns a Config that the rest of sact can
// use without checking anything again.
//
// Every problem is reported, not just the first, each with its file, line and setting and
// a way to fix it (see Error):
//
//	sact.yaml:12: apps.web.imgae: unknown key; did you mean "image"?
//	sact.yaml:14: apps.web.idle: "soon" is not a duration; write a duration like 90s, 15m or 1h30m
//
// What an app runs is its kind's business (see package backend): the kinds given in
// Options.Kinds (internal/kinds.All) claim their keys (image:, container:, command:, and
// the settings that go with them), decode them into App.Run, and say what they cannot do.
// This package names no kind. Nor does it look at the machine except through
// Options.Host (socket directories, accounts, include: and env_file: files), so that its
// results are the same on every machine given the same Host.
//
// A complete config, with every key. Settings left out take the defaults written in the
// doc comments of Config's fields.
//
//	admin:
//	  socket: /run/sact/admin.sock      # admin API for the sact CLI
//	  listen: 127.0.0.1:9180            # optional: dashboard, /metrics and the API over HTTP
//	  hosts: [sact.example.com]         # more names the dashboard is served on (Host header)
//	  token_file: /var/lib/sact/admin.token  # credential for changes and logs over HTTP
//	defaults:                           # any app key; an app's own key replaces it whole
//	  idle: 15m                         # no new connection and no byte moved this long: stop
//	  start_timeout: 60s                # until the upstream accepts connections
//	  stop_timeout: 10s                 # between SIGTERM and SIGKILL
//	  max_waiting: 1024                 # connections held while the app starts
//	  on_exit: keep                     # or stop: what sact's exit does to running apps
//	  memory: 512m
//	pool:
//	  max_running: 40                   # least recently used idle app stops to make room
//	  start_concurrency: 2              # apps starting at once; default: the number of CPUs
//	  memory_budget: 8g                 # sum of running apps' memory limits (or measured use)
//	http:                               # front door: apps with hosts, routed by Host
//	  listen: [":8080"]
//	apps:
//	  blog:
//	    image: blog:2024                # a docker image; the container is sact-blog
//	    cmd: unicorn -c unicorn.rb      # or a list: ["unicorn", "-c", "unicorn.rb"]
//	    entrypoint: ["/usr/bin/env"]
//	    user: "1001"
//	    volumes: ["/apps/blog/tmp:/app/tmp", "blog-data:/app/data:ro"]
//	    env: {SOCKET_FILE: /app/tmp/sockets/unicorn.sock}   # or [SOCKET_FILE=/app/...]
//	    labels: {team: web}
//	    network: bridge
//	    cpus: 1.5
//	    listen:
//	      - unix:/run/sact/blog.sock
//	      - {address: "unix:/run/sact/blog-admin.sock", mode: "0660", owner: www-data, group: www-data}
//	    upstream: unix:/apps/blog/tmp/sockets/unicorn.sock   # or tcp:host:port
//	    idle: 10m
//	    keep_while_open: true           # an open connection keeps it running, even silent
//	    ready: {http: /up}              # ready when GET /up answers 200-399 (see Readiness)
//	  widget:
//	    image: widget:1
//	    hosts: ["widget.example.com"]   # served by the http front door
//	    port: 8080                      # on the container's own address
//	    depends_on: [widget-redis]      # started first, stopped after its last dependent
//	    pause_after: 1m                 # freeze first, stop after idle
//	    keep_warm: ["Mon-Fri 09:00-19:00"]
//	    min_running: 0
//	    ready: {http: {path: /health, method: HEAD, status: 200-299}}
//	  widget-redis:
//	    container: widget-redis         # made elsewhere (docker compose create): only started and stopped
//	    ready: healthcheck              # the image's HEALTHCHECK, as the engine reports it
//	  api:
//	    image: api:1
//	    listen: ["tcp:127.0.0.1:9001"]
//	    handoff: true                   # pass the listening socket in (LISTEN_FDS)
//	    network: none
//	  legacy:
//	    command: ["./server", "--port", "9002"]   # a plain process
//	    dir: /srv/legacy
//	    listen: ["tcp:127.0.0.1:9102"]
//	    port: 9002                      # of a process: 127.0.0.1:9002
//	    on_exit: stop
//
// Values:
//
//   - Durations are Go style (90s, 15m, 1h30m, 500ms) or systemd style: a plain number is
//     seconds (90), and units may be spelled out and spaced (1min, 2h 30min, 1d, 1w).
//   - Sizes are bytes (268435456) or a number with a unit, powers of 1024 as in docker,
//     in any case: 512m, 1g, 512MiB, 1.5G.
//   - Addresses are unix:/absolute/path or tcp:host:port; a bare host:port is TCP.
//   - cmd, entrypoint and command are a list, or one string split on whitespace with no
//     quoting or other shell syntax (a string holding quotes is an error: write a list).
//   - env and labels are a mapping, or a list of KEY=VALUE.
//   - YAML anchors, aliases and merge keys (<<: *anchor) work as usual.
//
// Readiness (key ready:) is when a started app gets the connections that wait for it:
//
//   - accepts (the default): its upstream accepts a connection.
//   - healthcheck: the engine reports the container healthy (its image's HEALTHCHECK,
//     learnt from the engine's health_status events, not polled), then its upstream
//     accepts. Containers only; a container without a HEALTHCHECK fails to start.
//   - {http: PATH} or {http: {path: PATH, method: GET, status: 200-399}}: a request
//     through the upstream, sent until it answers with a status in the range (200,
//     200-299...); redirects are not followed, so a 3xx is the answer. method is GET,
//     HEAD or OPTIONS; the Host header is the app's first host, else localhost. Each
//     try is bounded (2s, a 16 KiB header, the body unread).
//
// start_timeout bounds the wait whatever the readiness. With handoff: true the app takes
// its clients from the kernel's backlog itself, so ready: cannot apply. A container that
// declares itself by labels writes the same: sact.ready=healthcheck,
// sact.ready={http: /up}.
//
// Some settings are parsed and checked but not acted on by this version of sact; using one
// is an error that says so (see notYetSupported in unsupported.go).
package config
