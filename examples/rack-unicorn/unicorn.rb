# unicorn configuration for the Rack app, in both of the ways sact runs it.
#
# Proxy mode: unicorn binds ENV['SOCKET_FILE'], a unix socket in the bind-mounted
# /app/tmp/sockets, and sact proxies its own listening socket to it.
#
# Handoff mode: sact passes its listening socket(s) to the container as inherited file
# descriptors (LISTEN_FDS/LISTEN_PID, systemd's protocol). unicorn >= 5.0 picks them up by
# itself, so nothing must be bound here: a `listen` line would add a second socket that
# nobody connects to (or, for the default :8080, one that fails with --network none).
worker_processes Integer(ENV['WORKER_PROCESSES'] || 2)
timeout 30
working_directory ENV['APP_PATH'] || '/app/'

if ENV['LISTEN_FDS'].to_s.empty?
  listen ENV['SOCKET_FILE'] || 8080, backlog: 2048
end
