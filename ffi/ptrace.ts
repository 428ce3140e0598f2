/** ptrace(2) and waitpid(2): requests, options, and typed wrappers that throw `SyscallError`. */
import { Errno, SyscallError } from "./errno.ts";
import { addressOf, errno, libc, unwrap } from "./libc.ts";
import {
  decodeRegs,
  decodeSigInfo,
  encodeRegs,
  type Regs,
  REGS_SIZE,
  type SigInfo,
  SIGINFO_SIZE,
} from "./structs.ts";

/** ptrace requests. */
export const PTRACE = {
  TRACEME: 0,
  PEEKDATA: 2,
  POKEDATA: 5,
  CONT: 7,
  KILL: 8,
  SINGLESTEP: 9,
  GETREGS: 12,
  SETREGS: 13,
  GETFPREGS: 14,
  SETFPREGS: 15,
  ATTACH: 16,
  DETACH: 17,
  SYSCALL: 24,
  SETOPTIONS: 0x4200,
  GETEVENTMSG: 0x4201,
  GETSIGINFO: 0x4202,
  SETSIGINFO: 0x4203,
  GETREGSET: 0x4204,
  SETREGSET: 0x4205,
  SEIZE: 0x4206,
  INTERRUPT: 0x4207,
  LISTEN: 0x4208,
  PEEKSIGINFO: 0x4209,
  GETSIGMASK: 0x420a,
  SETSIGMASK: 0x420b,
  SECCOMP_GET_FILTER: 0x420c,
  SECCOMP_GET_METADATA: 0x420d,
  GET_RSEQ_CONFIGURATION: 0x420f,
} as const;

/** Names of ptrace requests, for error messages. */
const REQUEST_NAMES = new Map(Object.entries(PTRACE).map(([k, v]) => [v as number, `PTRACE_${k}`]));

/** ptrace options (`PTRACE_SETOPTIONS`, `PTRACE_SEIZE`). */
export const PTRACE_O = {
  TRACESYSGOOD: 1,
  TRACEFORK: 1 << 1,
  TRACEVFORK: 1 << 2,
  TRACECLONE: 1 << 3,
  TRACEEXEC: 1 << 4,
  TRACEVFORKDONE: 1 << 5,
  TRACEEXIT: 1 << 6,
  TRACESECCOMP: 1 << 7,
  EXITKILL: 1 << 20,
  SUSPEND_SECCOMP: 1 << 21,
} as const;

/** ptrace events, found in `status >> 16` of a wait status. */
export const PTRACE_EVENT = {
  FORK: 1,
  VFORK: 2,
  CLONE: 3,
  EXEC: 4,
  VFORK_DONE: 5,
  EXIT: 6,
  SECCOMP: 7,
  STOP: 128,
} as const;

/** Register set types for `PTRACE_GETREGSET`. */
export const NT = { PRSTATUS: 1, PRFPREG: 2, X86_XSTATE: 0x202 } as const;

/** waitpid options. */
export const WAIT = { WNOHANG: 1, WUNTRACED: 2, WCONTINUED: 8, __WALL: 0x40000000 } as const;

/** Low-level ptrace call: returns the raw result, throws `SyscallError` on failure. */
export function ptrace(
  request: number,
  pid: number,
  addr: bigint | number = 0,
  data: bigint | number = 0,
): bigint {
  return unwrap(libc.ptrace(BigInt(request), pid, BigInt(addr), BigInt(data)), "ptrace", [
    REQUEST_NAMES.get(request) ?? request,
    pid,
  ]);
}

/** Attaches without stopping the thread and without a signal it could see. */
export function seize(tid: number, options = 0): void {
  ptrace(PTRACE.SEIZE, tid, 0, options);
}

/** Stops a seized thread (a group-stop-like `PTRACE_EVENT_STOP`). */
export function interrupt(tid: number): void {
  ptrace(PTRACE.INTERRUPT, tid);
}

/** Resumes a stopped tracee, delivering `signal` (0 for none). */
export function cont(tid: number, signal = 0): void {
  ptrace(PTRACE.CONT, tid, 0, signal);
}

/** Executes one instruction of a stopped tracee. */
export function singlestep(tid: number, signal = 0): void {
  ptrace(PTRACE.SINGLESTEP, tid, 0, signal);
}

/** Resumes a stopped thread until the entry or exit of its next syscall (`PTRACE_SYSCALL`). */
export function syscallStep(tid: number, signal = 0): void {
  ptrace(PTRACE.SYSCALL, tid, 0, signal);
}

/** Detaches, letting the thread run on (delivering `signal`, 0 for none). */
export function detach(tid: number, signal = 0): void {
  ptrace(PTRACE.DETACH, tid, 0, signal);
}

/** Sets ptrace options on a tracee. */
export function setOptions(tid: number, options: number): void {
  ptrace(PTRACE.SETOPTIONS, tid, 0, options);
}

/** The general registers of a stopped thread. */
export function getRegs(tid: number): Regs {
  const buf = new Uint8Array(REGS_SIZE);
  ptrace(PTRACE.GETREGS, tid, 0, addressOf(buf));
  return decodeRegs(buf);
}

/** Sets the general registers of a stopped thread. */
export function setRegs(tid: number, regs: Regs): void {
  const buf = encodeRegs(regs);
  ptrace(PTRACE.SETREGS, tid, 0, addressOf(buf));
}

/** Reads a register set (`NT_X86_XSTATE` …) into a buffer; returns the bytes filled. */
export function getRegset(tid: number, type: number, size = 4096): Uint8Array {
  const buf = new Uint8Array(size);
  const iov = new BigUint64Array([addressOf(buf), BigInt(size)]);
  ptrace(PTRACE.GETREGSET, tid, type, addressOf(iov));
  return buf.slice(0, Number(iov[1]));
}

/** Writes a whole register set. */
export function setRegset(tid: number, type: number, data: Uint8Array): void {
  const buf = data.slice();
  const iov = new BigUint64Array([addressOf(buf), BigInt(buf.length)]);
  ptrace(PTRACE.SETREGSET, tid, type, addressOf(iov));
}

/** The signal information of the current signal-delivery stop. */
export function getSigInfo(tid: number): SigInfo {
  const buf = new Uint8Array(SIGINFO_SIZE);
  ptrace(PTRACE.GETSIGINFO, tid, 0, addressOf(buf));
  return decodeSigInfo(buf);
}

/** Replaces the signal information of the current signal-delivery stop (to replay a signal). */
export function setSigInfo(tid: number, info: SigInfo): void {
  ptrace(PTRACE.SETSIGINFO, tid, 0, addressOf(info.raw.slice(0, SIGINFO_SIZE)));
}

/** The message of the last ptrace event (new tid of a CLONE event, …). */
export function getEventMsg(tid: number): bigint {
  const buf = new BigUint64Array(1);
  ptrace(PTRACE.GETEVENTMSG, tid, 0, addressOf(buf));
  return buf[0];
}

/** The blocked signal mask of a stopped thread, as a 64-bit set. */
export function getSigMask(tid: number): bigint {
  const buf = new BigUint64Array(1);
  ptrace(PTRACE.GETSIGMASK, tid, 8, addressOf(buf));
  return buf[0];
}

/** Sets the blocked signal mask of a stopped thread. */
export function setSigMask(tid: number, mask: bigint): void {
  const buf = new BigUint64Array([mask]);
  ptrace(PTRACE.SETSIGMASK, tid, 8, addressOf(buf));
}

/**
 * Pending signals without dequeuing them. `shared` reads the process-wide queue instead of the
 * thread's own.
 */
export function peekSigInfo(tid: number, shared: boolean): SigInfo[] {
  const out: SigInfo[] = [];
  const batch = 32;
  const buf = new Uint8Array(SIGINFO_SIZE * batch);
  for (let off = 0;; off += batch) {
    // struct ptrace_peeksiginfo_args { u64 off; u32 flags; s32 nr; }
    const args = new DataView(new ArrayBuffer(16));
    args.setBigUint64(0, BigInt(off), true);
    args.setUint32(8, shared ? 1 : 0, true);
    args.setInt32(12, batch, true);
    const n = Number(
      ptrace(PTRACE.PEEKSIGINFO, tid, addressOf(new Uint8Array(args.buffer)), addressOf(buf)),
    );
    for (let i = 0; i < n; i++) out.push(decodeSigInfo(buf.subarray(i * SIGINFO_SIZE)));
    if (n < batch) return out;
  }
}

/** rseq registration of a thread (`PTRACE_GET_RSEQ_CONFIGURATION`). */
export interface RseqConfig {
  abiPointer: bigint;
  length: number;
  flags: number;
  signature: number;
}

/** The thread's rseq registration; `abiPointer` 0 when none. */
export function getRseqConfig(tid: number): RseqConfig {
  const buf = new Uint8Array(24);
  ptrace(PTRACE.GET_RSEQ_CONFIGURATION, tid, buf.length, addressOf(buf));
  const dv = new DataView(buf.buffer);
  return {
    abiPointer: dv.getBigUint64(0, true),
    // struct ptrace_rseq_configuration { u64 pointer; u32 size; u32 signature; u32 flags; }
    length: dv.getUint32(8, true),
    signature: dv.getUint32(12, true),
    flags: dv.getUint32(16, true),
  };
}

/**
 * The BPF program of seccomp filter `index` of a stopped thread (0 is the most recently
 * installed), as `struct sock_filter` array bytes (8 each); null past the oldest. Needs
 * CAP_SYS_ADMIN.
 */
export function getSeccompFilter(tid: number, index: number): Uint8Array | null {
  let count: number;
  try {
    count = Number(ptrace(PTRACE.SECCOMP_GET_FILTER, tid, index, 0));
  } catch (err) {
    if (err instanceof SyscallError && err.errno === Errno.ENOENT) return null;
    throw err;
  }
  const buf = new Uint8Array(count * 8);
  ptrace(PTRACE.SECCOMP_GET_FILTER, tid, index, addressOf(buf));
  return buf;
}

/** The flags seccomp filter `index` was installed with (only SECCOMP_FILTER_FLAG_LOG shows). */
export function getSeccompFilterFlags(tid: number, index: number): number {
  // struct seccomp_metadata { u64 filter_off; u64 flags; }
  const buf = new BigUint64Array([BigInt(index), 0n]);
  ptrace(PTRACE.SECCOMP_GET_METADATA, tid, 16, addressOf(buf));
  return Number(buf[1]);
}

/** A decoded wait status. */
export interface WaitStatus {
  pid: number;
  raw: number;
  exited: boolean;
  exitCode?: number;
  signaled: boolean;
  termSignal?: number;
  stopped: boolean;
  stopSignal?: number;
  /** ptrace event number (`PTRACE_EVENT.*`) of an event stop, 0 otherwise. */
  event: number;
}

/** Decodes a raw wait status. */
export function decodeWaitStatus(pid: number, raw: number): WaitStatus {
  const low = raw & 0x7f;
  const stopped = (raw & 0xff) === 0x7f;
  return {
    pid,
    raw,
    exited: low === 0,
    exitCode: low === 0 ? (raw >> 8) & 0xff : undefined,
    signaled: !stopped && low !== 0,
    termSignal: !stopped && low !== 0 ? low : undefined,
    stopped,
    stopSignal: stopped ? (raw >> 8) & 0xff : undefined,
    event: stopped ? (raw >> 16) & 0xff : 0,
  };
}

/**
 * Waits for a state change of one tracee or child (`__WALL` so threads count). Returns null
 * with `WNOHANG` when nothing is ready.
 */
export function waitpid(pid: number, options = 0): WaitStatus | null {
  const status = new Int32Array(1);
  const opts = options | WAIT.__WALL;
  for (;;) {
    const r = libc.waitpid(pid, new Uint8Array(status.buffer), opts);
    if (r === 0) return null;
    if (r > 0) return decodeWaitStatus(r, status[0]);
    if (errno() === Errno.EINTR) continue;
    unwrap(r, "waitpid", [pid]);
  }
}
