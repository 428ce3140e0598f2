/**
 * Sockets a server typically holds, as CRIU does for the simple cases: listening TCP (IPv4 and
 * IPv6) and UNIX stream/seqpacket sockets, bound or unbound UDP and UNIX datagram sockets (also
 * ones connect()ed to a named address), and TCP/UNIX stream sockets that are not connected yet.
 * Established TCP connections (and CLOSE_WAIT ones) go to tcp_stream.ts, which keeps them with
 * their queues through TCP repair mode.
 *
 * Dump: everything is read inside the frozen process through its fd number, with injected
 * getsockopt/getsockname/getpeername (no pidfd_getfd: that would move the socket's net_cls and
 * netprio to the tool's cgroup). SO_DOMAIN/SO_TYPE/SO_PROTOCOL give the kind; SO_ACCEPTCONN,
 * getpeername and (TCP) the state byte of TCP_INFO give the state. The listen backlog is exact:
 * for TCP, TCP_INFO of a listener reports the accept queue's maximum (tcpi_sacked) and length
 * (tcpi_unacked), as `ss` shows them; for UNIX, a sock_diag (NETLINK_SOCK_DIAG, UDIAG_SHOW_RQLEN)
 * query by inode gives both. Only where sock_diag cannot see the socket (another network
 * namespace) the backlog falls back to net.core.somaxconn (`backlogSource: "somaxconn"`).
 * Options are compared with a fresh socket of the same kind made by the tool, and only those that
 * differ are kept (so defaults, TCP buffer autotuning and sysctls stay as they are): SO_REUSEADDR,
 * SO_REUSEPORT, SO_KEEPALIVE, SO_BROADCAST, SO_OOBINLINE, SO_PRIORITY, SO_LINGER, SO_PASSCRED,
 * SO_RCVLOWAT, SO_RCVTIMEO, SO_SNDTIMEO, SO_SNDBUF, SO_RCVBUF, TCP_NODELAY, TCP_KEEPIDLE,
 * TCP_KEEPINTVL, TCP_KEEPCNT, TCP_DEFER_ACCEPT, TCP_USER_TIMEOUT, TCP_FASTOPEN, IP_TOS, IP_TTL,
 * IP_FREEBIND, IP_BIND_ADDRESS_NO_PORT, IPV6_V6ONLY, IPV6_UNICAST_HOPS, IPV6_FREEBIND.
 *
 * Refused at dump (a DumpError naming fd, family, type and state; a policy can skip them):
 * TCP sockets connecting or closing (SYN_SENT, SYN_RECV, FIN_WAIT1/2, CLOSING, LAST_ACK,
 * TIME_WAIT: any state but LISTEN, CLOSE, ESTABLISHED and CLOSE_WAIT), connected UNIX stream and
 * seqpacket sockets and socketpairs whose peer no process of the dump holds (those with their peer
 * in the dump, or with a closed peer, go to unix_pair.ts, which keeps their queued data; but an
 * unbound one whose peer was closed everywhere, with nothing queued, stays here and comes back as
 * a socketpair with one end closed again: sock_diag shows such a socket with peer inode 0 and a
 * full shutdown; the JVM holds one), UNIX datagram sockets connected to an unnamed peer outside
 * the dump, other UNIX datagram sockets with datagrams queued, listeners with connections waiting
 * in their accept queue (they would be lost, as CRIU refuses them too), inet protocols other than
 * TCP and UDP (raw, ICMP, SCTP, UDP-Lite …) and every other family (netlink, packet, vsock …).
 * Datagrams queued on a UDP socket are not kept (UDP may lose them anyway). A TCP socket in state
 * CLOSE (never connected, or its connect failed) comes back as a fresh socket: a pending SO_ERROR
 * is not kept (reading it would clear it in the dumped process).
 *
 * Restore: socket() with SOCK_NONBLOCK as the file had O_NONBLOCK, the options (SO_SNDBUF and
 * SO_RCVBUF with half the value, as the kernel doubles it; the *FORCE variants first, so a size
 * above the sysctl maximum comes back too), bind() to the same address, connect() for a connected
 * datagram socket, listen(backlog). A UNIX socket file left over from the dumped process is
 * unlinked first, but only if it is a socket nobody is bound to (connect gives ECONNREFUSED). A
 * relative UNIX path is bound after an injected chdir to the cwd the process had at dump (the
 * restorer sets the final cwd later). check() refuses up front an address in use (a probe bind by
 * the tool, unless SO_REUSEPORT is set) and a UNIX path that is not a stale socket.
 */
import { addressOf, errno, libc, O } from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { Injector } from "../../ptrace/inject.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { dumpTcpStream, isTcpStreamState, type TcpStreamEntry } from "./tcp_stream.ts";
import { dumpUnixPair, type UnixPairEntry } from "./unix_pair.ts";
import { abandonFd, injectClose, injectRaw } from "../util.ts";

/** One socket option that differs from a fresh socket's, with its raw getsockopt value. */
export interface SocketOption {
  /** "SO_REUSEADDR" … */
  name: string;
  level: number;
  option: number;
  value: Uint8Array;
}

/** A listening, bound or unconnected socket. */
export interface SocketEntry extends FileEntry {
  kind: "socket";
  /** AF_UNIX 1, AF_INET 2, AF_INET6 10. */
  family: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5 (SOCK_NONBLOCK comes from `flags`). */
  type: number;
  protocol: number;
  /** "connected" only for a datagram socket connect()ed to a named address; "peer-closed" for an
   * unbound UNIX stream/seqpacket socket whose peer was closed (a socketpair half). */
  state: "listening" | "unconnected" | "connected" | "peer-closed";
  /** The raw sockaddr getsockname gave; null when unbound. */
  address: Uint8Array | null;
  /** The raw sockaddr of a connected datagram socket's peer. */
  peer: Uint8Array | null;
  /** listen() backlog: the accept queue's maximum when dumped. */
  backlog: number;
  backlogSource: "tcp_info" | "sock_diag" | "somaxconn" | "none";
  /** The process's cwd at dump, for a relative UNIX path. */
  cwd: string;
  options: SocketOption[];
  /** The dumped socket's inode. */
  inode: bigint;
  /** "IPv4 TCP 127.0.0.1:4000 listening", for messages. */
  description: string;
}

const AF_UNIX = 1, AF_INET = 2, AF_INET6 = 10;
const SOCK_STREAM = 1, SOCK_DGRAM = 2, SOCK_SEQPACKET = 5;
const SOCK_NONBLOCK = 0o4000, SOCK_CLOEXEC = 0o2000000;
const IPPROTO_TCP = 6, IPPROTO_UDP = 17;
const SOL_SOCKET = 1, SOL_IP = 0, SOL_IPV6 = 41;
const SO_TYPE = 3, SO_ACCEPTCONN = 30, SO_PROTOCOL = 38, SO_DOMAIN = 39;
const SO_SNDBUF = 7, SO_RCVBUF = 8, SO_SNDBUFFORCE = 32, SO_RCVBUFFORCE = 33;
const SO_REUSEADDR = 2, SO_REUSEPORT = 15;
const TCP_INFO = 11;
const IP_FREEBIND = 15, IP_BIND_ADDRESS_NO_PORT = 24, IPV6_V6ONLY = 26, IPV6_FREEBIND = 78;
const TCP_LISTEN = 10, TCP_CLOSE = 7;
const FIONREAD = 0x541b;
const ENOTCONN = 107, ECONNREFUSED = 111, EADDRINUSE = 98;

const NR = {
  socket: 41,
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  bind: 49,
  listen: 50,
  getsockname: 51,
  getpeername: 52,
  socketpair: 53,
  setsockopt: 54,
  getsockopt: 55,
  ioctl: 16,
  close: 3,
  chdir: 80,
} as const;

const FAMILIES: Record<number, string> = {
  1: "UNIX",
  2: "IPv4",
  10: "IPv6",
  16: "netlink",
  17: "packet",
  38: "alg",
  40: "vsock",
  44: "XDP",
};
const TYPES: Record<number, string> = { 1: "stream", 2: "datagram", 3: "raw", 5: "seqpacket" };
const TCP_STATES = [
  "",
  "ESTABLISHED",
  "SYN_SENT",
  "SYN_RECV",
  "FIN_WAIT1",
  "FIN_WAIT2",
  "TIME_WAIT",
  "CLOSE",
  "CLOSE_WAIT",
  "LAST_ACK",
  "LISTEN",
  "CLOSING",
  "NEW_SYN_RECV",
];

interface OptionSpec {
  name: string;
  level: number;
  option: number;
  size: number;
  applies(family: number, type: number, protocol: number): boolean;
}

const any = () => true;
const tcp = (_f: number, _t: number, p: number) => p === IPPROTO_TCP;
const ipv4 = (f: number) => f === AF_INET;
const ipv6 = (f: number) => f === AF_INET6;
const unix = (f: number) => f === AF_UNIX;

/** The options kept, in the order they are set again (all before bind and listen). */
export const OPTIONS: OptionSpec[] = [
  { name: "SO_REUSEADDR", level: SOL_SOCKET, option: SO_REUSEADDR, size: 4, applies: any },
  { name: "SO_REUSEPORT", level: SOL_SOCKET, option: SO_REUSEPORT, size: 4, applies: any },
  { name: "SO_KEEPALIVE", level: SOL_SOCKET, option: 9, size: 4, applies: any },
  { name: "SO_BROADCAST", level: SOL_SOCKET, option: 6, size: 4, applies: any },
  { name: "SO_OOBINLINE", level: SOL_SOCKET, option: 10, size: 4, applies: any },
  { name: "SO_PRIORITY", level: SOL_SOCKET, option: 12, size: 4, applies: any },
  { name: "SO_LINGER", level: SOL_SOCKET, option: 13, size: 8, applies: any },
  { name: "SO_PASSCRED", level: SOL_SOCKET, option: 16, size: 4, applies: unix },
  { name: "SO_RCVLOWAT", level: SOL_SOCKET, option: 18, size: 4, applies: any },
  { name: "SO_RCVTIMEO", level: SOL_SOCKET, option: 20, size: 16, applies: any },
  { name: "SO_SNDTIMEO", level: SOL_SOCKET, option: 21, size: 16, applies: any },
  { name: "SO_SNDBUF", level: SOL_SOCKET, option: SO_SNDBUF, size: 4, applies: any },
  { name: "SO_RCVBUF", level: SOL_SOCKET, option: SO_RCVBUF, size: 4, applies: any },
  { name: "TCP_NODELAY", level: IPPROTO_TCP, option: 1, size: 4, applies: tcp },
  { name: "TCP_KEEPIDLE", level: IPPROTO_TCP, option: 4, size: 4, applies: tcp },
  { name: "TCP_KEEPINTVL", level: IPPROTO_TCP, option: 5, size: 4, applies: tcp },
  { name: "TCP_KEEPCNT", level: IPPROTO_TCP, option: 6, size: 4, applies: tcp },
  { name: "TCP_DEFER_ACCEPT", level: IPPROTO_TCP, option: 9, size: 4, applies: tcp },
  { name: "TCP_USER_TIMEOUT", level: IPPROTO_TCP, option: 18, size: 4, applies: tcp },
  { name: "TCP_FASTOPEN", level: IPPROTO_TCP, option: 23, size: 4, applies: tcp },
  { name: "IP_TOS", level: SOL_IP, option: 1, size: 4, applies: ipv4 },
  { name: "IP_TTL", level: SOL_IP, option: 2, size: 4, applies: ipv4 },
  { name: "IP_FREEBIND", level: SOL_IP, option: IP_FREEBIND, size: 4, applies: ipv4 },
  {
    name: "IP_BIND_ADDRESS_NO_PORT",
    level: SOL_IP,
    option: IP_BIND_ADDRESS_NO_PORT,
    size: 4,
    applies: ipv4,
  },
  { name: "IPV6_V6ONLY", level: SOL_IPV6, option: IPV6_V6ONLY, size: 4, applies: ipv6 },
  { name: "IPV6_UNICAST_HOPS", level: SOL_IPV6, option: 16, size: 4, applies: ipv6 },
  { name: "IPV6_FREEBIND", level: SOL_IPV6, option: IPV6_FREEBIND, size: 4, applies: ipv6 },
];

// ---- Reading a socket: inside the frozen target (dump) or in the tool (defaults, probes) ----

/** getsockopt/getsockname/getpeername/ioctl on one socket, returning bytes or a negative errno. */
interface SocketReader {
  getsockopt(level: number, option: number, size: number): Uint8Array | number;
  name(call: "getsockname" | "getpeername"): Uint8Array | number;
  ioctlInt(request: number): number | null;
}

/** Scratch offsets used while dumping: a value buffer and its length word. */
const SCRATCH_VALUE = 0xe000;
const SCRATCH_LEN = SCRATCH_VALUE + 256;

export function injectedReader(inj: Injector, fd: number): SocketReader {
  const len32 = (n: number) => new Uint8Array(new Uint32Array([n]).buffer);
  const call = (nr: number, ...args: (number | bigint)[]) => Number(inj.raw(nr, fd, ...args));
  const readBack = (max: number): Uint8Array => {
    const len = new DataView(inj.get(SCRATCH_LEN, 4).slice().buffer).getUint32(0, true);
    return inj.get(SCRATCH_VALUE, Math.min(len, max)).slice();
  };
  return {
    getsockopt(level, option, size) {
      const value = inj.put(new Uint8Array(size), SCRATCH_VALUE);
      const len = inj.put(len32(size), SCRATCH_LEN);
      const r = call(NR.getsockopt, level, option, value, len);
      return r < 0 ? r : readBack(size);
    },
    name(which) {
      const value = inj.put(new Uint8Array(128), SCRATCH_VALUE);
      const len = inj.put(len32(128), SCRATCH_LEN);
      const r = call(NR[which], value, len);
      return r < 0 ? r : readBack(128);
    },
    ioctlInt(request) {
      const value = inj.put(new Uint8Array(4), SCRATCH_VALUE);
      const r = call(NR.ioctl, request, value);
      if (r < 0) return null;
      return new DataView(inj.get(SCRATCH_VALUE, 4).slice().buffer).getInt32(0, true);
    },
  };
}

/** A raw syscall in the tool: the result, or a negative errno. */
export function local(nr: number, ...args: (number | bigint)[]): number {
  const a = [...args.map(BigInt), 0n, 0n, 0n, 0n, 0n, 0n].slice(0, 6);
  const r = Number(libc.syscall(BigInt(nr), a[0], a[1], a[2], a[3], a[4], a[5]));
  return r === -1 ? -errno() : r;
}

function localGetsockopt(fd: number, level: number, option: number, size: number) {
  const value = new Uint8Array(size);
  const len = new Uint32Array([size]);
  const r = local(NR.getsockopt, fd, level, option, addressOf(value), addressOf(len));
  return r < 0 ? r : value.subarray(0, len[0]);
}

function localSetsockopt(fd: number, level: number, option: number, value: Uint8Array): number {
  return local(NR.setsockopt, fd, level, option, addressOf(value), value.length);
}

const int32 = (b: Uint8Array): number => new DataView(b.buffer, b.byteOffset, 4).getInt32(0, true);
const int32Bytes = (n: number) => new Uint8Array(new Int32Array([n]).buffer);

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

// ---- Addresses ----

/** Whether a getsockname result is the "not bound" address of its family. */
function isUnbound(addr: Uint8Array): boolean {
  const family = addr[0] | (addr[1] << 8);
  if (family === AF_UNIX) return addr.length <= 2;
  // sin_port / sin6_port at 2, then the address: all zero means nothing was bound.
  const rest = family === AF_INET ? addr.subarray(2, 8) : addr.subarray(2, 24);
  return rest.every((b) => b === 0);
}

/** The path of a UNIX address ("" for abstract or unnamed ones). */
function unixPath(addr: Uint8Array): string {
  if (addr.length <= 2 || addr[2] === 0) return "";
  const bytes = addr.subarray(2);
  const nul = bytes.indexOf(0);
  return new TextDecoder().decode(nul < 0 ? bytes : bytes.subarray(0, nul));
}

/** A sockaddr as text: 127.0.0.1:80, [::1]:80, /path, @abstract, "unnamed". */
export function formatAddress(addr: Uint8Array | null): string {
  if (!addr || addr.length < 2) return "unbound";
  const family = addr[0] | (addr[1] << 8);
  const port = (addr[2] << 8) | addr[3];
  if (family === AF_INET) return `${[...addr.subarray(4, 8)].join(".")}:${port}`;
  if (family === AF_INET6) {
    const groups: string[] = [];
    for (let i = 8; i < 24; i += 2) groups.push(((addr[i] << 8) | addr[i + 1]).toString(16));
    let text = groups.join(":");
    const zeros = text.match(/(?:^|:)0(?::0)+(?::|$)/g);
    if (zeros) {
      const longest = zeros.reduce((a, b) => (b.length > a.length ? b : a));
      text = text.replace(longest, "::");
    }
    return `[${text}]:${port}`;
  }
  if (family === AF_UNIX) {
    if (addr.length <= 2) return "unnamed";
    if (addr[2] === 0) {
      return "@" + new TextDecoder().decode(addr.subarray(3)).replace(/\0/g, "@");
    }
    return unixPath(addr);
  }
  return `family ${family}`;
}

function protocolName(family: number, type: number, protocol: number): string {
  if (family === AF_UNIX) return `UNIX ${TYPES[type] ?? `type ${type}`}`;
  if (family === AF_INET || family === AF_INET6) {
    if (protocol === IPPROTO_TCP) return `${FAMILIES[family]} TCP`;
    if (protocol === IPPROTO_UDP) return `${FAMILIES[family]} UDP`;
    return `${FAMILIES[family]} ${TYPES[type] ?? `type ${type}`} protocol ${protocol}`;
  }
  return `${FAMILIES[family] ?? `family ${family}`} ${TYPES[type] ?? `type ${type}`}`;
}

// ---- sock_diag for UNIX listeners ----

const NETLINK_SOCK_DIAG = 4, AF_NETLINK = 16, SOCK_DIAG_BY_FAMILY = 20, NLMSG_ERROR = 2;
const UDIAG_SHOW_RQLEN = 0x10, UNIX_DIAG_RQLEN = 4, MSG_DONTWAIT = 0x40;

/** What sock_diag reports of one UNIX socket (in the tool's network namespace). */
interface UnixDiag {
  /** Receive queue: the accept queue's length of a listener, else bytes queued to read. */
  rqueue: number;
  /** Send queue: the accept queue's maximum of a listener, else bytes not yet read by the peer. */
  wqueue: number;
  /** The peer's inode (0: the peer was closed); null when not connected. */
  peer: number | null;
  /** sk_shutdown: RCV 1, SEND 2. */
  shutdown: number;
}

const UNIX_DIAG_PEER = 2, UNIX_DIAG_SHUTDOWN = 6, UDIAG_SHOW_PEER = 0x4;

/** sock_diag's view of the UNIX socket with this inode; null when it does not find it. */
export function unixDiag(inode: bigint): UnixDiag | null {
  const s = local(NR.socket, AF_NETLINK, SOCK_DGRAM | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
  if (s < 0) return null;
  try {
    const req = new Uint8Array(40);
    const v = new DataView(req.buffer);
    v.setUint32(0, 40, true); // nlmsg_len
    v.setUint16(4, SOCK_DIAG_BY_FAMILY, true);
    v.setUint16(6, 1, true); // NLM_F_REQUEST
    v.setUint32(8, 1, true); // seq
    req[16] = AF_UNIX;
    v.setUint32(20, 0xffffffff, true); // udiag_states: any
    v.setUint32(24, Number(inode & 0xffffffffn), true);
    v.setUint32(28, UDIAG_SHOW_RQLEN | UDIAG_SHOW_PEER, true);
    v.setUint32(32, 0xffffffff, true); // no cookie
    v.setUint32(36, 0xffffffff, true);
    if (local(NR.sendto, s, addressOf(req), req.length, 0, 0, 0) < 0) return null;
    const buf = new Uint8Array(8192);
    const n = local(NR.recvfrom, s, addressOf(buf), buf.length, MSG_DONTWAIT, 0, 0);
    if (n < 32) return null;
    const r = new DataView(buf.buffer, 0, n);
    if (r.getUint16(4, true) === NLMSG_ERROR) return null;
    if (r.getUint32(20, true) !== Number(inode & 0xffffffffn)) return null;
    const out: UnixDiag = { rqueue: 0, wqueue: 0, peer: null, shutdown: 0 };
    let haveQueue = false;
    const end = Math.min(n, r.getUint32(0, true));
    for (let at = 32; at + 4 <= end;) {
      const len = r.getUint16(at, true);
      if (len < 4) break;
      const type = r.getUint16(at + 2, true);
      if (type === UNIX_DIAG_RQLEN && len >= 12) {
        out.rqueue = r.getUint32(at + 4, true);
        out.wqueue = r.getUint32(at + 8, true);
        haveQueue = true;
      } else if (type === UNIX_DIAG_PEER && len >= 8) {
        out.peer = r.getUint32(at + 4, true);
      } else if (type === UNIX_DIAG_SHUTDOWN && len >= 5) {
        out.shutdown = r.getUint8(at + 4);
      }
      at += (len + 3) & ~3;
    }
    return haveQueue ? out : null;
  } finally {
    local(NR.close, s);
  }
}

/**
 * The accept queue (length, maximum) of a listening UNIX socket, asked of sock_diag by inode in
 * the tool's network namespace; null when it does not find it.
 */
export function unixListenQueue(inode: bigint): { queued: number; max: number } | null {
  const d = unixDiag(inode);
  return d ? { queued: d.rqueue, max: d.wqueue } : null;
}

function somaxconn(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/net/core/somaxconn").trim()) || 4096;
  } catch {
    return 4096;
  }
}

// ---- Dump ----

/** The options of a fresh socket of this kind made by the tool (null when it cannot make one). */
export function defaultOptions(family: number, type: number, protocol: number) {
  const fd = local(NR.socket, family, type | SOCK_CLOEXEC, protocol);
  if (fd < 0) return null;
  try {
    const out = new Map<string, Uint8Array | number>();
    for (const o of OPTIONS) {
      if (o.applies(family, type, protocol)) {
        out.set(o.name, localGetsockopt(fd, o.level, o.option, o.size));
      }
    }
    return out;
  } finally {
    local(NR.close, fd);
  }
}

function refuse(fd: Fd, what: string, why: string): never {
  throw new DumpError(
    `fd ${fd.fd} of process ${fd.pid}: ${what} socket (${fd.target}) ${why}; tardigrade ` +
      `dumps only listening, bound and unconnected TCP, UDP and UNIX sockets (and datagram ` +
      `sockets connected to an address, established TCP connections); a policy can skip it`,
  );
}

function dumpSocket(
  fd: Fd,
  ctx: FileDumpContext,
): SocketEntry | UnixPairEntry | TcpStreamEntry {
  const rd = injectedReader(ctx.frozen.injector, fd.fd);
  const intOpt = (level: number, option: number): number => {
    const v = rd.getsockopt(level, option, 4);
    if (typeof v === "number") {
      throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: getsockopt failed (errno ${-v})`);
    }
    return int32(v);
  };
  const family = intOpt(SOL_SOCKET, SO_DOMAIN);
  const type = intOpt(SOL_SOCKET, SO_TYPE);
  const protocol = intOpt(SOL_SOCKET, SO_PROTOCOL);
  const what = protocolName(family, type, protocol);
  const inet = family === AF_INET || family === AF_INET6;
  if (family !== AF_UNIX && !inet) refuse(fd, what, "of an unsupported family");
  if (inet && !(protocol === IPPROTO_TCP && type === SOCK_STREAM) && protocol !== IPPROTO_UDP) {
    refuse(fd, what, "of an unsupported protocol");
  }
  if (family === AF_UNIX && ![SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET].includes(type)) {
    refuse(fd, what, "of an unsupported type");
  }

  const nameOf = (which: "getsockname" | "getpeername"): Uint8Array | null => {
    const v = rd.name(which);
    if (typeof v !== "number") return v;
    if (which === "getpeername" && -v === ENOTCONN) return null;
    throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: ${which} failed (errno ${-v})`);
  };
  const own = nameOf("getsockname");
  const address = own && !isUnbound(own) ? own : null;
  const listening = intOpt(SOL_SOCKET, SO_ACCEPTCONN) !== 0;
  const peer = listening ? null : nameOf("getpeername");
  const at = address ? `on ${formatAddress(address)}` : "unbound";

  let peerClosed = false;
  let backlog = 0;
  let backlogSource: SocketEntry["backlogSource"] = "none";
  if (protocol === IPPROTO_TCP && inet) {
    const info = rd.getsockopt(IPPROTO_TCP, TCP_INFO, 32);
    if (typeof info === "number") {
      throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: TCP_INFO failed (errno ${-info})`);
    }
    const state = info[0];
    // A connection (also one whose peer closed its side): tcp_stream.ts keeps it, with TCP repair.
    if (isTcpStreamState(state) && address && peer) {
      return dumpTcpStream(fd, ctx, { what, family, address, peer });
    }
    if (state !== TCP_LISTEN && state !== TCP_CLOSE) {
      const to = peer ? `, peer ${formatAddress(peer)}` : "";
      refuse(fd, what, `in state ${TCP_STATES[state] ?? state}, ${at}${to}`);
    }
    if (state === TCP_LISTEN) {
      const dv = new DataView(info.buffer, info.byteOffset, info.length);
      const queued = dv.getUint32(24, true); // tcpi_unacked: sk_ack_backlog
      backlog = dv.getUint32(28, true); // tcpi_sacked: sk_max_ack_backlog
      backlogSource = "tcp_info";
      if (queued > 0) {
        refuse(
          fd,
          what,
          `listening ${at} with ${queued} connection(s) not yet accepted (they would be lost)`,
        );
      }
    }
  } else if (family === AF_UNIX) {
    if (peer && type !== SOCK_DGRAM && peer.length <= 2 && !address) {
      // A socketpair whose other end was closed everywhere (the JVM keeps one as the fd it dup2s
      // over descriptors being closed): sock_diag shows a peer with no inode and a full shutdown.
      const d = unixDiag(fd.inode);
      if (d && d.peer === 0 && d.shutdown === 3) {
        // With data still to read it is a pair whose peer is gone: unix_pair.ts keeps the data.
        if (d.rqueue > 0) return dumpUnixPair(fd, ctx, { what, type, address, peer });
        peerClosed = true;
      }
    }
    if (peer && !peerClosed && (type !== SOCK_DGRAM || peer.length <= 2)) {
      // Kept with its peer when that is in the dump too; refused, naming the fd, otherwise.
      return dumpUnixPair(fd, ctx, { what, type, address, peer });
    }
    if (listening) {
      const q = unixListenQueue(fd.inode);
      if (q) {
        backlog = q.max;
        backlogSource = "sock_diag";
        if (q.queued > 0) {
          refuse(
            fd,
            what,
            `listening ${at} with ${q.queued} connection(s) not yet accepted (they would be lost)`,
          );
        }
      } else {
        backlog = somaxconn();
        backlogSource = "somaxconn";
      }
    } else if (type === SOCK_DGRAM) {
      const queued = rd.ioctlInt(FIONREAD) ?? 0;
      if (queued > 0) refuse(fd, what, `${at}, with datagrams queued (${queued} bytes)`);
    }
  }

  const defaults = defaultOptions(family, type, protocol);
  const options: SocketOption[] = [];
  for (const o of OPTIONS) {
    if (!o.applies(family, type, protocol)) continue;
    const value = rd.getsockopt(o.level, o.option, o.size);
    if (typeof value === "number") continue; // not readable here: nothing to put back
    const fresh = defaults?.get(o.name);
    if (fresh instanceof Uint8Array && sameBytes(fresh, value)) continue;
    options.push({ name: o.name, level: o.level, option: o.option, value });
  }

  const state = listening
    ? "listening"
    : peerClosed
    ? "peer-closed"
    : peer
    ? "connected"
    : "unconnected";
  let cwd = "/";
  try {
    cwd = Deno.readLinkSync(`/proc/${fd.pid}/cwd`);
  } catch { /* only needed for relative UNIX paths */ }
  const to = peer && !peerClosed ? ` to ${formatAddress(peer)}` : "";
  return {
    id: fd.fileId,
    kind: "socket",
    flags: fd.flags,
    family,
    type,
    protocol,
    state,
    address,
    peer: peerClosed ? null : peer,
    backlog,
    backlogSource,
    cwd,
    options,
    inode: fd.inode,
    description: `${what} ${formatAddress(address)} ${state}${to}`,
  };
}

// ---- Restore ----

/** The absolute path of a UNIX socket address's file, or "" (abstract, unnamed). */
function absoluteUnixPath(e: SocketEntry, addr: Uint8Array | null): string {
  if (!addr || e.family !== AF_UNIX) return "";
  const path = unixPath(addr);
  if (!path) return "";
  return path.startsWith("/") ? path : `${e.cwd.replace(/\/$/, "")}/${path}`;
}

/** What is at a UNIX socket path now: nothing, a socket file nobody is bound to, a socket some
 * process is bound to, or something else. */
function unixPathState(path: string, type: number): "free" | "stale" | "bound" | "other" {
  let st: Deno.FileInfo;
  try {
    st = Deno.lstatSync(path);
  } catch {
    return "free";
  }
  if (!st.isSocket) return "other";
  const bytes = new TextEncoder().encode(path);
  if (bytes.length > 107) return "stale"; // too long to probe; bind will tell
  const addr = new Uint8Array(2 + bytes.length + 1);
  addr[0] = AF_UNIX;
  addr.set(bytes, 2);
  const s = local(NR.socket, AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (s < 0) return "stale";
  try {
    // Only a socket file with no socket behind it refuses with ECONNREFUSED.
    return local(NR.connect, s, addressOf(addr), addr.length) === -ECONNREFUSED ? "stale" : "bound";
  } finally {
    local(NR.close, s);
  }
}

const PATH_PROBLEM = {
  bound: "is a socket another process is bound to",
  other: "exists and is not a socket",
} as const;

function optionValue(e: SocketEntry, name: string): number | undefined {
  const o = e.options.find((x) => x.name === name);
  return o ? int32(o.value) : undefined;
}

/** Whether the tool can bind an inet address now, with the options that bear on it. */
function inetAddressFree(e: SocketEntry): boolean {
  const s = local(NR.socket, e.family, e.type | SOCK_CLOEXEC, e.protocol);
  if (s < 0) return true;
  try {
    for (const name of ["SO_REUSEADDR", "IPV6_V6ONLY", "IP_FREEBIND", "IPV6_FREEBIND"]) {
      const o = e.options.find((x) => x.name === name);
      if (o) localSetsockopt(s, o.level, o.option, o.value);
    }
    return local(NR.bind, s, addressOf(e.address!), e.address!.length) !== -EADDRINUSE;
  } finally {
    local(NR.close, s);
  }
}

function checkSocket(e: SocketEntry): string | null {
  const path = absoluteUnixPath(e, e.address);
  if (path) {
    const st = unixPathState(path, e.type);
    if (st === "bound" || st === "other") return `${e.description}: ${path} ${PATH_PROBLEM[st]}`;
  }
  if (e.address && e.family !== AF_UNIX && !optionValue(e, "SO_REUSEPORT")) {
    if (!inetAddressFree(e)) {
      return `${e.description}: ${formatAddress(e.address)} is in use` +
        (optionValue(e, "SO_REUSEADDR")
          ? ""
          : " (connections in TIME_WAIT block it too: the socket had no SO_REUSEADDR)");
    }
  }
  const peerPath = absoluteUnixPath(e, e.peer);
  if (peerPath && unixPathState(peerPath, e.type) !== "bound") {
    return `${e.description}: nothing is bound to its peer ${peerPath} any more`;
  }
  return null;
}

export function setOption(ctx: FileRestoreContext, fd: number, o: SocketOption): void {
  let value = o.value;
  if (o.level === SOL_SOCKET && (o.option === SO_SNDBUF || o.option === SO_RCVBUF)) {
    // The kernel doubles what is set: set half. FORCE passes the sysctl maximum (privileged).
    value = int32Bytes(Math.floor(int32(o.value) / 2));
    const force = o.option === SO_SNDBUF ? SO_SNDBUFFORCE : SO_RCVBUFFORCE;
    if (ctx.injector.raw(NR.setsockopt, fd, SOL_SOCKET, force, ctx.put(value), 4) === 0n) return;
  }
  const addr = ctx.put(value);
  injectRaw(ctx, `setsockopt(${o.name})`, NR.setsockopt, fd, o.level, o.option, addr, value.length);
}

/** A socketpair of which one end is closed again: a socket whose peer is gone. */
function openPeerClosed(e: SocketEntry, ctx: FileRestoreContext, type: number): number {
  const sv = ctx.put(new Uint8Array(8));
  injectRaw(ctx, "socketpair", NR.socketpair, e.family, type, e.protocol, sv);
  const [fd, other] = new Int32Array(ctx.memory.read(sv, 8).buffer);
  injectClose(ctx, other);
  return fd;
}

function openSocket(e: SocketEntry, ctx: FileRestoreContext): number {
  const type = e.type | (e.flags & O.NONBLOCK ? SOCK_NONBLOCK : 0);
  const fd = e.state === "peer-closed"
    ? openPeerClosed(e, ctx, type)
    : Number(injectRaw(ctx, "socket", NR.socket, e.family, type, e.protocol));
  try {
    for (const o of e.options) setOption(ctx, fd, o);
    if (e.address) {
      const path = absoluteUnixPath(e, e.address);
      if (path) {
        const st = unixPathState(path, e.type);
        if (st === "stale") Deno.removeSync(path);
        else if (st !== "free") {
          throw new RestoreError(`${e.description}: ${path} ${PATH_PROBLEM[st]}`);
        }
        // A relative path is bound from the cwd it had; the process's own cwd comes later.
        if (!unixPath(e.address).startsWith("/")) {
          injectRaw(ctx, "chdir", NR.chdir, ctx.putString(e.cwd));
        }
      }
      const r = ctx.injector.raw(NR.bind, fd, ctx.put(e.address), e.address.length);
      if (r < 0n) {
        const code = Number(-r);
        throw new RestoreError(
          `${e.description}: cannot bind ${formatAddress(e.address)}: ` +
            (code === EADDRINUSE
              ? "address in use (is the dumped process still running?)"
              : `errno ${code}`),
        );
      }
    }
    if (e.peer) injectRaw(ctx, "connect", NR.connect, fd, ctx.put(e.peer), e.peer.length);
    if (e.state === "listening") injectRaw(ctx, "listen", NR.listen, fd, e.backlog);
  } catch (err) {
    abandonFd(ctx, fd, e.description, err);
  }
  return fd;
}

/** Listening, bound and unconnected TCP, UDP and UNIX sockets. */
export const socketHandler: FileHandler<
  SocketEntry,
  SocketEntry | UnixPairEntry | TcpStreamEntry
> = {
  kind: "socket",
  fdKinds: ["socket"],
  dump: dumpSocket,
  check: checkSocket,
  open: openSocket,
};
