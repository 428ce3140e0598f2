/**
 * TCP connections (IPv4, IPv6 and v4-mapped), dumped and made again with the kernel's TCP repair
 * mode, as CRIU's libsoccr does: a socket in repair mode lets its sequence numbers, queues, window
 * and negotiated options be read and set, connect() in it sends no SYN, and closing it sends
 * neither FIN nor RST.
 *
 * Dump (dispatch.ts hands over a TCP socket connected, connecting or closing): unlike the other
 * kinds, everything is done from the tool on a copy of the socket taken with pidfd_getfd, because
 * TCP_REPAIR needs CAP_NET_ADMIN in the caller and the target may not have it. (The copy moves the
 * socket's cgroup-v1 net_cls/net_prio tags to the tool's cgroup; that only matters where those
 * controllers are in use and the tool runs in another of their cgroups.) First a drop-all socket
 * filter: from then on every packet for this socket is dropped before TCP sees it, so nothing
 * that arrives is acknowledged and then lost with the dumped process, and no ACK changes the send
 * queue while it is read (a one-socket stand-in for CRIU's netfilter lock; the peer retransmits
 * later). A socket with a filter of its own, or with an upper-layer protocol (kTLS), is refused.
 * Then repair mode, and: TCP_INFO (state, negotiated options, window scales), TCP_MAXSEG (the mss
 * clamp, in repair mode), TCP_TIMESTAMP, TCP_REPAIR_WINDOW, the queue lengths (SIOCINQ, SIOCOUTQ,
 * and SIOCOUTQNSD for the part never sent), for each queue TCP_REPAIR_QUEUE + TCP_QUEUE_SEQ and
 * its bytes with MSG_PEEK (repair mode lets the send queue be peeked), whether reading was shut
 * (POLLRDHUP), SO_BUF_LOCK (which buffer sizes the program fixed), and the options options.ts keeps.
 *
 * Inside a container's own net namespace (one the dump takes) no netfilter lock is made: the
 * namespace ends with the dumped processes, and the restore keeps the outside ends of its veths
 * down until its connections are resumed (veth.ts). Such a connection must be established (the
 * FINs of a closing one would come back through segments forged in the tool's namespace); one in
 * a namespace left running (--external net) is refused.
 *
 * Afterwards: when the dump kills the processes, the socket stays in repair mode behind its filter
 * and vanishes silently with them, so the peer sees nothing. When they run on, or the dump fails,
 * the filter comes off, repair mode goes off with TCP_REPAIR_OFF_NO_WP (no window probe) and
 * SO_REUSEADDR is set again (leaving repair mode clears it): the connection is as it was. The
 * tool's copy is always closed.
 *
 * Restore: the tool makes the socket (in a container's net namespace, the target makes it and the
 * tool takes it: the tool never enters the namespace) and hands it to the target (an injected
 * pidfd_getfd on the tool), which sets the options as options.ts does (before repair mode: SO_REUSEADDR would undo the
 * forced reuse repair mode gives). Then, from the tool: TCP_REPAIR on, bind to the local address
 * (repair mode binds even next to the listener that accepted the connection), both queues' first
 * sequence numbers (the dumped ends minus the queued bytes), connect (no SYN: the socket is at once
 * ESTABLISHED), TCP_REPAIR_OPTIONS (mss, window scales, SACK, timestamps), TCP_TIMESTAMP, the
 * receive queue and the sent but unacknowledged bytes written back in repair mode, then
 * TCP_REPAIR_WINDOW. Every connection stays in repair mode until every process of the tree is
 * made (both ends of a loopback connection may be in the image); then the `resume` hook turns
 * repair off (a window probe tells the peer where we are; data still unacknowledged is sent again
 * on the retransmission timer), sets SO_REUSEADDR again, sends the bytes never sent as ordinary
 * writes, puts back SO_BUF_LOCK as dumped (buffer sizes the program never fixed autotune again)
 * and lets go of the tool's copy. A buffer too small for what is written back is grown. check()
 * refuses up front when this kernel has a socket for the same address pair (sock_diag): the
 * original was not killed, or the connection lingers in TIME_WAIT.
 *
 * States. A connecting socket (SYN_SENT) is bound in repair mode with its SYN's sequence number,
 * and at resume connects again out of repair mode: a SYN goes out (the file made non-blocking for
 * the call), and a program blocked in connect() waits on in its restarted call. A closing
 * connection's FINs are not in its queues (the dumped lengths and sequence numbers lose them, as
 * libsoccr's): it is made established, then, once out of repair mode and after the bytes never
 * sent, our FIN comes back by shutdown(SHUT_WR) (FIN_WAIT1, CLOSING; LAST_ACK after the peer's)
 * and the peer's by a segment as from the peer (tcp_segment.ts: CLOSE_WAIT, CLOSING, LAST_ACK),
 * so the kernel's own state machine takes the socket to its state. FIN_WAIT2's FIN, acknowledged,
 * is counted as sent in repair mode (shutdown with the send queue selected) and the peer's
 * acknowledgement is a segment too. An established socket the program shut for reading comes
 * back shut too. TIME_WAIT and SYN_RECV belong to the kernel, never to a descriptor: a socket
 * whose connection went through TIME_WAIT (or LAST_ACK, or a reset already read) is in CLOSE,
 * shut both ways, with the bytes it did not read, then EOF; it comes back so (`repairEnded`),
 * on its address, with no peer (which no call shows). Its port stays bound while the program
 * holds it, also where the original, bound by connect(), let it go when its connection ended;
 * and a connect() on it says EISCONN, also where the original's own connect had failed (a
 * refused connect whose error was read), on which a second connect() tries again.
 *
 * Limits. Between the kill and the restore no socket has the connection: a packet from the peer
 * (data, a retransmission, a keepalive probe) would get a RST from this kernel, so the dump's
 * network lock (lib/network/lock.ts) drops them until the restore; the segments a restore forges
 * for closing states carry a mark the lock lets through. Not kept: ECN, urgent data, a TCP_MAXSEG
 * the program set, data sent in a SYN (TCP Fast Open), MD5/AO signatures, a buffer size the
 * program fixed below what the queues needed (it is grown). A tool killed with SIGKILL during a
 * dump leaves the connection in repair mode behind the filter. The restore happens in the tool's
 * network namespace.
 */
import {
  close,
  DROP_ALL_FILTER,
  Errno,
  errnoName,
  F,
  IPPROTO,
  MSG,
  O,
  pidfdGetfd,
  POLL,
  SHUT,
  SO,
  SOCK,
  SOCK_IOCTL,
  SOL,
  SYS,
  syscall,
  TCP,
  TCP_QUEUE,
  TCP_REPAIR,
  TCP_STATE,
  TCPI_OPT,
  TCPOPT,
  tcpStateName,
  tryAttachFilter,
  tryBind,
  tryConnect,
  tryFilterLength,
  tryGetsockopt,
  tryIoctlInt,
  tryPoll,
  tryRecv,
  trySend,
  trySetsockopt,
  trySetsockoptInt,
  tryShutdown,
  trySocket,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { abandonFd, handToTarget, injectClose, readU32 } from "../util.ts";
import { formatAddress } from "./address.ts";
import { sendSegment, TCP_FLAG } from "./tcp_segment.ts";
import { tcpSocketState } from "./diag.ts";
import { namespaceOf } from "../../namespaces/kinds.ts";
import {
  changedOptions,
  findOption,
  setOption,
  SOCKET_OPTIONS,
  type SocketOption,
  toolSocketOptions,
} from "./options.ts";

/** What TCP_REPAIR_WINDOW reads and sets (struct tcp_repair_window). */
export interface TcpWindow {
  sndWl1: number;
  sndWnd: number;
  maxWindow: number;
  rcvWnd: number;
  rcvWup: number;
}

/** The TCP states a dumped connection can be in (SYN_SENT: connecting). */
export type TcpStreamState =
  | "established"
  | "syn-sent"
  | "fin-wait1"
  | "fin-wait2"
  | "closing"
  | "close-wait"
  | "last-ack"
  | "close";

const STREAM_STATES: Record<number, TcpStreamState> = {
  [TCP_STATE.ESTABLISHED]: "established",
  [TCP_STATE.SYN_SENT]: "syn-sent",
  [TCP_STATE.FIN_WAIT1]: "fin-wait1",
  [TCP_STATE.FIN_WAIT2]: "fin-wait2",
  [TCP_STATE.CLOSING]: "closing",
  [TCP_STATE.CLOSE_WAIT]: "close-wait",
  [TCP_STATE.LAST_ACK]: "last-ack",
  [TCP_STATE.CLOSE]: "close",
};

/**
 * Where a connection's FINs are in a state: `sent` (ours is in the send sequence, shutdown
 * SHUT_WR), `acked` (the peer acknowledged it), `received` (the peer's is in the receive
 * sequence), `receivedFirst` (the peer's came before ours: LAST_ACK).
 */
export interface Fins {
  sent: boolean;
  acked: boolean;
  received: boolean;
  receivedFirst: boolean;
}

/** The FINs of `state` (see `Fins`). */
export function finsOf(state: TcpStreamState): Fins {
  const sent = ["fin-wait1", "fin-wait2", "closing", "last-ack", "close"].includes(state);
  const received = ["closing", "close-wait", "last-ack", "close"].includes(state);
  const acked = state === "fin-wait2" || state === "close";
  return { sent, acked, received, receivedFirst: state === "last-ack" };
}

/** The kernel's state of a connection, as TCP repair reads and sets it. */
export interface TcpConnectionState {
  /** The TCP state (see the header for how each comes back). */
  state: TcpStreamState;
  /** Reading was shut (the peer's FIN, or shutdown(SHUT_RD)): EOF after the queued bytes. */
  readShutdown: boolean;
  /** SO_BUF_LOCK: 1 SO_SNDBUF and 2 SO_RCVBUF were fixed by the program (no autotuning). */
  bufferLocks: number;
  /** Sequence number just past the receive queue (rcv_nxt). */
  inSeq: number;
  /** Bytes received and acknowledged, not yet read by the program. */
  inQueue: Uint8Array;
  /** Sequence number just past the send queue (write_seq). */
  outSeq: number;
  /** Bytes written by the program the peer has not acknowledged, sent or not. */
  outQueue: Uint8Array;
  /** How many bytes at the end of `outQueue` were never sent. */
  unsent: number;
  /** The mss clamp. */
  mss: number;
  /** tcpi_options: TIMESTAMPS 1, SACK 2, WSCALE 4, ECN 8. */
  tcpOptions: number;
  /** Window scale of what the peer sends us, and of what we send. */
  sndWscale: number;
  rcvWscale: number;
  /** TCP_TIMESTAMP (the timestamp clock as the peer sees it), when timestamps are on. */
  timestamp: number;
  window: TcpWindow;
}

/** A TCP connection with the bytes in flight both ways. */
export interface TcpStreamEntry extends FileEntry, TcpConnectionState {
  kind: "tcp-stream";
  /** AF_INET 2, AF_INET6 10. */
  family: number;
  /** Raw sockaddr of this end. */
  address: Uint8Array;
  /** Raw sockaddr of the peer. */
  peer: Uint8Array;
  /** Options that differ from a fresh socket's, as options.ts keeps them. */
  options: SocketOption[];
  /** The dumped socket's inode. */
  inode: bigint;
  /** "IPv4 TCP 127.0.0.1:40000 connected to 127.0.0.1:8080", for messages. */
  description: string;
}

/** What dispatch.ts already knows of the connection it hands over. */
export interface TcpStreamBase {
  /** "IPv4 TCP" … */
  what: string;
  family: number;
  address: Uint8Array;
  peer: Uint8Array;
}

/** Whether dispatch.ts should hand a TCP socket in this TCP_INFO state to `dumpTcpStream`. */
export function isTcpStreamState(state: number): boolean {
  return state in STREAM_STATES;
}

/** What the description of a connection says of its state. */
const STATE_NOTES: Record<TcpStreamState, string> = {
  "established": "",
  "syn-sent": ", its SYN not answered yet (SYN_SENT)",
  "fin-wait1": ", closed on its side (FIN_WAIT1)",
  "fin-wait2": ", closed on its side (FIN_WAIT2)",
  "closing": ", closed on both sides at once (CLOSING)",
  "close-wait": ", its peer closed its side",
  "last-ack": ", closed on both sides, its peer first (LAST_ACK)",
  "close": "",
};

// ---- Dump ----

/**
 * The dumped connection, held still from the tool's copy: a drop-all filter, then repair mode.
 * `putBack` undoes both, as the process had them.
 */
class HeldConnection {
  #filtered = false;
  #repairing = false;
  #closed = false;

  constructor(readonly socket: number, readonly reuseAddress: SocketOption | undefined) {}

  hold(fail: (why: string) => never): void {
    if (tryFilterLength(this.socket) > 0) {
      fail("it has a socket filter of its own (SO_ATTACH_FILTER), which tardigrade does not keep");
    }
    const ulp = tryGetsockopt(this.socket, SOL.TCP, TCP.ULP, 16);
    if (typeof ulp !== "number" && ulp.length > 0 && ulp[0] !== 0) {
      const name = new TextDecoder().decode(ulp).replace(/\0.*$/s, "");
      fail(`it carries the upper-layer protocol "${name}" (TCP_ULP), which tardigrade cannot dump`);
    }
    let r = tryAttachFilter(this.socket, DROP_ALL_FILTER);
    if (r < 0) fail(`cannot attach a filter to hold it still (${errnoName(-r)})`);
    this.#filtered = true;
    r = trySetsockoptInt(this.socket, SOL.TCP, TCP.REPAIR, TCP_REPAIR.ON);
    if (r < 0) {
      fail(
        r === -Errno.EPERM
          ? "TCP_REPAIR needs CAP_NET_ADMIN, which the tool lacks"
          : `cannot enter TCP repair mode (${errnoName(-r)})`,
      );
    }
    this.#repairing = true;
  }

  /** Turns repair mode off without a window probe, takes the filter off, SO_REUSEADDR back. */
  putBack(): void {
    if (this.#repairing) {
      trySetsockoptInt(this.socket, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE);
      trySetsockoptInt(this.socket, SOL.TCP, TCP.REPAIR, TCP_REPAIR.OFF_NO_WP);
      this.#repairing = false;
      const reuse = this.reuseAddress;
      if (reuse) trySetsockopt(this.socket, reuse.level, reuse.option, reuse.value);
    }
    if (this.#filtered) {
      trySetsockoptInt(this.socket, SOL.SOCKET, SO.DETACH_FILTER, 0);
      this.#filtered = false;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.socket);
  }
}

/** Reads a queue in repair mode: its end sequence number and its bytes, without consuming them. */
function readQueue(
  s: number,
  queue: number,
  length: number,
  fail: (why: string) => never,
): { seq: number; data: Uint8Array } {
  const name = queue === TCP_QUEUE.RECV ? "receive" : "send";
  let r = trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, queue);
  if (r < 0) fail(`cannot select its ${name} queue (${errnoName(-r)})`);
  const seq = tryGetsockopt(s, SOL.TCP, TCP.QUEUE_SEQ, 4);
  if (typeof seq === "number") fail(`cannot read its ${name} sequence (${errnoName(-seq)})`);
  // One byte more than expected: a longer queue than the ioctl said would be caught.
  const data = new Uint8Array(length + 1);
  r = length ? tryRecv(s, data, MSG.PEEK | MSG.DONTWAIT) : 0;
  if (r !== length) {
    fail(`peeking its ${name} queue gave ${r < 0 ? errnoName(-r) : `${r} bytes`}, not ${length}`);
  }
  return { seq: readU32(seq), data: data.subarray(0, length) };
}

/**
 * Dumps the connection behind `fd` (dispatch.ts found it ESTABLISHED or CLOSE_WAIT). Leaves it held
 * still until the dump ends (see the header).
 */
export function dumpTcpStream(fd: Fd, ctx: FileDumpContext, base: TcpStreamBase): TcpStreamEntry {
  // An ended connection (CLOSE) has no peer to tell: dispatch.ts gives its own address.
  const ended = base.peer === base.address;
  const description = `${base.what} ${formatAddress(base.address)} ` +
    (ended ? "whose connection ended" : `connected to ${formatAddress(base.peer)}`);
  const fail = (why: string): never => {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: ${description}: ${why}; a policy can skip it`,
    );
  };
  // In a container's own net namespace, which ends with the dump: nothing outside it to lock.
  const inContainer = namespaceOf(fd.pid, "net") !== namespaceOf(Deno.pid, "net");
  if (inContainer && ctx.containerNet !== "own") {
    fail(
      "a TCP connection in a net namespace the dump leaves running (--external net) is not " +
        "dumped: nothing would hold its packets there until the restore",
    );
  }
  const s = pidfdGetfd(ctx.pidfd, fd.fd);
  let held: HeldConnection | undefined;
  try {
    // Before repair mode, which changes SO_REUSEADDR. SO_BUF_LOCK is kept as `bufferLocks`, given
    // back once the queues are in.
    const options = changedOptions(toolSocketOptions(s), base.family, SOCK.STREAM, IPPROTO.TCP)
      .filter((o) => o.name !== "SO_BUF_LOCK");
    held = new HeldConnection(s, findOption(options, "SO_REUSEADDR"));
    // Before anything is read: netfilter drops its packets from now until its restore.
    if (!inContainer) ctx.networkLock?.add(base.address, base.peer, fail);
    held.hold(fail);
    const entry = readConnection(s, fail);
    if (inContainer && entry.state !== "established") {
      // Its FINs would come back through segments forged in the tool's net namespace.
      fail(`a ${entry.state} TCP connection inside a container is not dumped yet`);
    }
    const hold = held;
    const end = (ok: boolean) => {
      try {
        if (!ok || ctx.leaveRunning) hold.putBack();
      } finally {
        hold.close();
      }
    };
    // With nowhere to wait for the end of the dump, the connection is put back at once.
    if (ctx.atDumpEnd) ctx.atDumpEnd(end);
    else end(false);
    const closing = entry.state === "established" ? "" : STATE_NOTES[entry.state];
    return {
      id: fd.fileId,
      kind: "tcp-stream",
      flags: fd.flags,
      family: base.family,
      address: base.address,
      peer: base.peer,
      options,
      inode: fd.inode,
      description: description + closing,
      ...entry,
    };
  } catch (err) {
    try {
      held?.putBack();
    } finally {
      held ? held.close() : close(s);
    }
    throw err;
  }
}

function readConnection(s: number, fail: (why: string) => never): TcpConnectionState {
  const info = tryGetsockopt(s, SOL.TCP, TCP.INFO, 8);
  if (typeof info === "number") fail(`TCP_INFO failed (${errnoName(-info)})`);
  const tcpState = info[0];
  if (!isTcpStreamState(tcpState)) {
    fail(`it went to state ${tcpStateName(tcpState)} during the dump`);
  }
  const tcpOptions = info[5];
  const int = (level: number, option: number, what: string): number => {
    const v = tryGetsockopt(s, level, option, 4);
    if (typeof v === "number") fail(`cannot read ${what} (${errnoName(-v)})`);
    return readU32(v);
  };
  const mss = int(SOL.TCP, TCP.MAXSEG, "TCP_MAXSEG");
  const timestamp = tcpOptions & TCPI_OPT.TIMESTAMPS
    ? int(SOL.TCP, TCP.TIMESTAMP, "its timestamp")
    : 0;
  const w = tryGetsockopt(s, SOL.TCP, TCP.REPAIR_WINDOW, 20);
  if (typeof w === "number") fail(`TCP_REPAIR_WINDOW failed (${errnoName(-w)})`);
  const window = {
    sndWl1: readU32(w, 0),
    sndWnd: readU32(w, 4),
    maxWindow: readU32(w, 8),
    rcvWnd: readU32(w, 12),
    rcvWup: readU32(w, 16),
  };
  const lengths = [SOCK_IOCTL.SIOCINQ, SOCK_IOCTL.SIOCOUTQ, SOCK_IOCTL.SIOCOUTQNSD].map(
    (request) => {
      const n = tryIoctlInt(s, request);
      if (n < 0) fail(`cannot read its queue lengths (${errnoName(-n)})`);
      return n;
    },
  );
  const state = STREAM_STATES[tcpState];
  const fins = finsOf(state);
  if (state === "close") {
    // Nothing more goes out of an ended connection: a reset one may count bytes it dropped.
    lengths[1] = lengths[2] = 0;
  } else if (fins.sent && !fins.acked) {
    // Our FIN counts in the send queue's lengths but holds no byte: it is last, and unsent when
    // anything is.
    lengths[1] = Math.max(0, lengths[1] - 1);
    lengths[2] = Math.max(0, lengths[2] - 1);
  }
  if (state === "syn-sent") {
    // The queue lengths say nothing while connecting: a SYN that carries data (TCP Fast Open)
    // shows in the send queue itself.
    trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND);
    if (tryRecv(s, new Uint8Array(1), MSG.PEEK | MSG.DONTWAIT) !== 0) {
      fail("its SYN carries data (TCP Fast Open), which tardigrade does not keep");
    }
  }
  const bufferLocks = tryGetsockopt(s, SOL.SOCKET, SO.BUF_LOCK, 4);
  const incoming = readQueue(s, TCP_QUEUE.RECV, lengths[0], fail);
  const outgoing = state === "close"
    ? { seq: 0, data: new Uint8Array(0) }
    : readQueue(s, TCP_QUEUE.SEND, lengths[1], fail);
  // No queue selected: in repair mode with the send queue selected, the kernel would count
  // unsent bytes as sent without sending them.
  trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE);
  const revents = tryPoll(s, POLL.RDHUP);
  return {
    state,
    readShutdown: revents > 0 && (revents & POLL.RDHUP) !== 0,
    bufferLocks: typeof bufferLocks === "number" ? 0 : readU32(bufferLocks),
    inSeq: incoming.seq,
    inQueue: incoming.data,
    outSeq: outgoing.seq,
    outQueue: outgoing.data,
    unsent: Math.min(lengths[2], lengths[1]),
    mss,
    tcpOptions,
    sndWscale: info[6] & 0xf,
    rcvWscale: info[6] >> 4,
    timestamp,
    window,
  };
}

// ---- Restore ----

/**
 * The TCP state of a socket this kernel has now for the connection's address pair, or null; a
 * listener on the local port (the one that accepted it) does not count.
 */
function existingSocketState(e: TcpStreamEntry): number | null {
  const state = tcpSocketState(e.family, e.address, e.peer);
  return state === TCP_STATE.LISTEN ? null : state;
}

function checkTcpStream(e: TcpStreamEntry): string | null {
  const state = existingSocketState(e);
  if (state === null) return null;
  const running = state === TCP_STATE.TIME_WAIT ? "" : "; is the dumped process still running?";
  return `${e.description}: this machine has that connection already (a socket in state ` +
    `${tcpStateName(state)}${running})`;
}

/**
 * Writes `data` into the tool's socket, growing the buffer it goes through (`force`) whenever
 * the kernel has no room: the original may have held its queues in a larger buffer.
 */
function writeBack(s: number, data: Uint8Array, force: number, what: string): void {
  const bufferOption = force === SO.SNDBUFFORCE ? SO.SNDBUF : SO.RCVBUF;
  for (let off = 0, grown = 0; off < data.length;) {
    const r = trySend(s, data.subarray(off), MSG.DONTWAIT);
    if (r > 0) {
      off += r;
      continue;
    }
    const size = tryGetsockopt(s, SOL.SOCKET, bufferOption, 4);
    if ((r === -Errno.EAGAIN || r === -Errno.ENOMEM) && typeof size !== "number" && grown++ < 12) {
      // The kernel doubles what is set: the new size is twice the old one.
      trySetsockoptInt(s, SOL.SOCKET, force, readU32(size));
      continue;
    }
    throw new Error(`${what}: ${off} of ${data.length} bytes written back (${errnoName(-r)})`);
  }
}

/** Throws naming the call when its result `r` is an error. */
function must(r: number, what: string): void {
  if (r < 0) throw new Error(`${what} failed (${errnoName(-r)})`);
}

/** The first unacknowledged sequence number of the dumped connection (snd_una). */
function sndUna(e: TcpStreamEntry, fins: Fins): number {
  return (e.outSeq - e.outQueue.length - (fins.sent && !fins.acked ? 1 : 0)) >>> 0;
}

/** Sends `e`'s socket a segment as from its peer (tcp_segment.ts), with the dumped window. */
function fromPeer(e: TcpStreamEntry, seq: number, ack: number, flags: number): void {
  const window = Math.min(
    0xffff,
    e.window.sndWnd >>> (e.tcpOptions & TCPI_OPT.WSCALE ? e.sndWscale : 0),
  );
  sendSegment({ from: e.peer, to: e.address, seq: seq >>> 0, ack: ack >>> 0, flags, window });
}

/** The TCP state of the tool's socket `s`, or a negative errno. */
function stateOf(s: number): number {
  const info = tryGetsockopt(s, SOL.TCP, TCP.INFO, 8);
  return typeof info === "number" ? info : info[0];
}

/**
 * Whether `done()` holds within 5 s: a segment as from the peer comes in through loopback
 * at once, but maybe on another CPU.
 */
function soon(done: () => boolean): boolean {
  const nap = new Int32Array(new SharedArrayBuffer(4));
  for (let tries = 0; !done(); tries++) {
    if (tries >= 1000) return false;
    Atomics.wait(nap, 0, 0, 5);
  }
  return true;
}

/** Waits until `s` is in `state` (see `soon`); throws naming the step when it is not. */
function expectState(s: number, state: number, step: string): void {
  if (!soon(() => stateOf(s) === state)) {
    throw new Error(
      `${step}: the socket is in state ${tcpStateName(stateOf(s))}, not ${tcpStateName(state)}`,
    );
  }
}

/** Makes the connection in repair mode on the tool's socket `s` (see the header for the order). */
function repairConnection(e: TcpStreamEntry, s: number): void {
  const r = trySetsockoptInt(s, SOL.TCP, TCP.REPAIR, TCP_REPAIR.ON);
  if (r === -Errno.EPERM) throw new Error("TCP_REPAIR needs CAP_NET_ADMIN, which the tool lacks");
  must(r, "TCP_REPAIR");
  must(tryBind(s, e.address), "bind");
  const fins = finsOf(e.state);
  if (e.state === "close") {
    repairEnded(e, s);
    return;
  }
  if (e.state === "syn-sent") {
    // The SYN's sequence number (the dumped one is past it); connect() comes at resume, out of
    // repair mode, so that a SYN goes out again.
    must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
    must(trySetsockoptInt(s, SOL.TCP, TCP.QUEUE_SEQ, e.outSeq - 1), "TCP_QUEUE_SEQ (send)");
    must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE), "TCP_REPAIR_QUEUE");
    return;
  }
  // The FINs are not in the queues: they come back at the end, by shutdown and by segment.
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.RECV), "TCP_REPAIR_QUEUE");
  must(
    trySetsockoptInt(
      s,
      SOL.TCP,
      TCP.QUEUE_SEQ,
      e.inSeq - (fins.received ? 1 : 0) - e.inQueue.length,
    ),
    "TCP_QUEUE_SEQ (receive)",
  );
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
  must(
    trySetsockoptInt(
      s,
      SOL.TCP,
      TCP.QUEUE_SEQ,
      e.outSeq - (fins.sent ? 1 : 0) - e.outQueue.length,
    ),
    "TCP_QUEUE_SEQ (send)",
  );
  const c = tryConnect(s, e.peer);
  if (c === -Errno.EADDRNOTAVAIL) {
    throw new Error("the connection exists already (is the dumped process still running?)");
  }
  must(c, `connect to ${formatAddress(e.peer)}`);

  const opts: number[] = [TCPOPT.MAXSEG, e.mss];
  if (e.tcpOptions & TCPI_OPT.WSCALE) opts.push(TCPOPT.WINDOW, e.sndWscale | (e.rcvWscale << 16));
  if (e.tcpOptions & TCPI_OPT.SACK) opts.push(TCPOPT.SACK_PERM, 0);
  if (e.tcpOptions & TCPI_OPT.TIMESTAMPS) opts.push(TCPOPT.TIMESTAMP, 0);
  const repairOpts = new Uint8Array(new Uint32Array(opts).buffer);
  must(trySetsockopt(s, SOL.TCP, TCP.REPAIR_OPTIONS, repairOpts), "TCP_REPAIR_OPTIONS");
  if (e.tcpOptions & TCPI_OPT.TIMESTAMPS) {
    must(trySetsockoptInt(s, SOL.TCP, TCP.TIMESTAMP, e.timestamp), "TCP_TIMESTAMP");
  }

  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.RECV), "TCP_REPAIR_QUEUE");
  writeBack(s, e.inQueue, SO.RCVBUFFORCE, "receive queue");
  // Bytes the peer may have seen: written back in repair mode, they count as sent.
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
  writeBack(s, e.outQueue.subarray(0, e.outQueue.length - e.unsent), SO.SNDBUFFORCE, "send queue");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE), "TCP_REPAIR_QUEUE");

  const w = e.window;
  // The peer's FIN, not in the receive sequence yet, takes one from the window (as libsoccr).
  const fin = fins.received ? 1 : 0;
  const win = new Uint32Array([w.sndWl1, w.sndWnd, w.maxWindow, w.rcvWnd + fin, w.rcvWup - fin]);
  must(
    trySetsockopt(s, SOL.TCP, TCP.REPAIR_WINDOW, new Uint8Array(win.buffer)),
    "TCP_REPAIR_WINDOW",
  );
  if (e.readShutdown && !fins.received) must(tryShutdown(s, SHUT.RD), "shutdown(SHUT_RD)");
  if (fins.acked) {
    // FIN_WAIT2: our FIN counted as sent (the send queue selected, it is not transmitted), then
    // the peer's acknowledgement of it.
    must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
    must(tryShutdown(s, SHUT.WR), "shutdown(SHUT_WR)");
    must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE), "TCP_REPAIR_QUEUE");
    fromPeer(e, e.inSeq, e.outSeq, TCP_FLAG.ACK);
    expectState(s, TCP_STATE.FIN_WAIT2, "the acknowledgement of its FIN");
  }
}

/**
 * An ended connection (CLOSE, its bytes still to read, then EOF): made in repair mode as a
 * connection to itself, with sequence numbers of its own that make its own segments acceptable
 * to it (its peer is gone and no call shows one), the bytes written back, then the peer's FIN
 * (CLOSE_WAIT), ours counted as sent (LAST_ACK) and its acknowledgement: the kernel ends it as
 * it ended the original (CLOSE, shut both ways, SOCK_DONE), and nothing goes out.
 */
function repairEnded(e: TcpStreamEntry, s: number): void {
  const fin = e.inSeq; // the peer's FIN, just past the bytes; ours comes right after it
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.RECV), "TCP_REPAIR_QUEUE");
  must(trySetsockoptInt(s, SOL.TCP, TCP.QUEUE_SEQ, fin - e.inQueue.length), "TCP_QUEUE_SEQ");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
  must(trySetsockoptInt(s, SOL.TCP, TCP.QUEUE_SEQ, fin + 1), "TCP_QUEUE_SEQ");
  must(tryConnect(s, e.address), "connect to itself");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.RECV), "TCP_REPAIR_QUEUE");
  writeBack(s, e.inQueue, SO.RCVBUFFORCE, "receive queue");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE), "TCP_REPAIR_QUEUE");
  fromPeer(e, fin, fin + 1, TCP_FLAG.FIN | TCP_FLAG.ACK);
  expectState(s, TCP_STATE.CLOSE_WAIT, "its peer's FIN");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.SEND), "TCP_REPAIR_QUEUE");
  must(tryShutdown(s, SHUT.WR), "shutdown(SHUT_WR)");
  must(trySetsockoptInt(s, SOL.TCP, TCP.REPAIR_QUEUE, TCP_QUEUE.NONE), "TCP_REPAIR_QUEUE");
  fromPeer(e, fin + 1, fin + 2, TCP_FLAG.ACK);
  expectState(s, TCP_STATE.CLOSE, "the acknowledgement of its FIN");
}

/**
 * The rest of the connection once out of repair mode, in its sequence order: a connecting socket
 * connects; the bytes never sent go out as ordinary writes; then the FINs of a closing one, ours
 * by shutdown(SHUT_WR) after those bytes, the peer's by a segment as from it (see the header).
 */
function finishConnection(e: TcpStreamEntry, s: number): void {
  if (e.state === "close") return;
  if (e.state === "syn-sent") {
    connectAgain(e, s);
    return;
  }
  sendUnsent(e, s);
  const fins = finsOf(e.state);
  if (fins.sent && !fins.acked && !fins.receivedFirst) {
    must(tryShutdown(s, SHUT.WR), "shutdown(SHUT_WR)");
  }
  if (fins.received) {
    fromPeer(e, e.inSeq - 1, sndUna(e, fins), TCP_FLAG.FIN | TCP_FLAG.ACK);
    if (!soon(() => (tryPoll(s, POLL.RDHUP) & POLL.RDHUP) !== 0)) {
      throw new Error("the socket did not take its peer's FIN");
    }
  }
  if (fins.receivedFirst) must(tryShutdown(s, SHUT.WR), "shutdown(SHUT_WR)");
}

/**
 * connect() again for a socket that was connecting: a SYN goes out with the dumped sequence
 * number. Non-blocking for the while (the file is the target's too): a program that was blocked
 * in connect() waits on in its restarted call.
 */
function connectAgain(e: TcpStreamEntry, s: number): void {
  const flags = Number(syscall("fcntl", s, F.GETFL, 0));
  if (!(flags & O.NONBLOCK)) syscall("fcntl", s, F.SETFL, flags | O.NONBLOCK);
  try {
    const c = tryConnect(s, e.peer);
    if (c < 0 && c !== -Errno.EINPROGRESS) must(c, `connect to ${formatAddress(e.peer)}`);
  } finally {
    if (!(flags & O.NONBLOCK)) syscall("fcntl", s, F.SETFL, flags);
  }
}

/** Connections made in repair mode and held by the tool, per restore context. */
const pending = new WeakMap<object, { entry: TcpStreamEntry; socket: number }[]>();

function pendingOf(ctx: FileRestoreContext): { entry: TcpStreamEntry; socket: number }[] {
  const scope = ctx.scope ?? ctx;
  let list = pending.get(scope);
  if (!list) pending.set(scope, list = []);
  return list;
}

/**
 * A new TCP socket of the tool's, in the net namespace of the process being restored: made by
 * the process itself (an injected socket(), taken with pidfd_getfd) when it lives in another
 * than the tool's (a container's), else by the tool. A negative errno on failure.
 */
function socketFor(ctx: FileRestoreContext, family: number, type: number): number {
  if (namespaceOf(ctx.pid, "net") === namespaceOf(Deno.pid, "net")) {
    return trySocket(family, type, IPPROTO.TCP);
  }
  const theirs = Number(ctx.injector.raw(SYS.socket, family, type, IPPROTO.TCP));
  if (theirs < 0) return theirs;
  try {
    return pidfdGetfd(ctx.pidfd, theirs);
  } finally {
    injectClose(ctx, theirs); // handed back below, as a socket of the tool's is
  }
}

function openTcpStream(e: TcpStreamEntry, ctx: FileRestoreContext): number {
  const type = SOCK.STREAM | SOCK.CLOEXEC | (e.flags & O.NONBLOCK ? SOCK.NONBLOCK : 0);
  const s = socketFor(ctx, e.family, type);
  if (s < 0) throw new RestoreError(`${e.description}: socket() failed (${errnoName(-s)})`);
  let fd = -1;
  try {
    fd = handToTarget(ctx, s, e.description);
    for (const o of e.options) setOption(ctx, fd, o);
    repairConnection(e, s);
    pendingOf(ctx).push({ entry: e, socket: s });
    return fd;
  } catch (err) {
    close(s); // still in repair mode: it goes without a word to the peer
    abandonFd(ctx, fd, e.description, err);
  }
}

/** Sends what the program had written and the kernel never sent, as ordinary writes. */
function sendUnsent(e: TcpStreamEntry, s: number): void {
  if (!e.unsent) return;
  writeBack(s, e.outQueue.subarray(e.outQueue.length - e.unsent), SO.SNDBUFFORCE, "unsent bytes");
}

/**
 * Lets every connection restored with `scope` (or a restore context) run: repair mode off, then
 * the bytes never sent, SO_BUF_LOCK as dumped, and the tool's copies closed. Called once every
 * process of the tree is made, so both ends of a connection inside the tree exist by then.
 */
function resumeTcpStreams(scope: object): void {
  const list = pending.get(scope) ?? [];
  pending.delete(scope);
  let at: TcpStreamEntry | undefined;
  try {
    // Every one out of repair mode before any sends: a peer in the tree must be there to answer.
    for (const { entry, socket } of list) {
      at = entry;
      must(trySetsockoptInt(socket, SOL.TCP, TCP.REPAIR, TCP_REPAIR.OFF), "TCP_REPAIR off");
      const reuse = findOption(entry.options, "SO_REUSEADDR");
      if (reuse) trySetsockopt(socket, reuse.level, reuse.option, reuse.value);
    }
    for (const { entry, socket } of list) {
      at = entry;
      finishConnection(entry, socket);
      trySetsockoptInt(socket, SOL.SOCKET, SO.BUF_LOCK, entry.bufferLocks);
    }
  } catch (err) {
    throw new RestoreError(`${at?.description}: cannot resume it: ${(err as Error).message}`);
  } finally {
    for (const { socket } of list) close(socket);
  }
}

/**
 * Lets go of the tool's copies of connections restored with `scope` without resuming them (a
 * restore that failed: in repair mode they close without a word to the peer).
 */
function dropTcpStreams(scope: object): void {
  for (const { socket } of pending.get(scope) ?? []) close(socket);
  pending.delete(scope);
}

/** TCP connections; dispatch.ts hands them over at dump (no fd kind of their own). */
export const tcpStreamHandler: FileHandler<TcpStreamEntry> = {
  kind: "tcp-stream",
  fields: {
    state: { oneOf: Object.values(STREAM_STATES) },
    readShutdown: "bool",
    bufferLocks: "whole",
    inSeq: "whole",
    inQueue: "bytes",
    outSeq: "whole",
    outQueue: "bytes",
    unsent: "whole",
    mss: "whole",
    tcpOptions: "whole",
    sndWscale: "whole",
    rcvWscale: "whole",
    timestamp: "whole",
    window: {
      map: {
        sndWl1: "whole",
        sndWnd: "whole",
        maxWindow: "whole",
        rcvWnd: "whole",
        rcvWup: "whole",
      },
    },
    family: "whole",
    address: "bytes",
    peer: "bytes",
    options: SOCKET_OPTIONS,
    inode: "whole",
    description: "text",
  },
  fdKinds: [],
  dump(fd: Fd): TcpStreamEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: TCP connections are dumped by dispatch.ts`,
    );
  },
  check: checkTcpStream,
  open: openTcpStream,
  finish(_e: TcpStreamEntry, _fd: number, ctx: FileRestoreContext): void {
    // Within a tree the peer may be in a process not made yet: the restore resumes them all.
    if (!ctx.scope) resumeTcpStreams(ctx);
  },
  resume: resumeTcpStreams,
  abort: dropTcpStreams,
};
