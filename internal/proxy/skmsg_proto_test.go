package proxy

// Prototypes of issue 18's approaches, measured against the relay's two paths on loopback
// in one process (so both ends' fds are at hand: the SK_MSG variants put the END sockets
// in the sockhash from user space, which the daemon would need a sock_ops program for).
// Run: go test -run XXX -bench 'ProtoPaths|ProtoBulk' ./internal/proxy/ (as root).

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// skMsgProgram: on sendmsg of a socket in the map, redirect the message into the ingress
// of its peer (by cookie), counting bytes.
func skMsgProgram(peers, socks int, flags int32) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, 20, asm.Word),
		asm.StoreMem(asm.RFP, -16, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 24, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 60, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R2, asm.Word),
		asm.LoadMem(asm.R2, asm.R6, 64, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R2, asm.Word),
		asm.LoadMapPtr(asm.R1, peers),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -16),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R2, asm.R6, 68, asm.Word), // size
		asm.AddAtomic.Mem(asm.R0, asm.R2, asm.DWord, 16),
		asm.Mov.Reg(asm.R3, asm.R0), // the peer's key, in the value
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, socks),
		asm.Mov.Imm(asm.R4, flags),
		asm.FnMsgRedirectHash.Call(),
		asm.Return(),
		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),
	}
}

// tupleKey is the key skMsgProgram builds for a socket: remote ip4, local ip4, remote
// port (network order, as loaded), local port (host order).
func tupleKey(t testing.TB, fd int) [16]byte {
	ls, err := unix.Getsockname(fd)
	if err != nil {
		t.Fatal(err)
	}
	rs, err := unix.Getpeername(fd)
	if err != nil {
		t.Fatal(err)
	}
	l, r := ls.(*unix.SockaddrInet4), rs.(*unix.SockaddrInet4)
	var k [16]byte
	copy(k[0:4], r.Addr[:])
	copy(k[4:8], l.Addr[:])
	k[10], k[11] = byte(r.Port>>8), byte(r.Port) // the kernel shifts it left 16 for sk_msg
	binary.NativeEndian.PutUint32(k[12:], uint32(l.Port))
	return k
}

func fdOf(t testing.TB, c net.Conn) int {
	fd, err := dupConn(c.(*net.TCPConn))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

func pingPong(b *testing.B, client, server net.Conn) {
	msg := make([]byte, 64)
	buf := make([]byte, 64)
	for b.Loop() {
		if _, err := client.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(server, buf); err != nil {
			b.Fatal(err)
		}
		if _, err := server.Write(msg); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(client, buf); err != nil {
			b.Fatal(err)
		}
	}
}

// protoPath makes one connection through a path: the test client's end and the test
// server's.
type protoPath func(b *testing.B) (client, server net.Conn)

func protoPaths(b *testing.B) []struct {
	name string
	mk   func(b *testing.B) protoPath
} {
	return []struct {
		name string
		mk   func(b *testing.B) protoPath
	}{
		{"direct", func(b *testing.B) protoPath {
			return func(b *testing.B) (net.Conn, net.Conn) { return connPair(b, "tcp") }
		}},
		{"splice", relayPath(ModeSplice)},
		{"kernel", relayPath(ModeKernel)},
		{"skskb-minimal", skSKBPath},
		{"skmsg-egress", skMsgPath(0)},
		{"skmsg-ingress", skMsgPath(1)},
	}
}

func relayPath(m Mode) func(b *testing.B) protoPath {
	return func(b *testing.B) protoPath {
		return func(b *testing.B) (net.Conn, net.Conn) {
			ctx, cancel := context.WithCancel(context.Background())
			b.Cleanup(cancel)
			h := startRelay(b, ctx, topology{"tcp", "tcp"}, Options{IdleTimeout: time.Hour, Mode: m})
			return h.client, h.server
		}
	}
}

func mustMap(b *testing.B, spec *ebpf.MapSpec) *ebpf.Map {
	m, err := ebpf.NewMap(spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	return m
}

func mustProg(b *testing.B, spec *ebpf.ProgramSpec, target *ebpf.Map) {
	prog, err := ebpf.NewProgram(spec)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { prog.Close() })
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{Target: target.FD(), Program: prog, Attach: spec.AttachType}); err != nil {
		b.Fatal(err)
	}
}

// skSKBPath is the floor of today's design: a stream verdict program that only looks up
// the peer by cookie and redirects to its egress, no counting, no credit.
func skSKBPath(b *testing.B) protoPath {
	socks := mustMap(b, &ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 8, ValueSize: 8, MaxEntries: 1024})
	peers := mustMap(b, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 8, ValueSize: 8, MaxEntries: 1024})
	mustProg(b, &ebpf.ProgramSpec{Type: ebpf.SkSKB, AttachType: ebpf.AttachSkSKBStreamVerdict, License: "Dual MIT/GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.FnGetSocketCookie.Call(),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.LoadMapPtr(asm.R1, peers.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "pass"),
			asm.Mov.Reg(asm.R3, asm.R0),
			asm.Mov.Reg(asm.R1, asm.R6),
			asm.LoadMapPtr(asm.R2, socks.FD()),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnSkRedirectHash.Call(),
			asm.Return(),
			asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
			asm.Return(),
		}}, socks)
	return func(b *testing.B) (net.Conn, net.Conn) {
		c, a := connPair(b, "tcp")
		u, k := connPair(b, "tcp")
		af, uf := fdOf(b, a), fdOf(b, u)
		ac, _ := unix.GetsockoptUint64(af, unix.SOL_SOCKET, unix.SO_COOKIE)
		uc, _ := unix.GetsockoptUint64(uf, unix.SOL_SOCKET, unix.SO_COOKIE)
		if err := peers.Update(ac, uc, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
		if err := peers.Update(uc, ac, ebpf.UpdateAny); err != nil {
			b.Fatal(err)
		}
		for _, p := range [][2]uint64{{ac, uint64(af)}, {uc, uint64(uf)}} {
			if err := socks.Update(p[0], p[1], ebpf.UpdateAny); err != nil {
				b.Fatal(err)
			}
		}
		a.Close() // out of Go's poller, as the kernel relay does
		u.Close()
		return c, k
	}
}

// skMsgPath redirects each end's sendmsg: flags 1 into the other end's ingress (no TCP at
// all), 0 out of sact's socket on the other side (one TCP hop per direction).
func skMsgPath(flags int32) func(b *testing.B) protoPath {
	return func(b *testing.B) protoPath {
		socks := mustMap(b, &ebpf.MapSpec{Type: ebpf.SockHash, KeySize: 16, ValueSize: 8, MaxEntries: 1024})
		peers := mustMap(b, &ebpf.MapSpec{Type: ebpf.Hash, KeySize: 16, ValueSize: 24, MaxEntries: 1024})
		mustProg(b, &ebpf.ProgramSpec{Type: ebpf.SkMsg, AttachType: ebpf.AttachSkMsgVerdict,
			Instructions: skMsgProgram(peers.FD(), socks.FD(), flags), License: "Dual MIT/GPL"}, socks)
		return func(b *testing.B) (net.Conn, net.Conn) {
			c, a := connPair(b, "tcp")
			u, k := connPair(b, "tcp")
			cf, af, uf, kf := fdOf(b, c), fdOf(b, a), fdOf(b, u), fdOf(b, k)
			from, to, all := []int{cf, kf}, []int{kf, cf}, []int{cf, kf}
			if flags == 0 {
				to, all = []int{uf, af}, []int{cf, kf, uf, af}
			}
			for _, fd := range all {
				k := tupleKey(b, fd)
				if err := socks.Update(k[:], uint64(fd), ebpf.UpdateAny); err != nil {
					b.Fatal(err)
				}
			}
			for i := range from {
				var val [24]byte
				pk, fk := tupleKey(b, to[i]), tupleKey(b, from[i])
				copy(val[:], pk[:])
				if err := peers.Update(fk[:], val[:], ebpf.UpdateAny); err != nil {
					b.Fatal(err)
				}
			}
			return c, k
		}
	}
}

// BenchmarkProtoPaths: one connection, one 64-byte message each way per op (latency).
func BenchmarkProtoPaths(b *testing.B) {
	for _, p := range protoPaths(b) {
		b.Run(p.name, func(b *testing.B) {
			c, s := p.mk(b)(b)
			pingPong(b, c, s)
		})
	}
}

// BenchmarkProtoPaths32: 32 connections at once, wrk's -c32 pattern; ns/op is the
// machine's cost per round trip (throughput).
func BenchmarkProtoPaths32(b *testing.B) {
	const n = 32
	for _, p := range protoPaths(b) {
		b.Run(p.name, func(b *testing.B) {
			mk := p.mk(b)
			var cs, ss []net.Conn
			for range n {
				c, s := mk(b)
				cs, ss = append(cs, c), append(ss, s)
			}
			for i := range n {
				// The server echoes, with read and write: io.Copy would splice(2), and
				// splice reads only TCP's receive queue, never what an SK_MSG ingress
				// redirect queued (seen: the ingress path stalled).
				go func() {
					buf := make([]byte, 64)
					for {
						n, err := ss[i].Read(buf)
						if err != nil {
							return
						}
						if _, err := ss[i].Write(buf[:n]); err != nil {
							return
						}
					}
				}()
			}
			var next atomic.Int64
			b.ResetTimer()
			var wg sync.WaitGroup
			for i := range n {
				wg.Go(func() {
					msg, buf := make([]byte, 64), make([]byte, 64)
					for next.Add(1) <= int64(b.N) {
						if _, err := cs[i].Write(msg); err != nil {
							b.Error(err)
							return
						}
						cs[i].SetReadDeadline(time.Now().Add(2 * time.Second))
						got, err := io.ReadFull(cs[i], buf)
						if errors.Is(err, os.ErrDeadlineExceeded) {
							// A reply that did not wake the reader: is it there?
							n, _ := unix.IoctlGetInt(fdOf(b, cs[i]), unix.SIOCINQ)
							cs[i].SetReadDeadline(time.Now().Add(2 * time.Second))
							more, err2 := io.ReadFull(cs[i], buf[got:])
							b.Logf("conn %d stalled with %d of 64 bytes read; FIONREAD %d; reading again: %d more, %v", i, got, n, more, err2)
							err = err2
						}
						if err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

// BenchmarkProtoBulk: one connection, the server sends 256 KiB per op to the client (a
// download); MB/s is the bulk rate.
func BenchmarkProtoBulk(b *testing.B) {
	const chunk = 256 << 10
	for _, p := range protoPaths(b) {
		b.Run(p.name, func(b *testing.B) {
			c, s := p.mk(b)(b)
			b.SetBytes(chunk)
			done := make(chan error, 1)
			go func() {
				buf := make([]byte, chunk)
				var err error
				for i := 0; i < b.N && err == nil; i++ {
					_, err = s.Write(buf)
				}
				done <- err
			}()
			buf := make([]byte, chunk)
			for range b.N {
				// A stall fails rather than hangs: the SK_MSG egress path stalls here
				// (the server's write waits for writability of its own empty send
				// buffer while the redirect target's is the full one).
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Fatalf("the download stalled: %v", err)
				}
			}
			s.Close()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkProtoHeldBack: the server writes to a client that never reads, for a second;
// the "queued-bytes" metric is how much the path let it write (the socket buffers, for a
// path with back-pressure).
func BenchmarkProtoHeldBack(b *testing.B) {
	for _, p := range protoPaths(b) {
		b.Run(p.name, func(b *testing.B) {
			_, s := p.mk(b)(b)
			var n int64
			buf := make([]byte, 64<<10)
			for b.Loop() {
				s.SetWriteDeadline(time.Now().Add(time.Second))
				for {
					w, err := s.Write(buf)
					n += int64(w)
					if err != nil {
						break
					}
				}
			}
			b.ReportMetric(float64(n), "queued-bytes")
		})
	}
}

// BenchmarkProtoIdle: the memory of idle relayed connections on each relay path, per
// connection: Go memory (heap and stacks in use, the test's ends included, alike on both
// paths), the goroutines, and the kernel's slab (all four sockets and the maps; a shared
// machine, so a rough figure). 2,500 connections: each costs 4 sockets here plus the
// kernel path's 2 duplicates, and this machine's fd limit is 20,000.
func BenchmarkProtoIdle(b *testing.B) {
	const n = 2500
	slab := func() int64 {
		data, _ := os.ReadFile("/proc/meminfo")
		var v int64
		for _, l := range strings.Split(string(data), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[0] == "Slab:" {
				v, _ = strconv.ParseInt(f[1], 10, 64)
			}
		}
		return v << 10
	}
	for _, m := range []Mode{ModeSplice, ModeKernel} {
		b.Run(string(m), func(b *testing.B) {
			for b.Loop() {
				runtime.GC()
				var before, after runtime.MemStats
				runtime.ReadMemStats(&before)
				s0, g0 := slab(), runtime.NumGoroutine()
				ctx, cancel := context.WithCancel(context.Background())
				for range n {
					h := startRelay(b, ctx, topology{"tcp", "tcp"}, Options{IdleTimeout: time.Hour, Mode: m})
					write(b, h.client, "x")
					readN(b, h.server, 1)
				}
				runtime.GC()
				runtime.ReadMemStats(&after)
				s1, g1 := slab(), runtime.NumGoroutine()
				b.ReportMetric(float64(after.HeapInuse+after.StackInuse-before.HeapInuse-before.StackInuse)/n, "go-bytes/conn")
				b.ReportMetric(float64(g1-g0)/n, "goroutines/conn")
				b.ReportMetric(float64(s1-s0)/n, "slab-bytes/conn")
				cancel()
			}
		})
	}
}
