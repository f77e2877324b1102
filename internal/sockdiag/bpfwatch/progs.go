package bpfwatch

import (
	"fmt"

	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/btf"
)

// The programs are written as instructions here rather than compiled from C: nothing
// compiled is checked in, no compiler is needed to build sact, and the kernel's verifier
// checks them at load time like any other. Each ends in "return 1" (allow) on every path.

// Offsets in struct bpf_sock_ops (include/uapi/linux/bpf.h), a stable ABI: a context
// access is rewritten by the kernel, so these are the UAPI layout, whatever the kernel's
// own. TestContextLayout checks them against the kernel's BTF.
const (
	opsOp         = 0
	opsArgs       = 4 // __u32 args[4]
	opsFamily     = 20
	opsLocalIP4   = 28
	opsLocalIP6   = 48
	opsLocalPort  = 68 // host byte order
	opsFullsock   = 72
	opsCbFlags    = 84 // bpf_sock_ops_cb_flags
	opsBytesRecv  = 168
	opsBytesAcked = 176
	opsSk         = 184
)

// sock_ops operations and callback flags (enum in include/uapi/linux/bpf.h).
const (
	opPassiveEstablished = 5
	opStateCB            = 10
	opRTTCB              = 12
	opHdrOptLenCB        = 14

	cbStateFlag       = 1 << 2 // BPF_SOCK_OPS_STATE_CB_FLAG
	cbRTTFlag         = 1 << 3 // BPF_SOCK_OPS_RTT_CB_FLAG
	cbWriteHdrOptFlag = 1 << 6 // BPF_SOCK_OPS_WRITE_HDR_OPT_CB_FLAG

	// callbacks is what a watched connection asks for: every state change (to see it
	// close), every RTT sample (bytes it sent were acknowledged), and every segment it
	// sends, ACKs included (HDR_OPT_LEN_CB asks how much option space to reserve, and
	// the program reserves none): bytes received are acknowledged within the delayed
	// ACK timeout (40 ms at most on Linux), so they count as they move. (Segments
	// received have no callback of their own on the fast path: the PARSE_ALL_HDR_OPT
	// flag only runs on the slow one.)
	callbacks = cbStateFlag | cbRTTFlag | cbWriteHdrOptFlag

	tcpClose = 7 // TCP_CLOSE

	afInet  = 2
	afInet6 = 10

	skStorageGetCreate = 1 // BPF_SK_STORAGE_GET_F_CREATE
)

// Layout of the maps' values, shared with watcher.go.
const (
	// tcpKey: family u32, port u32 (host order), address [16]byte (network order; zero
	// for a listener on 0.0.0.0 or ::).
	tcpKeySize = 24

	// slotVal (the value of both listener maps): slot u32, gen u32.
	slotValSize = 8

	// counters (the array, one per slot): gen, connects, closes, bytes in, bytes out,
	// last activity (CLOCK_MONOTONIC ns), all u64.
	ctrGen      = 0
	ctrConnects = 8
	ctrCloses   = 16
	ctrBytesIn  = 24
	ctrBytesOut = 32
	ctrLast     = 40
	ctrSize     = 48

	// connState (per-socket storage): slot+1 u32 (0: not, or no longer, counted), gen
	// u32, bytes received and acked as last seen, u64.
	csSlot     = 0
	csGen      = 4
	csRecv     = 8
	csAcked    = 16
	csSize     = 24
	unixKeyLen = 108 // sizeof(sun_path)
)

// storeZero64 is *(u64 *)(dst + off) = 0. (asm.StoreImm refuses DWord, whose 64-bit
// constant an instruction cannot hold; zero it can.)
func storeZero64(dst asm.Register, off int16) asm.Instruction {
	return asm.Instruction{OpCode: asm.StoreImmOp(asm.DWord), Dst: dst, Offset: off}
}

func exitAllow() asm.Instructions {
	return asm.Instructions{asm.Mov.Imm(asm.R0, 1).WithSymbol("allow"), asm.Return()}
}

// sockOpsProgram counts the connections accepted from watched TCP listeners and their
// bytes. Registers: R6 the context, R7 the counters, R8 a flag (activity seen), R9 the
// socket's state.
func sockOpsProgram(listeners, counters, conns int) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		asm.LoadMem(asm.R2, asm.R6, opsOp, asm.Word),
		asm.JEq.Imm(asm.R2, opPassiveEstablished, "passive"),
		asm.JEq.Imm(asm.R2, opStateCB, "event"),
		asm.JEq.Imm(asm.R2, opRTTCB, "event"),
		asm.JEq.Imm(asm.R2, opHdrOptLenCB, "event"),
		asm.Ja.Label("allow"),

		// A connection accepted by a listener: is the listener watched? The key
		// (fp-24..fp-1) is the connection's local address, then the same with address
		// zero, for a listener on 0.0.0.0 or ::.
		asm.LoadMem(asm.R2, asm.R6, opsFamily, asm.Word).WithSymbol("passive"),
		asm.StoreMem(asm.RFP, -24, asm.R2, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, opsLocalPort, asm.Word),
		asm.StoreMem(asm.RFP, -20, asm.R3, asm.Word),
		asm.JEq.Imm(asm.R2, afInet6, "v6"),
		asm.JNE.Imm(asm.R2, afInet, "allow"),
		asm.LoadMem(asm.R3, asm.R6, opsLocalIP4, asm.Word),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.Word),
		asm.StoreImm(asm.RFP, -12, 0, asm.Word),
		storeZero64(asm.RFP, -8),
		asm.Ja.Label("lookup"),
		asm.LoadMem(asm.R3, asm.R6, opsLocalIP6, asm.Word).WithSymbol("v6"),
		asm.StoreMem(asm.RFP, -16, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, opsLocalIP6+4, asm.Word),
		asm.StoreMem(asm.RFP, -12, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, opsLocalIP6+8, asm.Word),
		asm.StoreMem(asm.RFP, -8, asm.R3, asm.Word),
		asm.LoadMem(asm.R3, asm.R6, opsLocalIP6+12, asm.Word),
		asm.StoreMem(asm.RFP, -4, asm.R3, asm.Word),

		asm.LoadMapPtr(asm.R1, listeners).WithSymbol("lookup"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		asm.JNE.Imm(asm.R0, 0, "found"),
		storeZero64(asm.RFP, -16),
		storeZero64(asm.RFP, -8),
		asm.LoadMapPtr(asm.R1, listeners),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -24),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),

		asm.LoadMem(asm.R7, asm.R0, 0, asm.Word).WithSymbol("found"), // slot
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word),                     // gen
		// Ask for the callbacks that show the connection's bytes and its end, on top
		// of any another program asked for (the helper sets the flags, it does not add).
		asm.LoadMem(asm.R2, asm.R6, opsCbFlags, asm.Word),
		asm.Or.Imm(asm.R2, callbacks),
		asm.Mov.Reg(asm.R1, asm.R6),
		asm.FnSockOpsCbFlagsSet.Call(),
		// Its state: which slot it counts in, and its counters as last seen (zero: the
		// bytes it brought with its handshake count too).
		asm.Mov.Imm(asm.R9, 0),
		asm.LoadMem(asm.R2, asm.R6, opsSk, asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "count"),
		asm.LoadMapPtr(asm.R1, conns),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, skStorageGetCreate),
		asm.FnSkStorageGet.Call(),
		asm.JEq.Imm(asm.R0, 0, "count"),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.Mov.Reg(asm.R1, asm.R7),
		asm.Add.Imm(asm.R1, 1),
		asm.StoreMem(asm.R9, csSlot, asm.R1, asm.Word),
		asm.StoreMem(asm.R9, csGen, asm.R8, asm.Word),
		storeZero64(asm.R9, csRecv),
		storeZero64(asm.R9, csAcked),

		asm.StoreMem(asm.RFP, -28, asm.R7, asm.Word).WithSymbol("count"),
		asm.LoadMapPtr(asm.R1, counters),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -28),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R1, asm.R0, ctrGen, asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R8, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, ctrConnects),
		asm.Mov.Imm(asm.R8, 1), // a new connection is activity
		asm.JNE.Imm(asm.R9, 0, "bytes"),
		asm.Ja.Label("touch"),

		// Any later callback of a connection counted above.
		asm.LoadMem(asm.R1, asm.R6, opsFullsock, asm.Word).WithSymbol("event"),
		asm.JEq.Imm(asm.R1, 0, "allow"),
		asm.LoadMem(asm.R2, asm.R6, opsSk, asm.DWord),
		asm.JEq.Imm(asm.R2, 0, "allow"),
		asm.LoadMapPtr(asm.R1, conns),
		asm.Mov.Imm(asm.R3, 0),
		asm.Mov.Imm(asm.R4, 0),
		asm.FnSkStorageGet.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.LoadMem(asm.R7, asm.R9, csSlot, asm.Word),
		asm.JEq.Imm(asm.R7, 0, "allow"),
		asm.Add.Imm(asm.R7, -1),
		asm.LoadMem(asm.R8, asm.R9, csGen, asm.Word),
		asm.StoreMem(asm.RFP, -28, asm.R7, asm.Word),
		asm.LoadMapPtr(asm.R1, counters),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -28),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R1, asm.R0, ctrGen, asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R8, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Imm(asm.R8, 0),
		// The end of the connection (from any state: closed by either side, reset,
		// or turned into TIME_WAIT, whose full socket closes): count it once.
		asm.LoadMem(asm.R1, asm.R6, opsOp, asm.Word),
		asm.JNE.Imm(asm.R1, opStateCB, "bytes"),
		asm.LoadMem(asm.R1, asm.R6, opsArgs+4, asm.Word), // args[1]: the new state
		asm.JNE.Imm(asm.R1, tcpClose, "bytes"),
		asm.StoreImm(asm.R9, csSlot, 0, asm.Word),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, ctrCloses),
		asm.Mov.Imm(asm.R8, 1),

		// Bytes since the last look, in and out (acknowledged by the peer).
		asm.LoadMem(asm.R1, asm.R6, opsBytesRecv, asm.DWord).WithSymbol("bytes"),
		asm.LoadMem(asm.R2, asm.R9, csRecv, asm.DWord),
		asm.StoreMem(asm.R9, csRecv, asm.R1, asm.DWord),
		asm.Sub.Reg(asm.R1, asm.R2),
		asm.JEq.Imm(asm.R1, 0, "out"),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, ctrBytesIn),
		asm.Mov.Imm(asm.R8, 1),
		asm.LoadMem(asm.R1, asm.R6, opsBytesAcked, asm.DWord).WithSymbol("out"),
		asm.LoadMem(asm.R2, asm.R9, csAcked, asm.DWord),
		asm.StoreMem(asm.R9, csAcked, asm.R1, asm.DWord),
		asm.Sub.Reg(asm.R1, asm.R2),
		asm.JEq.Imm(asm.R1, 0, "last"),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, ctrBytesOut),
		asm.Mov.Imm(asm.R8, 1),
		asm.JEq.Imm(asm.R8, 0, "allow").WithSymbol("last"),
		asm.FnKtimeGetNs.Call().WithSymbol("touch"),
		asm.StoreMem(asm.R7, ctrLast, asm.R0, asm.DWord),
	}
	return append(insns, exitAllow()...)
}

// unixKfuncs are the kernel's BTF ids the connect_unix program needs: the path a client
// connects to is in the kernel's struct bpf_sock_addr_kern, not in the UAPI context.
type unixKfuncs struct {
	castToKernCtx, rdonlyCast btf.TypeID // kfuncs
	sockaddrUn                btf.TypeID // struct sockaddr_un
	uaddrOff, uaddrlenOff     int16      // in struct bpf_sock_addr_kern
}

func findUnixKfuncs(spec *btf.Spec) (unixKfuncs, error) {
	var k unixKfuncs
	id := func(name string) (btf.TypeID, error) {
		t, err := spec.AnyTypeByName(name)
		if err != nil {
			return 0, fmt.Errorf("finding %s in the kernel's BTF: %w", name, err)
		}
		return spec.TypeID(t)
	}
	var err error
	if k.castToKernCtx, err = id("bpf_cast_to_kern_ctx"); err != nil {
		return k, err
	}
	if k.rdonlyCast, err = id("bpf_rdonly_cast"); err != nil {
		return k, err
	}
	var un *btf.Struct
	if err := spec.TypeByName("sockaddr_un", &un); err != nil {
		return k, fmt.Errorf("finding struct sockaddr_un in the kernel's BTF: %w", err)
	}
	if k.sockaddrUn, err = spec.TypeID(un); err != nil {
		return k, err
	}
	var sa *btf.Struct
	if err := spec.TypeByName("bpf_sock_addr_kern", &sa); err != nil {
		return k, fmt.Errorf("finding struct bpf_sock_addr_kern in the kernel's BTF: %w", err)
	}
	found := 0
	for _, m := range sa.Members {
		switch m.Name {
		case "uaddr":
			k.uaddrOff = int16(m.Offset.Bytes())
			found++
		case "uaddrlen":
			k.uaddrlenOff = int16(m.Offset.Bytes())
			found++
		}
	}
	if found != 2 {
		return k, fmt.Errorf("struct bpf_sock_addr_kern has no uaddr or uaddrlen in the kernel's BTF")
	}
	return k, nil
}

func kfuncCall(id btf.TypeID) asm.Instruction {
	return asm.Instruction{OpCode: asm.OpCode(asm.JumpClass).SetJumpOp(asm.Call), Src: asm.PseudoKfuncCall, Constant: int64(id)}
}

// connectUnixProgram counts the connect(2) calls, from any process, to the paths of
// watched unix listeners. The path is copied (up to the address length the caller
// gave, and for a path, not the NUL and what follows) into a zeroed 108-byte key on the
// stack (fp-112..fp-5), and looked up. Registers: R6 the context, R7 the kernel's
// context, R8 the path's length, R9 the address.
func connectUnixProgram(k unixKfuncs, paths, counters int) asm.Instructions {
	insns := asm.Instructions{
		asm.Mov.Reg(asm.R6, asm.R1),
		kfuncCall(k.castToKernCtx),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.LoadMem(asm.R8, asm.R7, k.uaddrlenOff, asm.Word),
		asm.LoadMem(asm.R1, asm.R7, k.uaddrOff, asm.DWord),
		asm.Mov.Imm(asm.R2, int32(k.sockaddrUn)),
		kfuncCall(k.rdonlyCast),
		asm.Mov.Reg(asm.R9, asm.R0),
		asm.JEq.Imm(asm.R9, 0, "allow"),
		asm.JLE.Imm(asm.R8, 2, "allow"), // no path: autobind, or invalid
		asm.Add.Imm(asm.R8, -2),
	}
	for off := int16(-112); off < 0; off += 8 {
		insns = append(insns, storeZero64(asm.RFP, off))
	}
	insns = append(insns,
		asm.LoadMem(asm.R1, asm.R9, 2, asm.Byte),
		asm.JEq.Imm(asm.R1, 0, "abstract"),
	)
	// A path: up to its NUL, if any.
	for i := range unixKeyLen {
		insns = append(insns,
			asm.JLE.Imm(asm.R8, int32(i), "key"),
			asm.LoadMem(asm.R1, asm.R9, int16(2+i), asm.Byte),
			asm.JEq.Imm(asm.R1, 0, "key"),
			asm.StoreMem(asm.RFP, int16(-112+i), asm.R1, asm.Byte),
		)
	}
	insns = append(insns, asm.Ja.Label("key"))
	// An abstract name: every byte of the given length, NULs included.
	for i := range unixKeyLen {
		ins := asm.JLE.Imm(asm.R8, int32(i), "key")
		if i == 0 {
			ins = ins.WithSymbol("abstract")
		}
		insns = append(insns, ins,
			asm.LoadMem(asm.R1, asm.R9, int16(2+i), asm.Byte),
			asm.StoreMem(asm.RFP, int16(-112+i), asm.R1, asm.Byte),
		)
	}
	insns = append(insns,
		asm.LoadMapPtr(asm.R1, paths).WithSymbol("key"),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -112),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R1, asm.R0, 0, asm.Word),
		asm.LoadMem(asm.R8, asm.R0, 4, asm.Word),
		asm.StoreMem(asm.RFP, -116, asm.R1, asm.Word),
		asm.LoadMapPtr(asm.R1, counters),
		asm.Mov.Reg(asm.R2, asm.RFP),
		asm.Add.Imm(asm.R2, -116),
		asm.FnMapLookupElem.Call(),
		asm.JEq.Imm(asm.R0, 0, "allow"),
		asm.LoadMem(asm.R1, asm.R0, ctrGen, asm.DWord),
		asm.JNE.Reg(asm.R1, asm.R8, "allow"),
		asm.Mov.Reg(asm.R7, asm.R0),
		asm.Mov.Imm(asm.R1, 1),
		asm.AddAtomic.Mem(asm.R7, asm.R1, asm.DWord, ctrConnects),
		asm.FnKtimeGetNs.Call(),
		asm.StoreMem(asm.R7, ctrLast, asm.R0, asm.DWord),
	)
	return append(insns, exitAllow()...)
}
