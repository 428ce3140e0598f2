/**
 * Established TCP connections (IPv4 and IPv6), dumped and made again with the kernel's TCP repair
 * mode, as CRIU's libsoccr does: a socket in repair mode lets its sequence numbers, queues, window
 * and negotiated options be read and set, connect() in it sends no SYN, and closing it sends
 * neither FIN nor RST.
 *
 * Dump (socket.ts hands over a TCP socket in state ESTABLISHED or CLOSE_WAIT): unlike socket.ts,
 * everything is done from the tool on a copy of the socket taken with pidfd_getfd, because
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
 * (POLLRDHUP), SO_BUF_LOCK (which buffer sizes the program fixed), and the options socket.ts keeps.
 *
 * Afterwards: when the dump kills the processes, the socket stays in repair mode behind its filter
 * and vanishes silently with them, so the peer sees nothing. When they run on, or the dump fails,
 * the filter comes off, repair mode goes off with TCP_REPAIR_OFF_NO_WP (no window probe) and
 * SO_REUSEADDR is set again (leaving repair mode clears it): the connection is as it was. The
 * tool's copy is always closed.
 *
 * Restore: the tool makes the socket and hands it to the target (an injected pidfd_getfd on the
 * tool), which sets the options as socket.ts does (before repair mode: SO_REUSEADDR would undo the
 * forced reuse repair mode gives). Then, from the tool: TCP_REPAIR on, bind to the local address
 * (repair mode binds even next to the listener that accepted the connection), both queues' first
 * sequence numbers (the dumped ends minus the queued bytes), connect (no SYN: the socket is at once
 * ESTABLISHED), TCP_REPAIR_OPTIONS (mss, window scales, SACK, timestamps), TCP_TIMESTAMP, the
 * receive queue and the sent but unacknowledged bytes written back in repair mode, then
 * TCP_REPAIR_WINDOW. Every connection stays in repair mode until every process of the tree is
 * made (both ends of a loopback connection may be in the image); then `resumeTcpStreams` turns
 * repair off (a window probe tells the peer where we are; data still unacknowledged is sent again
 * on the retransmission timer), sets SO_REUSEADDR again, sends the bytes never sent as ordinary
 * writes, puts back SO_BUF_LOCK as dumped (buffer sizes the program never fixed autotune again)
 * and lets go of the tool's copy. A buffer too small for what is written back is grown. check()
 * refuses up front when this kernel has a socket for the same address pair (sock_diag): the
 * original was not killed, or the connection lingers in TIME_WAIT.
 *
 * CLOSE_WAIT (the peer closed its side, this one did not yet) comes back ESTABLISHED with reading
 * shut down (shutdown SHUT_RD) and its receive sequence past the peer's FIN: reads give the queued
 * bytes then EOF, writes go on, our ACKs acknowledge the FIN as before. Only TCP_INFO shows the
 * difference, and a close then passes through FIN_WAIT rather than LAST_ACK. An established
 * socket the program shut for reading comes back shut too.
 *
 * Limits. Between the kill and the restore no socket has the connection: a packet from the peer
 * (data, a retransmission, a keepalive probe) gets a RST from this kernel and the connection is
 * lost (CRIU keeps a netfilter rule in place meanwhile; tardigrade does not touch netfilter), so
 * the peer must stay quiet until the restore. Other states (SYN_SENT, SYN_RECV, FIN_WAIT1/2,
 * CLOSING, LAST_ACK, TIME_WAIT) are refused by socket.ts. Not kept: ECN, urgent data, a
 * TCP_MAXSEG the program set, the congestion control algorithm, MD5/AO signatures, a buffer size
 * the program fixed below what the queues needed (it is grown). A tool killed with SIGKILL during
 * a dump leaves the connection in repair mode behind the filter. The restore happens in the tool's
 * network namespace.
 */
import { addressOf, close, errnoName, O, pidfdGetfd, SYS } from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileEntry } from "../../image/schema.ts";
import {
  defaultOptions,
  formatAddress,
  local,
  OPTIONS,
  sameBytes,
  setOption,
  type SocketOption,
} from "./socket.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { abandonFd, F } from "../util.ts";

/** What TCP_REPAIR_WINDOW reads and sets (struct tcp_repair_window). */
export interface TcpWindow {
  sndWl1: number;
  sndWnd: number;
  maxWindow: number;
  rcvWnd: number;
  rcvWup: number;
}

/** The kernel's state of a connection, as TCP repair reads and sets it. */
export interface TcpConnectionState {
  /** "close-wait": the peer had closed its side (comes back established, shut for reading). */
  state: "established" | "close-wait";
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

/** An established TCP connection with the bytes in flight both ways. */
export interface TcpStreamEntry extends FileEntry, TcpConnectionState {
  kind: "tcp-stream";
  /** AF_INET 2, AF_INET6 10. */
  family: number;
  /** Raw sockaddr of this end. */
  address: Uint8Array;
  /** Raw sockaddr of the peer. */
  peer: Uint8Array;
  /** Options that differ from a fresh socket's, as socket.ts keeps them. */
  options: SocketOption[];
  /** The dumped socket's inode. */
  inode: bigint;
  /** "IPv4 TCP 127.0.0.1:40000 connected to 127.0.0.1:8080", for messages. */
  description: string;
}

/** What socket.ts already knows of the connection it hands over. */
export interface TcpStreamBase {
  /** "IPv4 TCP" … */
  what: string;
  family: number;
  address: Uint8Array;
  peer: Uint8Array;
}

const AF_NETLINK = 16, SOCK_STREAM = 1, SOCK_DGRAM = 2;
const SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
const IPPROTO_TCP = 6, SOL_TCP = 6, SOL_SOCKET = 1;
const SO_SNDBUF = 7, SO_RCVBUF = 8, SO_SNDBUFFORCE = 32, SO_RCVBUFFORCE = 33;
const SO_ATTACH_FILTER = 26, SO_DETACH_FILTER = 27, SO_BUF_LOCK = 72;
const TCP_INFO = 11, TCP_MAXSEG = 2, TCP_REPAIR = 19, TCP_REPAIR_QUEUE = 20, TCP_QUEUE_SEQ = 21;
const TCP_REPAIR_OPTIONS = 22, TCP_TIMESTAMP = 24, TCP_REPAIR_WINDOW = 29, TCP_ULP = 31;
const REPAIR_ON = 1, REPAIR_OFF = 0, REPAIR_OFF_NO_WP = -1;
const NO_QUEUE = 0, RECV_QUEUE = 1, SEND_QUEUE = 2;
const TCPI_OPT_TIMESTAMPS = 1, TCPI_OPT_SACK = 2, TCPI_OPT_WSCALE = 4;
const TCPOPT_MAXSEG = 2, TCPOPT_WINDOW = 3, TCPOPT_SACK_PERM = 4, TCPOPT_TIMESTAMP = 8;
const TCP_ESTABLISHED = 1, TCP_TIME_WAIT = 6, TCP_CLOSE_WAIT = 8, TCP_LISTEN = 10;
const SIOCINQ = 0x541b, SIOCOUTQ = 0x5411, SIOCOUTQNSD = 0x894b;
const MSG_PEEK = 2, MSG_DONTWAIT = 0x40, SHUT_RD = 0;
const POLLRDHUP = 0x2000;
const EAGAIN = 11, ENOMEM = 12, EPERM = 1, EADDRNOTAVAIL = 99;
const NETLINK_SOCK_DIAG = 4, SOCK_DIAG_BY_FAMILY = 20, NLMSG_ERROR = 2, NLM_F_REQUEST = 1;

const NR = {
  poll: 7,
  socket: 41,
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  shutdown: 48,
  bind: 49,
  setsockopt: 54,
  getsockopt: 55,
  ioctl: 16,
} as const;

const STATE_NAMES: Record<number, string> = {
  1: "ESTABLISHED",
  2: "SYN_SENT",
  3: "SYN_RECV",
  4: "FIN_WAIT1",
  5: "FIN_WAIT2",
  6: "TIME_WAIT",
  8: "CLOSE_WAIT",
  9: "LAST_ACK",
  11: "CLOSING",
};

/** Whether socket.ts should hand a TCP socket in this TCP_INFO state to `dumpTcpStream`. */
export function isTcpStreamState(state: number): boolean {
  return state === TCP_ESTABLISHED || state === TCP_CLOSE_WAIT;
}

// ---- Socket calls in the tool (the result, or a negative errno) ----

const u32Bytes = (n: number) => new Uint8Array(new Uint32Array([n >>> 0]).buffer);

function setBytes(s: number, level: number, option: number, value: Uint8Array): number {
  return local(NR.setsockopt, s, level, option, addressOf(value), value.length);
}

const setInt = (s: number, level: number, option: number, value: number) =>
  setBytes(s, level, option, u32Bytes(value));

function getBytes(s: number, level: number, option: number, size: number): Uint8Array | number {
  const value = new Uint8Array(Math.max(size, 1));
  const len = new Uint32Array([size]);
  const r = local(NR.getsockopt, s, level, option, addressOf(value), addressOf(len));
  return r < 0 ? r : value.subarray(0, len[0]);
}

function ioctlInt(s: number, request: number): number {
  const value = new Int32Array(1);
  const r = local(NR.ioctl, s, request, addressOf(new Uint8Array(value.buffer)));
  return r < 0 ? r : value[0];
}

/** poll() of one fd with no wait: its revents. */
function pollNow(s: number, events: number): number {
  const pfd = new Uint8Array(8);
  const v = new DataView(pfd.buffer);
  v.setInt32(0, s, true);
  v.setInt16(4, events, true);
  return local(NR.poll, addressOf(pfd), 1, 0) > 0 ? v.getUint16(6, true) : 0;
}

function uint32(b: Uint8Array, at = 0): number {
  return new DataView(b.buffer, b.byteOffset, b.length).getUint32(at, true);
}

// ---- Dump ----

/**
 * A socket filter that drops every packet: struct sock_fprog (len 1, pointer) at 0, pointing at
 * its one classic BPF instruction `ret #0` at 16. One buffer above V8's 64-byte limit for typed
 * arrays kept in the JS heap, so it lives outside it and the pointer inside stays valid.
 */
const DROP_ALL_PROG = (() => {
  const buf = new Uint8Array(128);
  const v = new DataView(buf.buffer);
  v.setUint16(0, 1, true);
  v.setBigUint64(8, addressOf(buf) + 16n, true);
  buf[16] = 0x06; // BPF_RET | BPF_K, k = 0
  return buf;
})();

/** The length in instructions of the socket filter `s` has (SO_GET_FILTER with no room), or 0. */
function filterLength(s: number): number {
  const len = new Uint32Array(1);
  return local(NR.getsockopt, s, SOL_SOCKET, SO_ATTACH_FILTER, 0, addressOf(len)) === 0
    ? len[0]
    : 0;
}

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
    if (filterLength(this.socket) > 0) {
      fail("it has a socket filter of its own (SO_ATTACH_FILTER), which tardigrade does not keep");
    }
    const ulp = getBytes(this.socket, SOL_TCP, TCP_ULP, 16);
    if (typeof ulp !== "number" && ulp.length > 0 && ulp[0] !== 0) {
      const name = new TextDecoder().decode(ulp).replace(/\0.*$/s, "");
      fail(`it carries the upper-layer protocol "${name}" (TCP_ULP), which tardigrade cannot dump`);
    }
    let r = setBytes(this.socket, SOL_SOCKET, SO_ATTACH_FILTER, DROP_ALL_PROG.subarray(0, 16));
    if (r < 0) fail(`cannot attach a filter to hold it still (${errnoName(-r)})`);
    this.#filtered = true;
    r = setInt(this.socket, SOL_TCP, TCP_REPAIR, REPAIR_ON);
    if (r < 0) {
      fail(
        r === -EPERM
          ? "TCP_REPAIR needs CAP_NET_ADMIN, which the tool lacks"
          : `cannot enter TCP repair mode (${errnoName(-r)})`,
      );
    }
    this.#repairing = true;
  }

  /** Turns repair mode off without a window probe, takes the filter off, SO_REUSEADDR back. */
  putBack(): void {
    if (this.#repairing) {
      setInt(this.socket, SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE);
      setInt(this.socket, SOL_TCP, TCP_REPAIR, REPAIR_OFF_NO_WP);
      this.#repairing = false;
      const reuse = this.reuseAddress;
      if (reuse) setBytes(this.socket, reuse.level, reuse.option, reuse.value);
    }
    if (this.#filtered) {
      setInt(this.socket, SOL_SOCKET, SO_DETACH_FILTER, 0);
      this.#filtered = false;
    }
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    close(this.socket);
  }
}

/** The options socket.ts keeps for a TCP socket of `family`, read from the tool's copy. */
function changedOptions(s: number, family: number): SocketOption[] {
  const defaults = defaultOptions(family, SOCK_STREAM, IPPROTO_TCP);
  const out: SocketOption[] = [];
  for (const o of OPTIONS) {
    if (!o.applies(family, SOCK_STREAM, IPPROTO_TCP)) continue;
    const value = getBytes(s, o.level, o.option, o.size);
    if (typeof value === "number") continue; // not readable here: nothing to put back
    const fresh = defaults?.get(o.name);
    if (fresh instanceof Uint8Array && sameBytes(fresh, value)) continue;
    out.push({ name: o.name, level: o.level, option: o.option, value });
  }
  return out;
}

/** Reads a queue in repair mode: its end sequence number and its bytes, without consuming them. */
function readQueue(
  s: number,
  queue: number,
  length: number,
  fail: (why: string) => never,
): { seq: number; data: Uint8Array } {
  const name = queue === RECV_QUEUE ? "receive" : "send";
  let r = setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, queue);
  if (r < 0) fail(`cannot select its ${name} queue (${errnoName(-r)})`);
  const seq = getBytes(s, SOL_TCP, TCP_QUEUE_SEQ, 4);
  if (typeof seq === "number") fail(`cannot read its ${name} sequence (${errnoName(-seq)})`);
  // One byte more than expected: a longer queue than the ioctl said would be caught.
  const data = new Uint8Array(length + 1);
  r = length
    ? local(NR.recvfrom, s, addressOf(data), data.length, MSG_PEEK | MSG_DONTWAIT, 0, 0)
    : 0;
  if (r !== length) {
    fail(`peeking its ${name} queue gave ${r < 0 ? errnoName(-r) : `${r} bytes`}, not ${length}`);
  }
  return { seq: uint32(seq), data: data.subarray(0, length) };
}

/**
 * Dumps the connection behind `fd` (socket.ts found it ESTABLISHED or CLOSE_WAIT). Leaves it held
 * still until the dump ends (see the header).
 */
export function dumpTcpStream(fd: Fd, ctx: FileDumpContext, base: TcpStreamBase): TcpStreamEntry {
  const description = `${base.what} ${formatAddress(base.address)} connected to ${
    formatAddress(base.peer)
  }`;
  const fail = (why: string): never => {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: ${description}: ${why}; a policy can skip it`,
    );
  };
  const s = pidfdGetfd(ctx.pidfd, fd.fd);
  let held: HeldConnection | undefined;
  try {
    // Before repair mode, which changes SO_REUSEADDR.
    const options = changedOptions(s, base.family);
    held = new HeldConnection(s, options.find((o) => o.name === "SO_REUSEADDR"));
    held.hold(fail);
    const entry = readConnection(s, fail);
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
    const closing = entry.state === "close-wait" ? ", its peer closed its side" : "";
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
  const info = getBytes(s, SOL_TCP, TCP_INFO, 8);
  if (typeof info === "number") fail(`TCP_INFO failed (${errnoName(-info)})`);
  const tcpState = info[0];
  if (!isTcpStreamState(tcpState)) {
    fail(`it went to state ${STATE_NAMES[tcpState] ?? tcpState} during the dump`);
  }
  const tcpOptions = info[5];
  const int = (level: number, option: number, what: string): number => {
    const v = getBytes(s, level, option, 4);
    if (typeof v === "number") fail(`cannot read ${what} (${errnoName(-v)})`);
    return uint32(v);
  };
  const mss = int(SOL_TCP, TCP_MAXSEG, "TCP_MAXSEG");
  const timestamp = tcpOptions & TCPI_OPT_TIMESTAMPS
    ? int(SOL_TCP, TCP_TIMESTAMP, "its timestamp")
    : 0;
  const w = getBytes(s, SOL_TCP, TCP_REPAIR_WINDOW, 20);
  if (typeof w === "number") fail(`TCP_REPAIR_WINDOW failed (${errnoName(-w)})`);
  const window = {
    sndWl1: uint32(w, 0),
    sndWnd: uint32(w, 4),
    maxWindow: uint32(w, 8),
    rcvWnd: uint32(w, 12),
    rcvWup: uint32(w, 16),
  };
  const lengths = [SIOCINQ, SIOCOUTQ, SIOCOUTQNSD].map((request) => {
    const n = ioctlInt(s, request);
    if (n < 0) fail(`cannot read its queue lengths (${errnoName(-n)})`);
    return n;
  });
  const bufferLocks = getBytes(s, SOL_SOCKET, SO_BUF_LOCK, 4);
  const incoming = readQueue(s, RECV_QUEUE, lengths[0], fail);
  const outgoing = readQueue(s, SEND_QUEUE, lengths[1], fail);
  // No queue selected: in repair mode with the send queue selected, the kernel would count
  // unsent bytes as sent without sending them.
  setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE);
  return {
    state: tcpState === TCP_CLOSE_WAIT ? "close-wait" : "established",
    readShutdown: (pollNow(s, POLLRDHUP) & POLLRDHUP) !== 0,
    bufferLocks: typeof bufferLocks === "number" ? 0 : uint32(bufferLocks),
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

/** The IP address bytes of an inet sockaddr, and its IPv6 scope id. */
function ipOf(addr: Uint8Array): { bytes: Uint8Array; scope: number } {
  const family = addr[0] | (addr[1] << 8);
  if (family === 2) return { bytes: addr.subarray(4, 8), scope: 0 };
  return { bytes: addr.subarray(8, 24), scope: addr.length >= 28 ? uint32(addr, 24) : 0 };
}

/**
 * The TCP state of a socket this kernel has now for the connection's address pair (sock_diag,
 * exact lookup), or null; a listener on the local port (the one that accepted it) does not count.
 */
function existingSocketState(e: TcpStreamEntry): number | null {
  const nl = local(NR.socket, AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (nl < 0) return null;
  try {
    const req = new Uint8Array(72);
    const v = new DataView(req.buffer);
    v.setUint32(0, req.length, true); // nlmsg_len
    v.setUint16(4, SOCK_DIAG_BY_FAMILY, true);
    v.setUint16(6, NLM_F_REQUEST, true);
    v.setUint32(8, 1, true); // seq
    req[16] = e.family;
    req[17] = IPPROTO_TCP;
    v.setUint32(20, 0xffffffff, true); // any state
    // inet_diag_sockid: ports as the sockaddrs hold them (network order), then the addresses.
    req.set(e.address.subarray(2, 4), 24);
    req.set(e.peer.subarray(2, 4), 26);
    const own = ipOf(e.address);
    req.set(own.bytes, 28);
    req.set(ipOf(e.peer).bytes, 44);
    v.setUint32(60, own.scope, true);
    v.setUint32(64, 0xffffffff, true); // no cookie
    v.setUint32(68, 0xffffffff, true);
    if (local(NR.sendto, nl, addressOf(req), req.length, 0, 0, 0) < 0) return null;
    const buf = new Uint8Array(4096);
    const n = local(NR.recvfrom, nl, addressOf(buf), buf.length, MSG_DONTWAIT, 0, 0);
    if (n < 18 || new DataView(buf.buffer).getUint16(4, true) === NLMSG_ERROR) return null;
    const state = buf[17]; // inet_diag_msg.idiag_state
    return state === TCP_LISTEN ? null : state;
  } finally {
    close(nl);
  }
}

function checkTcpStream(e: TcpStreamEntry): string | null {
  const state = existingSocketState(e);
  if (state === null) return null;
  const running = state === TCP_TIME_WAIT ? "" : "; is the dumped process still running?";
  return `${e.description}: this machine has that connection already (a socket in state ` +
    `${STATE_NAMES[state] ?? state}${running})`;
}

/**
 * Writes `data` into the tool's socket, growing the buffer it goes through (`force`) whenever
 * the kernel has no room: the original may have held its queues in a larger buffer.
 */
function writeBack(s: number, data: Uint8Array, force: number, what: string): void {
  const bufferOption = force === SO_SNDBUFFORCE ? SO_SNDBUF : SO_RCVBUF;
  for (let off = 0, grown = 0; off < data.length;) {
    const rest = data.subarray(off);
    const r = local(NR.sendto, s, addressOf(rest), rest.length, MSG_DONTWAIT, 0, 0);
    if (r > 0) {
      off += r;
      continue;
    }
    const size = getBytes(s, SOL_SOCKET, bufferOption, 4);
    if ((r === -EAGAIN || r === -ENOMEM) && typeof size !== "number" && grown++ < 12) {
      // The kernel doubles what is set: the new size is twice the old one.
      setInt(s, SOL_SOCKET, force, uint32(size));
      continue;
    }
    throw new Error(`${what}: ${off} of ${data.length} bytes written back (${errnoName(-r)})`);
  }
}

/** Throws naming the call when its result `r` is an error. */
function must(r: number, what: string): void {
  if (r < 0) throw new Error(`${what} failed (${errnoName(-r)})`);
}

/** Makes the connection in repair mode on the tool's socket `s` (see the header for the order). */
function repairConnection(e: TcpStreamEntry, s: number): void {
  const r = setInt(s, SOL_TCP, TCP_REPAIR, REPAIR_ON);
  if (r === -EPERM) throw new Error("TCP_REPAIR needs CAP_NET_ADMIN, which the tool lacks");
  must(r, "TCP_REPAIR");
  must(local(NR.bind, s, addressOf(e.address), e.address.length), "bind");
  must(setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE), "TCP_REPAIR_QUEUE");
  must(setInt(s, SOL_TCP, TCP_QUEUE_SEQ, e.inSeq - e.inQueue.length), "TCP_QUEUE_SEQ (receive)");
  must(setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE), "TCP_REPAIR_QUEUE");
  must(setInt(s, SOL_TCP, TCP_QUEUE_SEQ, e.outSeq - e.outQueue.length), "TCP_QUEUE_SEQ (send)");
  const c = local(NR.connect, s, addressOf(e.peer), e.peer.length);
  if (c === -EADDRNOTAVAIL) {
    throw new Error("the connection exists already (is the dumped process still running?)");
  }
  must(c, `connect to ${formatAddress(e.peer)}`);

  const opts: number[] = [TCPOPT_MAXSEG, e.mss];
  if (e.tcpOptions & TCPI_OPT_WSCALE) opts.push(TCPOPT_WINDOW, e.sndWscale | (e.rcvWscale << 16));
  if (e.tcpOptions & TCPI_OPT_SACK) opts.push(TCPOPT_SACK_PERM, 0);
  if (e.tcpOptions & TCPI_OPT_TIMESTAMPS) opts.push(TCPOPT_TIMESTAMP, 0);
  const repairOpts = new Uint8Array(new Uint32Array(opts).buffer);
  must(setBytes(s, SOL_TCP, TCP_REPAIR_OPTIONS, repairOpts), "TCP_REPAIR_OPTIONS");
  if (e.tcpOptions & TCPI_OPT_TIMESTAMPS) {
    must(setInt(s, SOL_TCP, TCP_TIMESTAMP, e.timestamp), "TCP_TIMESTAMP");
  }

  must(setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, RECV_QUEUE), "TCP_REPAIR_QUEUE");
  writeBack(s, e.inQueue, SO_RCVBUFFORCE, "receive queue");
  // Bytes the peer may have seen: written back in repair mode, they count as sent.
  must(setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, SEND_QUEUE), "TCP_REPAIR_QUEUE");
  writeBack(s, e.outQueue.subarray(0, e.outQueue.length - e.unsent), SO_SNDBUFFORCE, "send queue");
  must(setInt(s, SOL_TCP, TCP_REPAIR_QUEUE, NO_QUEUE), "TCP_REPAIR_QUEUE");

  const w = e.window;
  const win = new Uint32Array([w.sndWl1, w.sndWnd, w.maxWindow, w.rcvWnd, w.rcvWup]);
  must(setBytes(s, SOL_TCP, TCP_REPAIR_WINDOW, new Uint8Array(win.buffer)), "TCP_REPAIR_WINDOW");
  if (e.readShutdown) must(local(NR.shutdown, s, SHUT_RD), "shutdown(SHUT_RD)");
}

/** Gives the target the tool's socket: the same open file, by an injected pidfd_getfd. */
function handOver(ctx: FileRestoreContext, s: number): number {
  const inj = ctx.injector;
  const toolPidfd = ctx.toolPidfd();
  if (toolPidfd < 0n) {
    throw new Error(`pidfd_open of the tool failed (${errnoName(Number(-toolPidfd))})`);
  }
  try {
    const fd = inj.raw(SYS.pidfd_getfd, toolPidfd, s, 0);
    if (fd < 0n) throw new Error(`pidfd_getfd from the tool failed (${errnoName(Number(-fd))})`);
    inj.call("fcntl", fd, F.SETFD, 0); // pidfd_getfd sets FD_CLOEXEC; the fd table sets its own
    return Number(fd);
  } finally {
    inj.call("close", toolPidfd);
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

function openTcpStream(e: TcpStreamEntry, ctx: FileRestoreContext): number {
  const type = SOCK_STREAM | SOCK_CLOEXEC | (e.flags & O.NONBLOCK ? SOCK_NONBLOCK : 0);
  const s = local(NR.socket, e.family, type, IPPROTO_TCP);
  if (s < 0) throw new RestoreError(`${e.description}: socket() failed (${errnoName(-s)})`);
  let fd = -1;
  try {
    fd = handOver(ctx, s);
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
  writeBack(s, e.outQueue.subarray(e.outQueue.length - e.unsent), SO_SNDBUFFORCE, "unsent bytes");
}

/**
 * Lets every connection restored with `scope` (or a restore context) run: repair mode off, then
 * the bytes never sent, SO_BUF_LOCK as dumped, and the tool's copies closed. Called once every
 * process of the tree is made, so both ends of a connection inside the tree exist by then.
 */
export function resumeTcpStreams(scope: object): void {
  const list = pending.get(scope) ?? [];
  pending.delete(scope);
  let at: TcpStreamEntry | undefined;
  try {
    // Every one out of repair mode before any sends: a peer in the tree must be there to answer.
    for (const { entry, socket } of list) {
      at = entry;
      must(setInt(socket, SOL_TCP, TCP_REPAIR, REPAIR_OFF), "TCP_REPAIR off");
      const reuse = entry.options.find((o) => o.name === "SO_REUSEADDR");
      if (reuse) setBytes(socket, reuse.level, reuse.option, reuse.value);
    }
    for (const { entry, socket } of list) {
      at = entry;
      sendUnsent(entry, socket);
      setInt(socket, SOL_SOCKET, SO_BUF_LOCK, entry.bufferLocks);
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
export function dropTcpStreams(scope: object): void {
  for (const { socket } of pending.get(scope) ?? []) close(socket);
  pending.delete(scope);
}

/** Established TCP connections; socket.ts hands them over at dump (no fd kind of their own). */
export const tcpStreamHandler: FileHandler<TcpStreamEntry> = {
  kind: "tcp-stream",
  fdKinds: [],
  dump(fd: Fd): TcpStreamEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: TCP connections are dumped by socket.ts`,
    );
  },
  check: checkTcpStream,
  open: openTcpStream,
  finish(_e: TcpStreamEntry, _fd: number, ctx: FileRestoreContext): void {
    // Within a tree the peer may be in a process not made yet: the restore resumes them all.
    if (!ctx.scope) resumeTcpStreams(ctx);
  },
};
