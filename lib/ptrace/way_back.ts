/**
 * A way back for a thread of a dump's target that holds injected registers when the tool dies.
 *
 * A syscall is injected by giving the thread other registers for a moment. Should the tool be
 * killed then, the kernel lets the thread run on with them, and it would run off into whatever
 * follows the `syscall` instruction. So the injected registers are made to lead back by
 * themselves: the instruction used is one followed by nothing but `ret` (found in the vdso), the
 * stack pointer points at the address of the process's own `rt_sigreturn` trampoline (found in
 * its libc or program: `mov $15, %rax; syscall`), and above it lies a signal frame holding the
 * thread's own registers, signal mask and FPU state. Run freely, the thread makes the syscall,
 * returns into the trampoline, and `rt_sigreturn` puts it back exactly where it was frozen, a
 * syscall it was in restarted as the kernel would have. The frame lives in the injector's scratch
 * region; without the code for it (no vdso, no trampoline) injection goes on without a way back.
 */
import { type Regs, SIG } from "../../ffi/mod.ts";
import { findVdso, listMappings } from "../inspect/mappings.ts";
import type { RemoteMemory } from "../inspect/memory.ts";

/** The code a way back needs, found once per process. */
export interface WayBackCode {
  /** A `syscall` instruction followed by nothing but register clears and `ret`. */
  gadget: bigint;
  /** `mov $15, %rax; syscall`: a caller of rt_sigreturn. */
  restorer: bigint;
}

/**
 * Room for one thread's frame, in whole pages (so the scratch region's size is the mapping's):
 * the frame proper, then its 64-byte aligned xsave area, AMX tiles included.
 */
export const FRAME_STRIDE = 3 * 4096;

/** Where the xsave area starts in a frame. */
const FPSTATE_AT = 512;

/** The largest xsave area a frame holds. */
export const MAX_XSTATE = FRAME_STRIDE - FPSTATE_AT - 64;

/** `rt_sigreturn` callers as libcs and language runtimes write them. */
const RESTORERS = [
  [0x48, 0xc7, 0xc0, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05], // mov $15, %rax; syscall
  [0xb8, 0x0f, 0x00, 0x00, 0x00, 0x0f, 0x05], // mov $15, %eax; syscall
];

/** How many bytes of executable code are searched for a trampoline at most. */
const RESTORER_SEARCH = 32 << 20;

/**
 * Finds the gadget and the trampoline in process `pid`; null when it has either not (no vdso, a
 * runtime with its trampoline elsewhere).
 */
export function findWayBackCode(pid: number, mem: RemoteMemory): WayBackCode | null {
  const vdso = findVdso(pid);
  if (!vdso) return null;
  const at = gadgetIn(mem.read(vdso.start, vdso.size));
  if (at < 0) return null;
  const restorer = findRestorer(pid, mem);
  return restorer === null ? null : { gadget: vdso.start + BigInt(at), restorer };
}

/** Offset of `syscall` followed by register clears (`xor r32, r32`), nops and `ret`; or -1. */
function gadgetIn(code: Uint8Array): number {
  for (let i = 0; i + 2 < code.length; i++) {
    if (code[i] !== 0x0f || code[i + 1] !== 0x05) continue;
    let j = i + 2;
    while (j < code.length && j < i + 32) {
      const b = code[j];
      if (b === 0xc3) return i;
      if (b === 0x90) j += 1;
      else if (b === 0x31 && code[j + 1] >= 0xc0) j += 2;
      else if ((b & 0xf0) === 0x40 && code[j + 1] === 0x31 && code[j + 2] >= 0xc0) j += 3;
      else break;
    }
  }
  return -1;
}

/**
 * Where a trampoline was found in a mapped file (by device, inode and file offset of the mapping):
 * its offset in the mapping, or -1 when it has none. The processes of a tree map the same C
 * library: one search serves them all, each checking the bytes at the place found.
 */
const foundIn = new Map<string, number>();

/** Whether a trampoline is at `at`. */
function matchesAt(mem: RemoteMemory, at: bigint): boolean {
  for (const pattern of RESTORERS) {
    try {
      const bytes = mem.read(at, pattern.length);
      if (pattern.every((b, i) => bytes[i] === b)) return true;
    } catch { /* not readable */ }
  }
  return false;
}

/** The first trampoline in the executable mappings, the C library's first. */
function findRestorer(pid: number, mem: RemoteMemory): bigint | null {
  const code = listMappings(pid).filter((m) =>
    m.prot.exec && m.kind !== "vdso" && m.kind !== "vsyscall"
  );
  const libcFirst = [
    ...code.filter((m) => /\/libc[.-]/.test(m.path ?? "")),
    ...code.filter((m) => !/\/libc[.-]/.test(m.path ?? "")),
  ];
  let budget = RESTORER_SEARCH;
  for (const m of libcFirst) {
    if (budget <= 0) break;
    const size = Math.min(m.size, budget);
    budget -= size;
    const key = m.inode ? `${m.device}:${m.inode}:${m.offset}:${size}` : undefined;
    const known = key === undefined ? undefined : foundIn.get(key);
    if (known === -1) continue;
    if (known !== undefined && matchesAt(mem, m.start + BigInt(known))) {
      return m.start + BigInt(known);
    }
    let bytes: Uint8Array;
    try {
      bytes = mem.read(m.start, size);
    } catch {
      continue; // unreadable (a guard-like or PROT_NONE-then-exec oddity): not there
    }
    for (const pattern of RESTORERS) {
      const at = indexOf(bytes, pattern);
      if (at < 0) continue;
      if (key) foundIn.set(key, at);
      return m.start + BigInt(at);
    }
    if (key) foundIn.set(key, -1);
  }
  return null;
}

function indexOf(hay: Uint8Array, needle: number[]): number {
  const first = needle[0];
  for (let i = hay.indexOf(first); i >= 0 && i + needle.length <= hay.length;) {
    let k = 1;
    while (k < needle.length && hay[i + k] === needle[k]) k++;
    if (k === needle.length) return i;
    i = hay.indexOf(first, i + 1);
  }
  return -1;
}

/** ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND: the syscall is made again on the way out. */
const RESTART_AGAIN = [-512n, -513n, -514n];
/** ERESTART_RESTARTBLOCK: the way out goes through restart_syscall. */
const RESTART_BLOCK = -516n;
const NR_RESTART_SYSCALL = 219n;

/**
 * The registers a thread frozen with `regs` goes on with when nothing else happens: a syscall cut
 * short by the freeze is restarted (`rt_sigreturn` turns off the kernel's own restart logic). A
 * restart block is lost by `rt_sigreturn`: such a sleep ends with EINTR instead, which a program
 * that sleeps must handle anyway.
 */
function resumeRegs(regs: Regs): Regs {
  const out = { ...regs };
  if (BigInt.asIntN(64, regs.orig_rax) < 0n) return out;
  const rax = BigInt.asIntN(64, regs.rax);
  if (RESTART_AGAIN.includes(rax)) {
    out.rax = regs.orig_rax;
    out.rip = regs.rip - 2n;
  } else if (rax === RESTART_BLOCK) {
    out.rax = NR_RESTART_SYSCALL;
    out.rip = regs.rip - 2n;
  }
  return out;
}

const UC_FP_XSTATE = 1n, UC_SIGCONTEXT_SS = 2n, UC_STRICT_RESTORE_SS = 4n;
const FP_XSTATE_MAGIC1 = 0x46505853, FP_XSTATE_MAGIC2 = 0x46505845;
/** Offset of the software-reserved bytes of an xsave area (`struct _fpx_sw_bytes`). */
const SW_RESERVED = 464;
/** Not a valid sigaltstack mode: `rt_sigreturn` then leaves the thread's alternate stack as it is. */
const SS_UNCHANGED = 0x7ead;

/** The size of a frame with `xstate`. */
export function wayBackFrameSize(xstate: Uint8Array): number {
  return FPSTATE_AT + xstate.length + 4;
}

/**
 * The bytes of a frame at `at` (64-byte aligned) that `rt_sigreturn` turns back into the thread
 * as it was frozen: its registers, blocked `mask` and `xstate` (as PTRACE_GETREGSET gives it,
 * whose software-reserved bytes begin with XCR0). The first word is the trampoline's address, for
 * the gadget's `ret`.
 */
export function wayBackFrame(
  regs: Regs,
  mask: bigint,
  xstate: Uint8Array,
  restorer: bigint,
  at: bigint,
): Uint8Array {
  const frame = new Uint8Array(wayBackFrameSize(xstate));
  const dv = new DataView(frame.buffer);
  const u64 = (off: number, v: bigint) => dv.setBigUint64(off, BigInt.asUintN(64, v), true);
  u64(0, restorer); // pretcode: popped by `ret`
  // struct ucontext at 8: flags, link, stack_t (sp, flags, size), sigcontext, sigmask.
  u64(8, UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
  u64(16, 0n);
  u64(24, 0n);
  dv.setInt32(32, SS_UNCHANGED, true);
  u64(40, 0n);
  const r = resumeRegs(regs);
  const gprs = [
    r.r8,
    r.r9,
    r.r10,
    r.r11,
    r.r12,
    r.r13,
    r.r14,
    r.r15,
    r.rdi,
    r.rsi,
    r.rbp,
    r.rbx,
    r.rdx,
    r.rax,
    r.rcx,
    r.rsp,
    r.rip,
    r.eflags,
  ];
  gprs.forEach((v, i) => u64(48 + 8 * i, v));
  const sc = 48 + 8 * gprs.length; // cs, gs, fs, ss (16 bits each)
  dv.setUint16(sc, Number(regs.cs), true);
  dv.setUint16(sc + 6, Number(regs.ss), true);
  u64(sc + 8 + 32, at + BigInt(FPSTATE_AT)); // after err, trapno, oldmask, cr2: fpstate
  u64(8 + 40 + 256, mask); // uc_sigmask
  // The xsave area, with the software bytes a signal frame carries and the closing magic.
  frame.set(xstate, FPSTATE_AT);
  const xcr0 = new DataView(xstate.buffer, xstate.byteOffset).getBigUint64(SW_RESERVED, true);
  const sw = FPSTATE_AT + SW_RESERVED;
  dv.setUint32(sw, FP_XSTATE_MAGIC1, true);
  dv.setUint32(sw + 4, xstate.length + 4, true);
  dv.setBigUint64(sw + 8, xcr0, true);
  dv.setUint32(sw + 16, xstate.length, true);
  dv.setUint32(FPSTATE_AT + xstate.length, FP_XSTATE_MAGIC2, true);
  return frame;
}

/** The trap flag: never left on in registers a thread may run with untraced. */
export const EFLAGS_TF = 0x100n;

/** What a syscall stop reports with PTRACE_O_TRACESYSGOOD. */
export const SYSCALL_STOP = SIG.SIGTRAP | 0x80;
