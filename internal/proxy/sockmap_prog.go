package proxy

import "github.com/cilium/ebpf/asm"

// The kernel relay's program is written as instructions, like package bpfwatch's: no
// compiler is needed to build sact and nothing compiled is checked in; the kernel's
// verifier checks it at load.

// Layout of a peers map value (key: a socket's cookie): the peer's cookie, then the bytes
// the program has redirected from this socket to the peer, both u64.
const (
	peerCookie = 0
	peerBytes  = 8
	peerSize   = 16
)

// Layout of a credit map value (key: a socket's cookie): the count past which the
// program tells sact (u64), and whether it has since (u32, then 4 bytes of padding).
const (
	creditAllow   = 0
	creditFlagged = 8
	creditSize    = 16
)

// skbLen is the offset of len in struct __sk_buff (include/uapi/linux/bpf.h), a stable
// ABI that the kernel rewrites to its own layout.
const skbLen = 0

// skPass is SK_PASS: leave the bytes to the socket that received them.
const skPass = 1

// skDrop is SK_DROP: free the chunk.
const skDrop = 0

// verdictProgram is the SK_SKB stream verdict program of the active map. For each chunk
// a relayed socket receives it looks up the socket's peer by cookie, adds the chunk's
// length to the socket's counter and redirects the chunk to the peer's egress (flags 0:
// out of the peer, not into it), the peer being looked up in the targets map. A socket
// with no entry keeps its bytes (SK_PASS), which cannot happen for a socket sact put
// there: the peers entry is written before the socket enters the active map.
//
// Each socket also has a credit: how many bytes it may have redirected in all before
// sact looks (the bytes its peer had taken when sact last looked, plus creditBytes).
// The first chunk past it sends the socket's cookie to sact through the events ring.
//
// Registers: R6 the context, R7 the socket's peers entry, R8 its count.
func verdictProgram(peers, targets, credit, events int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetSocketCookie.Call(), // R1: the skb
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, peers),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),

		asm.LoadMem(asm.R2, asm.R6, skbLen, asm.Word),
		asm.JEq.Imm(asm.R2, 0, "drop"),
		asm.AddAtomic.Mem(asm.R7, asm.R2, asm.DWord, peerBytes),

		// Over its credit? Then tell sact, once, and still redirect this chunk: sact
		// takes the socket out of the active map, which leaves what arrives next in
		// its receive queue (closing the TCP window) until the peer has sent the
		// backlog.
		asm.LoadMem(asm.R8, asm.R7, peerBytes, asm.DWord),
		asm.LoadMapPtr(asm.R1, credit),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "redirect"),
		asm.LoadMem(asm.R2, asm.R0, creditAllow, asm.DWord),
		asm.JLE.Reg(asm.R8, asm.R2, "redirect"),
		asm.LoadMem(asm.R2, asm.R0, creditFlagged, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "redirect"),
		asm.StoreImm(asm.R0, creditFlagged, 1, asm.Word),
		asm.LoadMapPtr(asm.R1, events),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),

		asm.LoadMem(asm.R3, asm.R7, peerCookie, asm.DWord).WithSymbol("redirect"),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.DWord),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.LoadMapPtr(asm.R2, targets),
		asm.Mov.Reg(asm.R3, asm.RFP),
		asm.Add.Imm(asm.R3, -16),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkRedirectHash.Call(),
		asm.Return(),

		asm.Mov.Imm(asm.R0, skPass).WithSymbol("pass"),
		asm.Return(),

		// An empty chunk is a bare FIN. Redirected, it would reach the peer's send path
		// as a zero-length send, which the kernel takes for a broken pipe and reports
		// on the peer as EPIPE. The FIN itself is not lost: it ended the socket's input,
		// which wakes sact (EPOLLRDHUP), which half-closes the peer once the bytes
		// before it have left.
		asm.Mov.Imm(asm.R0, skDrop).WithSymbol("drop"),
		asm.Return(),
	}
}
