// Package sockdiag asks the kernel about the connections of sact's listening sockets,
// through NETLINK_SOCK_DIAG: inet_diag for TCP over IPv4 and IPv6, unix_diag for unix
// stream and seqpacket sockets.
//
// In handoff mode the app accepts from sact's listener itself, so sact no longer sees
// its connections; to stop the app after a spell with no connection and no traffic it
// asks the kernel instead:
//
//	p, err := sockdiag.New()
//	...
//	acts, err := p.Probe(ctx, web.Addr(), api.Addr()) // every app's listeners, once per round
//	if a := acts[0]; a.Open > 0 || a.Queued > 0 || a.LastActivity.After(idleSince) {
//		// web is busy
//	}
//
// # Namespaces
//
// A socket belongs to the network namespace it was made in, for life, and sock_diag
// sees the sockets of the namespace the netlink socket was made in. sact makes its
// listeners on the host, and the kernel makes each accepted TCP socket as a clone of
// its listener, in the listener's namespace, even when the process that calls accept
// runs in a container's namespace: a Prober made on the host sees those connections,
// and one made in the container would not (TestTCPAcceptedInOtherNetnsIsSeen).
//
// Unix sockets differ: the kernel makes the server side of a unix connection in the
// namespace of the client that connects. Clients on the host (nginx, sact itself) are
// seen; a client in another namespace that reaches the socket file through a bind
// mount is counted in Queued while it waits, but not in Open once accepted
// (TestUnixClientInOtherNetnsIsNotSeenOnceAccepted).
//
// # What is exact
//
// Each Probe is a snapshot. Per socket it is exact; across sockets it is not atomic
// (a connection accepted during the dump may be missed for that round).
//
// TCP. Listening, Open and Queued are exact: Open counts the sockets with the
// listener's local address (or port, for a listener on 0.0.0.0 or ::) that still have
// a file, so a connection waiting in the accept queue (no file yet) is only in Queued
// and one the app closed is in neither. BytesReceived and BytesSent are the kernel's
// own per-connection counters. LastActivity is exact to the kernel's clock tick (1 to
// 10 ms) while a connection, or its TIME_WAIT, is still in the kernel: tcp_info's
// last_data_recv and last_data_sent say when data last moved, and a TIME_WAIT socket's
// 60 s timer says when it was closed. What cannot be seen is a connection that opened
// and closed entirely between two probes and left no TIME_WAIT on the app's side:
// one the client closed first (the app's side is freed as soon as the client
// acknowledges its FIN) or one reset. The kernel keeps no count of connections
// accepted by a listener, so nothing short of eBPF would see those.
//
// Unix. Listening, Queued and Open (for clients in sact's namespace) are exact: an
// accepted unix socket shares its listener's path (the same socket file), so sockets
// are matched on the identity of the file (device and inode), or on the name for
// abstract sockets. The kernel keeps no byte counters and no timestamps for unix
// sockets, so BytesReceived, BytesSent and LastActivity are zero. What can be known is
// the set of open connections (ConnSet changes when any opens or closes) and the bytes
// sitting in their buffers at the instant of the probe (Pending: unread input in
// bytes, unread output as buffer memory). Traffic on an open connection that was sent
// and read entirely between two probes, and a connection that opened and closed
// between them, leave no trace. With an open connection an app is busy anyway; what a
// caller may miss is short connections arriving less often than it probes.
//
// Handshakes not yet complete (SYN_RECV) are not counted anywhere.
//
// # Cost
//
// A Probe dumps, once per address family it is asked about, the TCP listeners and then
// the TCP connections of the namespace, and once the unix sockets; it then matches
// every address asked about from what came back. The kernel cannot look up a
// listener's connections directly: a dump walks the whole established hash (262144
// buckets on a 24 GiB machine, about 0.2 ms; the table grows with memory) whatever it
// is filtered on. So a round of 1000 listeners costs about what one listener costs
// (BenchmarkProbeRound: about 0.7 ms for 1000 TCP listeners, 1.9 ms for 1000 unix ones,
// against 0.2 ms for one), plus about a microsecond per connection in the namespace
// when the kernel cannot filter by port (it can when all TCP addresses of a family
// share one). Call Probe once per round with every listener, not once per app.
//
// The netlink requests are built with golang.org/x/sys/unix: two request types, no
// multicast, about 150 lines, which a netlink library would shorten by a few dozen at
// the price of a dependency (mdlayher/netlink) or of dumping every socket on every
// call without the kernel-side port filter (vishvananda/netlink's SocketDiagTCPInfo).
package sockdiag
