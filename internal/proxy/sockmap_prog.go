package proxy

import "github.com/cilium/ebpf/asm"

// The kernel relay's program is written as instructions, like package bpfwatch's: no
// compiler is needed to build sact and nothing compiled is checked in; the kernel's
// verifier checks it at load.

// Layout of a peers map value (key: a socket's cookie), written by sact: the peer's
// cookie (u64) and the socket's slot in the counts map (u32, then padding).
const (
	peerCookie = 0
	peerSlot   = 8
	peerSize   = 16
)

// Layout of a counts map value (key: a socket's slot), slotCount's: the bytes the
// program has redirected from the socket to its peer (u64) and whether the socket keeps
// its input now (u32, set by the program only, then padding). The map is an array that
// sact reads through mmap(2), without a syscall.
const (
	countBytes = 0
	countKept  = 8
	countSize  = 16
)

// Layout of a credit map value (key: a socket's cookie), written by sact: the soft and
// hard credits, u64 counts; and whether the program told sact of the soft one (u32, then
// padding).
const (
	creditSoft     = 0
	creditHard     = 8
	creditNotified = 16
	creditSize     = 24
)

// skbLen is the offset of len in struct __sk_buff (include/uapi/linux/bpf.h), a stable
// ABI that the kernel rewrites to its own layout.
const skbLen = 0

// skPass is SK_PASS: leave the bytes to the socket that received them.
const skPass = 1

// skDrop is SK_DROP: free the chunk.
const skDrop = 0

// verdictProgram is the SK_SKB stream verdict program of the active map. For each chunk
// a relayed socket receives it looks up the socket's peer and slot by cookie, adds the
// chunk's length to the socket's counter in its slot and redirects the chunk to the peer's egress (flags 0:
// out of the peer, not into it), the peer being looked up in the targets map. A socket
// with no entry keeps its bytes (SK_PASS), which cannot happen for a socket sact put
// there: the peers entry is written before the socket enters the active map.
//
// Each socket also has two credits, counts of bytes redirected: past the soft one the
// program tells sact (the socket's cookie through the events ring), which moves both on
// if the peer keeps up; past the hard one the chunk and all after it stay with the
// socket (SK_PASS) and sact copies them.
//
// Registers: R6 the context, R7 the socket's counts entry, R8 its count, R9 the chunk's
// length. The stack holds the socket's cookie (-8), its peer's (-16) and its slot (-20).
func verdictProgram(peers, counts, targets, credit, events int) asm.Instructions {
	return asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.FnGetSocketCookie.Call(), // R1: the skb
		asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
		asm.LoadMapPtr(asm.R1, peers),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.LoadMem(asm.R3, asm.R0, peerCookie, asm.DWord),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.DWord),
		asm.LoadMem(asm.R3, asm.R0, peerSlot, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.LoadMapPtr(asm.R1, counts),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -20),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "pass"),
		asm.Mov.Reg(asm.R7, asm.R0),

		asm.LoadMem(asm.R9, asm.R6, skbLen, asm.Word),
		asm.JEq.Imm(asm.R9, 0, "drop"),

		// Past its hard credit, the socket keeps its bytes from then on (SK_PASS, in
		// order after all it redirected): they wait in its own queue, charged to its
		// receive buffer, so its TCP window closes as the queue fills, and sact, told
		// through the events ring, copies them to the peer itself, as fast as the peer
		// takes them. Past its soft credit, sact is told once, to look at how far the
		// peer is and move both credits on if it keeps up.
		asm.LoadMem(asm.R2, asm.R7, countKept, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "pass"),
		asm.LoadMem(asm.R8, asm.R7, countBytes, asm.DWord),
		asm.Add.Reg(asm.R8, asm.R9),
		asm.LoadMapPtr(asm.R1, credit),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "count"),
		asm.LoadMem(asm.R2, asm.R0, creditHard, asm.DWord),
		asm.JGT.Reg(asm.R8, asm.R2, "keep"),
		asm.LoadMem(asm.R2, asm.R0, creditSoft, asm.DWord),
		asm.JLE.Reg(asm.R8, asm.R2, "count"),
		asm.LoadMem(asm.R2, asm.R0, creditNotified, asm.Word),
		asm.JNE.Imm(asm.R2, 0, "count"),
		asm.StoreImm(asm.R0, creditNotified, 1, asm.Word),
		asm.LoadMapPtr(asm.R1, events),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Ja.Label("count"),

		asm.StoreImm(asm.R7, countKept, 1, asm.Word).WithSymbol("keep"),
		asm.LoadMapPtr(asm.R1, events),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -8),
		asm.Mov.Imm(asm.R3, 8),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnRingbufOutput.Call(),
		asm.Ja.Label("pass"),

		asm.AddAtomic.Mem(asm.R7, asm.R9, asm.DWord, countBytes).WithSymbol("count"),
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
