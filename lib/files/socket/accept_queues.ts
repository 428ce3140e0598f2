/**
 * Every TCP listener's accept queue as the kernel holds it, in the order accept() takes it, and
 * whether its SO_REUSEPORT group has a BPF program: read by a BPF iterator over the TCP sockets
 * (iter/tcp), a small program the tool assembles here with the running kernel's struct offsets
 * (btf.ts), which walks each listener's icsk_accept_queue and writes one record a listener and
 * one a connection waiting in it. sock_diag shows neither the queue's order (only each
 * connection's age, in clock ticks) nor which listener of a group holds a connection, nor a
 * group's program; this does. Where the kernel has no BTF or no TCP iterator, or refuses the
 * program, `acceptQueues` says why and tcp_pending.ts falls back on what sock_diag tells.
 *
 * The iterator sees the tool's network namespace, as sock_diag does.
 */
import {
  BPF_FUNC,
  close,
  read,
  tryIterCreate,
  tryLinkIter,
  tryLoadIterProgram,
} from "../../../ffi/mod.ts";
import { Btf } from "../../inspect/btf.ts";

/** A connection waiting in a listener's queue: its peer's port and address. */
export interface QueuedPeer {
  /** The peer's port. */
  port: number;
  /** skc_daddr (an IPv4 peer, or the IPv4 of a v4-mapped one), 4 bytes. */
  v4: Uint8Array;
  /** skc_v6_daddr, 16 bytes. */
  v6: Uint8Array;
}

/** A TCP listener's queue, by its socket's inode. */
export interface AcceptQueue {
  /** Its SO_REUSEPORT group has a BPF program (SO_ATTACH_REUSEPORT_CBPF/EBPF). */
  reuseportProgram: boolean;
  /** The connections waiting, first the one accept() takes next. */
  peers: QueuedPeer[];
  /** More were waiting than the program walks (`MAX_WALK`). */
  truncated: boolean;
}

/** The most connections of one queue the program walks (the verifier follows each step). */
const MAX_WALK = 256;
/** One record the program writes. */
const RECORD = 40;
const LISTENER = 0, PEER = 1, TRUNCATED = 2;

// ---- A few eBPF instructions ----

function insn(code: number, dst: number, src: number, off: number, imm: number): number[] {
  return [code, (src << 4) | dst, off & 0xff, (off >> 8) & 0xff, ...i32(imm)];
}
function i32(v: number): number[] {
  return [v & 0xff, (v >> 8) & 0xff, (v >> 16) & 0xff, (v >>> 24) & 0xff];
}
const SIZE = { 1: 0x10, 2: 0x08, 4: 0x00, 8: 0x18 } as const;
/** dst = *(size *)(src + off) */
const load = (size: 1 | 2 | 4 | 8, dst: number, src: number, off: number) =>
  insn(0x61 | SIZE[size], dst, src, off, 0);
/** *(size *)(dst + off) = src */
const store = (size: 1 | 2 | 4 | 8, dst: number, off: number, src: number) =>
  insn(0x63 | SIZE[size], dst, src, off, 0);
/** *(size *)(dst + off) = imm */
const storeImm = (size: 4 | 8, dst: number, off: number, imm: number) =>
  insn(0x62 | SIZE[size], dst, 0, off, imm);
const mov = (dst: number, src: number) => insn(0xbf, dst, src, 0, 0);
const movImm = (dst: number, imm: number) => insn(0xb7, dst, 0, 0, imm);
const addImm = (dst: number, imm: number) => insn(0x07, dst, 0, 0, imm);
const call = (helper: number) => insn(0x85, 0, 0, 0, helper);
const exit = () => insn(0x95, 0, 0, 0, 0);

/** A program with labels: jumps name where they go; `code()` puts in the offsets. */
class Assembler {
  readonly #insns: (number[] | { code: number; dst: number; imm: number; to: string })[] = [];
  readonly #labels = new Map<string, number>();
  emit(...insns: number[][]): this {
    this.#insns.push(...insns);
    return this;
  }
  label(name: string): this {
    this.#labels.set(name, this.#insns.length);
    return this;
  }
  /** `if dst OP imm goto to` (code: 0x15 ==, 0x55 !=, 0x35 >=; 0x05 always). */
  jump(code: number, dst: number, imm: number, to: string): this {
    this.#insns.push({ code, dst, imm, to });
    return this;
  }
  code(): Uint8Array {
    return new Uint8Array(this.#insns.flatMap((x, at) => {
      if (Array.isArray(x)) return x;
      const target = this.#labels.get(x.to);
      if (target === undefined) throw new Error(`no label ${x.to}`);
      return insn(x.code, x.dst, 0, target - at - 1, x.imm);
    }));
  }
}

const JEQ = 0x15, JNE = 0x55, JGE = 0x35, JA = 0x05, TCP_LISTEN = 10;

/**
 * The iterator program of `target` (iter/tcp: a record a listener and one a connection in its
 * queue; iter/udp: a record a socket), with this kernel's offsets.
 */
function program(btf: Btf, target: Target): Uint8Array {
  const o = {
    state: btf.offsetOf("sock", "__sk_common.skc_state"),
    socket: btf.offsetOf("sock", "sk_socket"),
    file: btf.offsetOf("socket", "file"),
    inode: btf.offsetOf("file", "f_inode"),
    ino: btf.offsetOf("inode", "i_ino"),
    reuseport: btf.offsetOf("sock", "sk_reuseport_cb"),
    prog: btf.offsetOf("sock_reuseport", "prog"),
    head: btf.offsetOf("tcp_sock", "inet_conn.icsk_accept_queue.rskq_accept_head"),
    next: btf.offsetOf("request_sock", "dl_next"),
    child: btf.offsetOf("request_sock", "sk"),
    dport: btf.offsetOf("sock", "__sk_common.skc_dport"),
    daddr: btf.offsetOf("sock", "__sk_common.skc_daddr"),
    daddr6: btf.offsetOf("sock", "__sk_common.skc_v6_daddr"),
  };
  const rec = -RECORD; // the record on the stack: fp-40 .. fp-1
  // r6 ctx, r7 the listener then each request, r8 the listener (tcp_sock), r9 the index.
  const write = (a: Assembler) =>
    a.emit(
      load(8, 1, 6, 0), // ctx->meta
      load(8, 1, 1, 0), // meta->seq
      mov(2, 10),
      addImm(2, rec),
      movImm(3, RECORD),
      call(BPF_FUNC.seq_write),
    );
  const clear = (a: Assembler, kind: number) =>
    a.emit(
      storeImm(4, 10, rec + 8, kind),
      storeImm(4, 10, rec + 12, 0),
      storeImm(8, 10, rec + 16, 0),
      storeImm(8, 10, rec + 24, 0),
      storeImm(8, 10, rec + 32, 0),
    );
  const a = new Assembler()
    .emit(mov(6, 1), load(8, 7, 6, 8)) // ctx->sk_common, or ctx->udp_sk
    .jump(JEQ, 7, 0, "out");
  if (target === "tcp") {
    a.emit(mov(1, 7), call(BPF_FUNC.skc_to_tcp_sock))
      .jump(JEQ, 0, 0, "out")
      .emit(mov(8, 0), load(1, 1, 8, o.state))
      .jump(JNE, 1, TCP_LISTEN, "out");
  } else a.emit(mov(8, 7)); // a udp_sock begins with its struct sock
  a.emit(load(8, 1, 8, o.socket))
    .jump(JEQ, 1, 0, "out")
    .emit(load(8, 1, 1, o.file))
    .jump(JEQ, 1, 0, "out")
    .emit(load(8, 1, 1, o.inode))
    .jump(JEQ, 1, 0, "out")
    .emit(load(8, 1, 1, o.ino), store(8, 10, rec, 1));
  clear(a, LISTENER);
  a.emit(load(8, 1, 8, o.reuseport))
    .jump(JEQ, 1, 0, "no-program")
    .emit(load(8, 1, 1, o.prog))
    .jump(JEQ, 1, 0, "no-program")
    .emit(storeImm(4, 10, rec + 12, 1))
    .label("no-program");
  write(a);
  if (target === "udp") return a.label("out").emit(movImm(0, 0), exit()).code();
  a.emit(load(8, 7, 8, o.head), movImm(9, 0))
    .label("next")
    .jump(JEQ, 7, 0, "out")
    .jump(JGE, 9, MAX_WALK, "truncated");
  clear(a, PEER);
  a.emit(store(4, 10, rec + 12, 9), load(8, 1, 7, o.child))
    .jump(JEQ, 1, 0, "write-peer")
    .emit(
      load(2, 2, 1, o.dport),
      store(2, 10, rec + 16, 2),
      load(4, 2, 1, o.daddr),
      store(4, 10, rec + 20, 2),
      load(8, 2, 1, o.daddr6),
      store(8, 10, rec + 24, 2),
      load(8, 2, 1, o.daddr6 + 8),
      store(8, 10, rec + 32, 2),
    )
    .label("write-peer");
  write(a);
  a.emit(load(8, 7, 7, o.next), addImm(9, 1))
    .jump(JA, 0, 0, "next")
    .label("truncated");
  clear(a, TRUNCATED);
  write(a);
  a.label("out").emit(movImm(0, 0), exit());
  return a.code();
}

/** Reads an fd to its end. */
function readAll(fd: number): Uint8Array {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(1 << 16);
  for (;;) {
    const n = read(fd, buf);
    if (n <= 0) break;
    chunks.push(buf.slice(0, n));
  }
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

type Target = "tcp" | "udp";

/** Each target's program, loaded and linked, kept for the tool's life: loading is the costly part
 * (or why it cannot be). */
const links = new Map<Target, number | string>();
/** The kernel's BTF, read once (both programs need it). */
let vmlinux: Btf | undefined;

function link(target: Target): number | string {
  const known = links.get(target);
  if (known !== undefined) return known;
  const what = target.toUpperCase();
  let prog: number | { errno: number; log: string };
  try {
    const btf = vmlinux ??= Btf.vmlinux();
    prog = tryLoadIterProgram(program(btf, target), btf.funcId(`bpf_iter_${target}`));
  } catch (err) {
    links.set(target, `no BPF iterator over ${what} sockets here (${(err as Error).message})`);
    return links.get(target)!;
  }
  if (typeof prog !== "number") {
    const last = prog.log.trim().split("\n").slice(-2).join("; ");
    links.set(target, `the kernel refused the ${what} iterator (errno ${prog.errno}: ${last})`);
    return links.get(target)!;
  }
  const l = tryLinkIter(prog);
  close(prog);
  links.set(target, l < 0 ? `cannot link the ${what} iterator (errno ${-l})` : l);
  return links.get(target)!;
}

/** Runs `target`'s iterator: the records it wrote, or why it cannot run here. */
function iterate(target: Target): Uint8Array | string {
  const l = link(target);
  if (typeof l === "string") return l;
  const it = tryIterCreate(l);
  if (it < 0) return `cannot open the ${target.toUpperCase()} iterator (errno ${-it})`;
  try {
    return readAll(it);
  } finally {
    close(it);
  }
}

/**
 * The inodes of the UDP sockets (IPv4 and IPv6) whose SO_REUSEPORT group has a BPF program; or
 * why they cannot be read here (a string).
 */
export function udpReuseportPrograms(): Set<bigint> | string {
  const data = iterate("udp");
  if (typeof data === "string") return data;
  const v = new DataView(data.buffer);
  const found = new Set<bigint>();
  for (let at = 0; at + RECORD <= data.length; at += RECORD) {
    if (v.getUint32(at + 12, true) === 1) found.add(v.getBigUint64(at, true));
  }
  return found;
}

/**
 * Every TCP listener's queue (IPv4 and IPv6), by inode; or why it cannot be read here (a
 * string).
 */
export function acceptQueues(): Map<bigint, AcceptQueue> | string {
  const data = iterate("tcp");
  if (typeof data === "string") return data;
  const v = new DataView(data.buffer);
  const queues = new Map<bigint, AcceptQueue>();
  for (let at = 0; at + RECORD <= data.length; at += RECORD) {
    const inode = v.getBigUint64(at, true);
    const kind = v.getUint32(at + 8, true);
    let q = queues.get(inode);
    if (kind === LISTENER || !q) {
      q = { reuseportProgram: false, peers: [], truncated: false };
      queues.set(inode, q);
    }
    if (kind === LISTENER) q.reuseportProgram = v.getUint32(at + 12, true) === 1;
    else if (kind === TRUNCATED) q.truncated = true;
    else {
      q.peers.push({
        port: v.getUint16(at + 16, false),
        v4: data.slice(at + 20, at + 24),
        v6: data.slice(at + 24, at + 40),
      });
    }
  }
  return queues;
}
