/**
 * bpf(2), as much as a BPF iterator needs: load a tracing program attached to an iterator target,
 * link it, and open the iterator (whose read() gives what the program wrote).
 */
import { addressOf, errno, libc } from "./libc.ts";

/** bpf(2)'s number on x86_64. */
const SYS_BPF = 321n;

/** bpf(2) commands. */
export const BPF_CMD = { PROG_LOAD: 5, LINK_CREATE: 28, ITER_CREATE: 33 } as const;
/** `BPF_PROG_TYPE_TRACING`. */
export const BPF_PROG_TYPE_TRACING = 26;
/** `BPF_TRACE_ITER`: the attach type of an iterator program. */
export const BPF_TRACE_ITER = 28;

/** Helpers an iterator program calls, by number. */
export const BPF_FUNC = { seq_write: 127, skc_to_tcp_sock: 137 } as const;

/** The size of `union bpf_attr` the tool passes (every field it uses fits). */
const ATTR_SIZE = 144;

function bpf(cmd: number, attr: Uint8Array): number {
  const r = Number(
    libc.syscall(SYS_BPF, BigInt(cmd), addressOf(attr), BigInt(ATTR_SIZE), 0n, 0n, 0n),
  );
  return r === -1 ? -errno() : r;
}

/** What `tryLoadIterProgram` says when the verifier refuses: its errno and its log. */
export interface BpfLoadFailure {
  errno: number;
  log: string;
}

/**
 * Loads an iterator program (8 bytes an instruction) for the vmlinux function `attachBtfId`
 * (the target's `bpf_iter_*`): its fd, or why it was refused.
 */
export function tryLoadIterProgram(
  insns: Uint8Array,
  attachBtfId: number,
): number | BpfLoadFailure {
  // Without a log first (the verifier's log of a long program fills any buffer: ENOSPC); with
  // one, only to say why it was refused.
  const fd = loadIterProgram(insns, attachBtfId, 0);
  return typeof fd === "number" ? fd : loadIterProgram(insns, attachBtfId, 1);
}

function loadIterProgram(
  insns: Uint8Array,
  attachBtfId: number,
  logLevel: number,
): number | BpfLoadFailure {
  // Buffers outside V8's heap (over 64 bytes) so the pointers in the attr stay valid.
  const code = new Uint8Array(Math.max(128, insns.length));
  code.set(insns);
  const license = new TextEncoder().encode("GPL\0".padEnd(128, "\0"));
  const log = new Uint8Array(logLevel ? 1 << 20 : 128);
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, BPF_PROG_TYPE_TRACING, true);
  v.setUint32(4, insns.length / 8, true);
  v.setBigUint64(8, addressOf(code), true);
  v.setBigUint64(16, addressOf(license), true);
  if (logLevel) {
    v.setUint32(24, logLevel, true);
    v.setUint32(28, log.length, true);
    v.setBigUint64(32, addressOf(log), true);
  }
  v.setUint32(68, BPF_TRACE_ITER, true); // expected_attach_type
  v.setUint32(108, attachBtfId, true);
  const fd = bpf(BPF_CMD.PROG_LOAD, attr);
  if (fd >= 0) return fd;
  const end = log.indexOf(0);
  return { errno: -fd, log: new TextDecoder().decode(log.subarray(0, end < 0 ? log.length : end)) };
}

/** Links an iterator program to its target: the link's fd, or a negative errno. */
export function tryLinkIter(progFd: number): number {
  const attr = new Uint8Array(ATTR_SIZE);
  const v = new DataView(attr.buffer);
  v.setUint32(0, progFd, true);
  v.setUint32(8, BPF_TRACE_ITER, true);
  return bpf(BPF_CMD.LINK_CREATE, attr);
}

/** Opens a new iterator on a link: an fd whose read() runs it, or a negative errno. */
export function tryIterCreate(linkFd: number): number {
  const attr = new Uint8Array(ATTR_SIZE);
  new DataView(attr.buffer).setUint32(0, linkFd, true);
  return bpf(BPF_CMD.ITER_CREATE, attr);
}
