// Package bpfwatch counts, in the kernel, the connections and bytes of listening sockets
// that sact has handed to an app (handoff mode), so that sact can judge the app idle
// from what really happened rather than from what sock_diag still shows when it looks.
//
// sock_diag (package sockdiag) is a snapshot: a TCP connection that opened and closed
// between two looks and left no TIME_WAIT on the app's side (the client closed first,
// or reset) leaves no trace, and unix sockets have no counters at all. Behind nginx,
// whose connections to the app are short or pooled, that made sact stop busy apps
// (issue 12). These programs see every one.
//
//	w, err := bpfwatch.Open(bpfwatch.Options{Dir: runDir})
//	if err != nil {
//		// no BPF here: say so, and fall back to sock_diag
//	}
//	defer w.Close()
//	h, err := w.Watch(ln.Addr()) // once per handed-off listener
//	...
//	a, err := h.Activity() // each sampling period: a map lookup, about 1 µs
//	if a.Last.After(idleSince) { /* busy */ }
//
// # What is attached
//
// Open finds the cgroup2 hierarchy (or mounts one in a fresh directory under
// Options.Dir; cgroup2 mounts beside the v1 controllers Docker uses) and attaches two
// programs at its root, where every socket of the host is (all cgroup2 mounts show the
// same hierarchy; a program at the root runs for every cgroup below it):
//
//   - a sock_ops program. It runs on a few events of every TCP connection of the host
//     and returns at once unless the event is a connection the kernel accepted on a
//     watched listener (PASSIVE_ESTABLISHED, matched on the connection's local port
//     and address, or port alone for a listener on 0.0.0.0 or ::). For those it counts
//     the connection, gives it per-socket storage (slot, and its byte counters as last
//     seen; freed with the socket) and asks the kernel for three callbacks: every state
//     change (to count its end, whichever side closes first, by FIN, reset or
//     TIME_WAIT), every RTT sample (the peer acknowledged bytes it sent) and every
//     segment it sends, ACKs included (the header-option length callback, for which it
//     reserves nothing). On each it adds the growth of the kernel's bytes_received and
//     bytes_acked since the last look to the listener's counters, and stamps the time if
//     anything moved. Bytes received are seen when the app's side acknowledges them, at
//     most a delayed-ACK timeout (40 ms) later; bytes sent when the client
//     acknowledges them. The counters include one byte per FIN (it takes a sequence
//     number) and nothing for bare ACKs: a silent keep-alive connection does not look
//     busy.
//   - a cgroup/connect_unix program (kernel 6.7). It runs for every connect(2) on a
//     unix socket of the host, copies the path (the kernel's copy of the caller's
//     sockaddr, read through the kfuncs bpf_cast_to_kern_ctx and bpf_rdonly_cast, whose
//     offsets come from the kernel's BTF at Open) into a key and looks it up among the
//     watched paths. A match counts a connect and stamps the time.
//
// The programs only count: every path returns "allow", they never change a
// connection's options or data, and a connection to a port or path nobody watches
// costs a few map lookups. They are attached with bpf_links held by sact's file
// descriptors, never pinned, so they go away with sact however it ends
// (TestProgramsDieWithTheProcess); Close also unmounts the hierarchy Open mounted.
//
// The programs are built in Go as instructions (progs.go) and checked by the kernel's
// verifier at load: no compiler is needed and nothing compiled is checked in.
//
// # Limits
//
//   - Unix connections are counted when they are made; bytes on a unix connection kept
//     open (a keep-alive pool) are not seen: the kernel keeps no counters for unix
//     sockets and has no cgroup hook on their reads and writes. An sk_skb verdict
//     program on the app's accepted sockets (in a sockmap, taken from the app with
//     pidfd_getfd) does see the bytes a client sends, but it moves the socket's receive
//     path into the sockmap's, which drops ancillary data: a file descriptor passed
//     with SCM_RIGHTS arrives without it (tried on 6.18), and sk_msg programs do not
//     run for unix senders. sact does not change an app's sockets, so for an open unix
//     connection it falls back to other signals: the container's CPU time (CgroupCPU;
//     an idle app uses none, a request hundreds of microseconds) and what sock_diag
//     sees (queued bytes, connections opening and closing).
//   - A unix path is matched as the client wrote it: a client that connects through a
//     relative path, a symlink or a bind mount under another name (say, a container
//     with the socket's directory mounted elsewhere) is not counted. Watch aliases for
//     those, or rely on sock_diag for them.
//   - TCP connections still in their handshake (SYN_RECV) are not counted until it
//     completes; a connection counts from then on, accepted by the app or not.
//   - The TCP count is by local address: connections the app accepts from its own
//     sockets (made inside the container) are not seen, nor are connections of a
//     listener whose address is not watched.
//   - A slot reused after Handle.Close starts from zero; connections of the old
//     listener still open count for nobody (a generation number tells them apart).
//   - Open needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN; CAP_SYS_ADMIN to mount
//     cgroup2), a kernel with BTF, sk_storage and cgroup bpf_links (5.7; 6.7 for unix),
//     and sact in the host's cgroup namespace. When the connect_unix program cannot be
//     loaded, Open still watches TCP and UnixErr says why.
//
// # Cost
//
// Measured on this machine (kernel 6.18, 2 shared cores, TestMeasureCost): the
// kernel's own accounting of the programs' run time is about 0.5 µs per TCP connection
// (9 runs, client and server sides on loopback) that nobody watches, and 2.3 µs (19
// runs) for a short connection to a watched listener, against 60-80 µs for the
// connection itself (dial, request, response, close); the difference in wall time is
// within the noise of a shared machine. The connect_unix program takes 0.25 µs per unix
// connect(2) of the host, watched or not (TestMeasureUnixCost), against 12-16 µs for a
// connect and close. A 256 MiB download over loopback ran at 3766 MiB/s watched, 3879
// not (TestMeasureBulk: the program runs on every ACK and every segment sent). Reading
// a handle's counters takes 0.8 µs (BenchmarkActivity).
package bpfwatch
