/**
 * Sockets: the kernel's constants (families, types, levels, options, TCP repair, sock_diag …) and
 * the socket calls the tool makes on sockets of its own.
 *
 * The callers of these calls look at the errno (a probe that expects ECONNREFUSED, an option
 * this kernel does not know, a failure named in a message of their own), so every wrapper here
 * is a `try…` call that returns its result, or a negative errno, and never throws.
 */
import { addressOf, errno, libc } from "./libc.ts";
import { SYS } from "./syscalls.ts";

/** Address families (`AF_*`). */
export const AF = {
  UNIX: 1,
  INET: 2,
  INET6: 10,
  NETLINK: 16,
  PACKET: 17,
  ALG: 38,
  VSOCK: 40,
  XDP: 44,
} as const;

/** Socket types (`SOCK_*`), and the flags socket() takes with them. */
export const SOCK = {
  STREAM: 1,
  DGRAM: 2,
  RAW: 3,
  SEQPACKET: 5,
  NONBLOCK: 0o4000,
  CLOEXEC: 0o2000000,
} as const;

/** Protocols (`IPPROTO_*`). */
export const IPPROTO = {
  IP: 0,
  ICMP: 1,
  TCP: 6,
  UDP: 17,
  IPV6: 41,
  ICMPV6: 58,
  UDPLITE: 136,
  RAW: 255,
} as const;

/** Option levels of getsockopt/setsockopt (`SOL_*`). */
export const SOL = {
  IP: 0,
  SOCKET: 1,
  TCP: 6,
  IPV6: 41,
  ICMPV6: 58,
  UDPLITE: 136,
  RAW: 255,
  PACKET: 263,
  NETLINK: 270,
} as const;

/** Options at `SOL.UDPLITE` (`UDPLITE_*`): the checksum coverage of sent and received datagrams. */
export const UDPLITE = { SEND_CSCOV: 10, RECV_CSCOV: 11 } as const;

/** The option at `SOL.RAW` of a raw ICMP socket: which ICMP types it does not receive. */
export const ICMP_FILTER = 1;

/** The option at `SOL.ICMPV6` of a raw ICMPv6 socket: which ICMPv6 types it receives (32 bytes). */
export const ICMPV6_FILTER = 1;

/** Options at `SOL.SOCKET` (`SO_*`). */
export const SO = {
  REUSEADDR: 2,
  TYPE: 3,
  ERROR: 4,
  DONTROUTE: 5,
  BROADCAST: 6,
  SNDBUF: 7,
  RCVBUF: 8,
  KEEPALIVE: 9,
  OOBINLINE: 10,
  PRIORITY: 12,
  LINGER: 13,
  REUSEPORT: 15,
  PASSCRED: 16,
  PEERCRED: 17,
  RCVLOWAT: 18,
  RCVTIMEO: 20,
  SNDTIMEO: 21,
  BINDTODEVICE: 25,
  /** Set: attach a classic BPF filter. Read (as SO_GET_FILTER): the filter attached. */
  ATTACH_FILTER: 26,
  DETACH_FILTER: 27,
  TIMESTAMP: 29,
  ACCEPTCONN: 30,
  SNDBUFFORCE: 32,
  RCVBUFFORCE: 33,
  PASSSEC: 34,
  TIMESTAMPNS: 35,
  MARK: 36,
  TIMESTAMPING: 37,
  PROTOCOL: 38,
  DOMAIN: 39,
  PEEK_OFF: 42,
  /** Set: a classic BPF program choosing which socket of a SO_REUSEPORT group gets a packet. */
  ATTACH_REUSEPORT_CBPF: 51,
  /** The attached filter can no longer be changed or removed. */
  LOCK_FILTER: 44,
  BUSY_POLL: 46,
  ZEROCOPY: 60,
  /** Set: the SO_REUSEPORT group's program goes (ENOENT when it has none). */
  DETACH_REUSEPORT_BPF: 68,
  PREFER_BUSY_POLL: 69,
  BUSY_POLL_BUDGET: 70,
  BUF_LOCK: 72,
  RCVMARK: 75,
} as const;

/** Options at `SOL.TCP` (`TCP_*`), TCP repair ones included. */
export const TCP = {
  NODELAY: 1,
  MAXSEG: 2,
  CORK: 3,
  KEEPIDLE: 4,
  KEEPINTVL: 5,
  KEEPCNT: 6,
  SYNCNT: 7,
  LINGER2: 8,
  DEFER_ACCEPT: 9,
  INFO: 11,
  CONGESTION: 13,
  THIN_LINEAR_TIMEOUTS: 16,
  USER_TIMEOUT: 18,
  REPAIR: 19,
  REPAIR_QUEUE: 20,
  QUEUE_SEQ: 21,
  REPAIR_OPTIONS: 22,
  FASTOPEN: 23,
  TIMESTAMP: 24,
  NOTSENT_LOWAT: 25,
  REPAIR_WINDOW: 29,
  ULP: 31,
} as const;

/** Values of `TCP.REPAIR`: on, off, and off without the window probe (`TCP_REPAIR_OFF_NO_WP`). */
export const TCP_REPAIR = { ON: 1, OFF: 0, OFF_NO_WP: -1 } as const;

/** Values of `TCP.REPAIR_QUEUE` (`TCP_NO_QUEUE`, `TCP_RECV_QUEUE`, `TCP_SEND_QUEUE`). */
export const TCP_QUEUE = { NONE: 0, RECV: 1, SEND: 2 } as const;

/** Bits of `tcpi_options` in `struct tcp_info` (`TCPI_OPT_*`). */
export const TCPI_OPT = { TIMESTAMPS: 1, SACK: 2, WSCALE: 4, ECN: 8 } as const;

/** TCP option kinds, as `TCP.REPAIR_OPTIONS` takes them (`TCPOPT_*`). */
export const TCPOPT = { MAXSEG: 2, WINDOW: 3, SACK_PERM: 4, TIMESTAMP: 8 } as const;

/** TCP states, as `tcpi_state` and sock_diag's `idiag_state` report them. */
export const TCP_STATE = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
  NEW_SYN_RECV: 12,
} as const;

const TCP_STATE_NAMES = new Map(Object.entries(TCP_STATE).map(([name, n]) => [n as number, name]));

/** The name of a TCP state (`8` → `"CLOSE_WAIT"`), or the number as text when unknown. */
export function tcpStateName(state: number): string {
  return TCP_STATE_NAMES.get(state) ?? String(state);
}

/** Options at `SOL.IP` (`IP_*`). */
export const IP = {
  TOS: 1,
  TTL: 2,
  HDRINCL: 3,
  PKTINFO: 8,
  MTU_DISCOVER: 10,
  RECVERR: 11,
  RECVTTL: 12,
  RECVTOS: 13,
  FREEBIND: 15,
  TRANSPARENT: 19,
  RECVORIGDSTADDR: 20,
  NODEFRAG: 22,
  BIND_ADDRESS_NO_PORT: 24,
  MULTICAST_TTL: 33,
  MULTICAST_LOOP: 34,
  MULTICAST_ALL: 49,
} as const;

/** Options at `SOL.IPV6` (`IPV6_*`). */
export const IPV6 = {
  CHECKSUM: 7,
  UNICAST_HOPS: 16,
  MULTICAST_HOPS: 18,
  MULTICAST_LOOP: 19,
  MTU_DISCOVER: 23,
  RECVERR: 25,
  V6ONLY: 26,
  RECVPKTINFO: 49,
  RECVTCLASS: 66,
  TCLASS: 67,
  TRANSPARENT: 75,
  FREEBIND: 78,
} as const;

/** Flags of send/recv calls (`MSG_*`). */
export const MSG = { OOB: 1, PEEK: 2, TRUNC: 0x20, DONTWAIT: 0x40, NOSIGNAL: 0x4000 } as const;

/** How shutdown() shuts a socket (`SHUT_*`). */
export const SHUT = { RD: 0, WR: 1, RDWR: 2 } as const;

/** Bits of a socket's `sk_shutdown` (as sock_diag reports it): receiving or sending was shut. */
export const SK_SHUTDOWN = { RCV: 1, SEND: 2 } as const;

/** ioctl requests on sockets; `FIONREAD` also answers for pipes and FIFOs. */
export const SOCK_IOCTL = {
  FIONREAD: 0x541b,
  /** Bytes in the receive queue (same request as FIONREAD). */
  SIOCINQ: 0x541b,
  /** Bytes in the send queue, sent or not. */
  SIOCOUTQ: 0x5411,
  /** Bytes in the send queue never sent. */
  SIOCOUTQNSD: 0x894b,
} as const;

/** poll() events (`POLL*`). */
export const POLL = { IN: 0x1, PRI: 0x2, OUT: 0x4, ERR: 0x8, HUP: 0x10, RDHUP: 0x2000 } as const;

/** Netlink protocols (`NETLINK_*`). */
export const NETLINK = { ROUTE: 0, SOCK_DIAG: 4, AUDIT: 9, GENERIC: 16 } as const;

/** Options at `SOL.NETLINK` (`NETLINK_*`). */
export const NETLINK_OPT = {
  ADD_MEMBERSHIP: 1,
  PKTINFO: 3,
  BROADCAST_ERROR: 4,
  NO_ENOBUFS: 5,
  LISTEN_ALL_NSID: 8,
  /** Read: the bitmap of the multicast groups the socket is in (u32 words). */
  LIST_MEMBERSHIPS: 9,
  CAP_ACK: 10,
  EXT_ACK: 11,
  GET_STRICT_CHK: 12,
} as const;

/** Netlink message types (`NLMSG_*`). */
export const NLMSG = { ERROR: 2, DONE: 3 } as const;

/** Netlink message flags (`NLM_F_*`): DUMP asks for every object. */
export const NLM_F = { REQUEST: 1, DUMP: 0x300 } as const;

/** Options at `SOL.PACKET` (`PACKET_*`). */
export const PACKET = {
  ADD_MEMBERSHIP: 1,
  AUXDATA: 8,
  ORIGDEV: 9,
  VERSION: 10,
  RESERVE: 12,
  LOSS: 14,
  VNET_HDR: 15,
  TIMESTAMP: 17,
  FANOUT: 18,
  QDISC_BYPASS: 20,
  IGNORE_OUTGOING: 23,
} as const;

/** What a packet sock_diag request shows (`PACKET_SHOW_*`) and its reply's attributes. */
export const PACKET_DIAG = {
  SHOW_INFO: 1,
  SHOW_MCLIST: 2,
  SHOW_RING_CFG: 4,
  SHOW_FANOUT: 8,
  INFO: 0,
  MCLIST: 1,
  RX_RING: 2,
  TX_RING: 3,
  FANOUT: 4,
} as const;

/** What a netlink sock_diag request shows (`NDIAG_SHOW_*`) and its reply's attributes. */
export const NETLINK_DIAG = {
  SHOW_MEMINFO: 1,
  SHOW_FLAGS: 8,
  MEMINFO: 0,
  FLAGS: 4,
  /** NDIAG_FLAG_CB_RUNNING: a dump the socket asked for is under way. */
  FLAG_CB_RUNNING: 1,
  /** sdiag_protocol that asks for every netlink protocol. */
  PROTO_ALL: 255,
} as const;

/** The sock_diag request type (`SOCK_DIAG_BY_FAMILY`). */
export const SOCK_DIAG = { BY_FAMILY: 20 } as const;

/** What a UNIX sock_diag request asks to be shown (`UDIAG_SHOW_*`). */
export const UDIAG_SHOW = { VFS: 0x2, PEER: 0x4, ICONS: 0x8, RQLEN: 0x10 } as const;

/** Attributes of a UNIX sock_diag reply (`UNIX_DIAG_*`). */
export const UNIX_DIAG = { VFS: 1, PEER: 2, ICONS: 3, RQLEN: 4, SHUTDOWN: 6 } as const;

/** Classic BPF: a socket filter of one instruction, `ret #0`, that drops every packet. */
export const DROP_ALL_FILTER: Uint8Array = new Uint8Array([0x06, 0, 0, 0, 0, 0, 0, 0]);

/** A raw syscall in the tool: its result, or a negative errno. */
function attempt(nr: number, ...args: (number | bigint)[]): number {
  const a = [...args.map(BigInt), 0n, 0n, 0n, 0n, 0n, 0n].slice(0, 6);
  const r = Number(libc.syscall(BigInt(nr), a[0], a[1], a[2], a[3], a[4], a[5]));
  return r === -1 ? -errno() : r;
}

/** socket(2): the new fd, or a negative errno. */
export function trySocket(family: number, type: number, protocol: number): number {
  return attempt(SYS.socket, family, type, protocol);
}

/** bind(2) to a raw sockaddr: 0, or a negative errno. */
export function tryBind(fd: number, address: Uint8Array): number {
  return attempt(SYS.bind, fd, addressOf(address), address.length);
}

/** connect(2) to a raw sockaddr: 0, or a negative errno. */
export function tryConnect(fd: number, address: Uint8Array): number {
  return attempt(SYS.connect, fd, addressOf(address), address.length);
}

/**
 * getsockopt(2) with room for `size` bytes: the bytes the kernel gave, or a negative errno.
 * `input` is put in the buffer first, for the options that read a request from it.
 */
export function tryGetsockopt(
  fd: number,
  level: number,
  option: number,
  size: number,
  input?: Uint8Array,
): Uint8Array | number {
  const value = new Uint8Array(Math.max(size, 1));
  if (input) value.set(input.subarray(0, value.length));
  const len = new Uint32Array([size]);
  const r = attempt(SYS.getsockopt, fd, level, option, addressOf(value), addressOf(len));
  return r < 0 ? r : value.subarray(0, len[0]);
}

/**
 * getsockname(2) or getpeername(2): the raw sockaddr (at most 128 bytes, a sockaddr_storage), or
 * a negative errno.
 */
export function tryGetName(fd: number, which: "getsockname" | "getpeername"): Uint8Array | number {
  const value = new Uint8Array(128);
  const len = new Uint32Array([128]);
  const r = attempt(SYS[which], fd, addressOf(value), addressOf(len));
  return r < 0 ? r : value.slice(0, Math.min(len[0], 128));
}

/** setsockopt(2) with raw bytes: 0, or a negative errno. */
export function trySetsockopt(
  fd: number,
  level: number,
  option: number,
  value: Uint8Array,
): number {
  return attempt(SYS.setsockopt, fd, level, option, addressOf(value), value.length);
}

/** setsockopt(2) of a 32-bit int (taken modulo 2^32): 0, or a negative errno. */
export function trySetsockoptInt(fd: number, level: number, option: number, value: number): number {
  return trySetsockopt(fd, level, option, new Uint8Array(new Uint32Array([value >>> 0]).buffer));
}

/** send(2) (sendto with no address): the bytes sent, or a negative errno. */
export function trySend(fd: number, data: Uint8Array, flags: number): number {
  return attempt(SYS.sendto, fd, addressOf(data), data.length, flags, 0, 0);
}

/** sendto(2) to a raw sockaddr: the bytes sent, or a negative errno. */
export function trySendTo(fd: number, data: Uint8Array, flags: number, to: Uint8Array): number {
  return attempt(SYS.sendto, fd, addressOf(data), data.length, flags, addressOf(to), to.length);
}

/** recv(2) (recvfrom with no address) into `buf`: the bytes received, or a negative errno. */
export function tryRecv(fd: number, buf: Uint8Array, flags: number): number {
  return attempt(SYS.recvfrom, fd, addressOf(buf), buf.length, flags, 0, 0);
}

/** shutdown(2) with a `SHUT` value: 0, or a negative errno. */
export function tryShutdown(fd: number, how: number): number {
  return attempt(SYS.shutdown, fd, how);
}

/**
 * An ioctl that fills an int (`SOCK_IOCTL.*`): the value, or a negative errno (for requests
 * whose value is never negative, as queue lengths).
 */
export function tryIoctlInt(fd: number, request: number): number {
  const value = new Int32Array(1);
  const r = attempt(SYS.ioctl, fd, request, addressOf(value));
  return r < 0 ? r : value[0];
}

/** poll(2) of one fd without waiting: its revents (0: none of `events`), or a negative errno. */
export function tryPoll(fd: number, events: number): number {
  const pfd = new Uint8Array(8);
  const v = new DataView(pfd.buffer);
  v.setInt32(0, fd, true);
  v.setInt16(4, events, true);
  const r = attempt(SYS.poll, addressOf(pfd), 1, 0);
  return r > 0 ? v.getUint16(6, true) : r;
}

/**
 * The length in instructions of the socket filter `fd` has (SO_GET_FILTER with no room, which
 * reports only that; 0: none), or a negative errno.
 */
export function tryFilterLength(fd: number): number {
  const len = new Uint32Array(1);
  const r = attempt(SYS.getsockopt, fd, SOL.SOCKET, SO.ATTACH_FILTER, 0, addressOf(len));
  return r < 0 ? r : len[0];
}

/**
 * The classic BPF socket filter `fd` has (8 bytes an instruction; empty: none), or a negative
 * errno (EACCES for an eBPF program attached with SO_ATTACH_BPF, which cannot be read back).
 */
export function tryGetFilter(fd: number): Uint8Array | number {
  const count = tryFilterLength(fd);
  if (count <= 0) return count < 0 ? count : new Uint8Array(0);
  const program = new Uint8Array(count * 8);
  const len = new Uint32Array([count]); // SO_GET_FILTER counts instructions, not bytes
  const r = attempt(
    SYS.getsockopt,
    fd,
    SOL.SOCKET,
    SO.ATTACH_FILTER,
    addressOf(program),
    addressOf(len),
  );
  return r < 0 ? r : program.subarray(0, len[0] * 8);
}

/** A `struct sock_fprog` (16 bytes) for the `count` instructions at `at` (in whichever process). */
export function encodeFprog(count: number, at: bigint): Uint8Array {
  const buf = new Uint8Array(16);
  const v = new DataView(buf.buffer);
  v.setUint16(0, count, true);
  v.setBigUint64(8, at, true);
  return buf;
}

/** Attaches a classic BPF socket filter (8 bytes an instruction): 0, or a negative errno. */
export function tryAttachFilter(fd: number, program: Uint8Array): number {
  return attachClassicBpf(fd, SO.ATTACH_FILTER, program);
}

/**
 * Gives the SO_REUSEPORT group of `fd` a classic BPF program (8 bytes an instruction) whose
 * result is the index of the socket that gets a packet, in the order the sockets joined: 0, or
 * a negative errno.
 */
export function tryAttachReuseportProgram(fd: number, program: Uint8Array): number {
  return attachClassicBpf(fd, SO.ATTACH_REUSEPORT_CBPF, program);
}

/** Takes the program of the SO_REUSEPORT group of `fd` away: 0, or a negative errno. */
export function tryDetachReuseportProgram(fd: number): number {
  return trySetsockopt(fd, SOL.SOCKET, SO.DETACH_REUSEPORT_BPF, new Uint8Array(4));
}

function attachClassicBpf(fd: number, option: number, program: Uint8Array): number {
  // struct sock_fprog (length, pointer) at 0, pointing at the instructions at 16. One buffer above
  // V8's 64-byte limit for typed arrays kept in the JS heap, so it lives outside it and the
  // pointer inside stays valid.
  const buf = new Uint8Array(Math.max(128, 16 + program.length));
  const v = new DataView(buf.buffer);
  v.setUint16(0, program.length / 8, true);
  v.setBigUint64(8, addressOf(buf) + 16n, true);
  buf.set(program, 16);
  return trySetsockopt(fd, SOL.SOCKET, option, buf.subarray(0, 16));
}

/** `SCM_RIGHTS`: a control message carrying descriptors. */
export const SCM_RIGHTS = 1;

/** The most descriptors one SCM_RIGHTS message carries (SCM_MAX_FD). */
export const SCM_MAX_FD = 253;

/** Bytes of a control buffer for `count` descriptors (CMSG_SPACE of `count` ints). */
export function rightsSpace(count: number): number {
  return 16 + ((count * 4 + 7) & ~7);
}

/**
 * A `struct msghdr` (56 bytes) with one iovec at `iov` and a control buffer of `controlLen`
 * bytes at `control`: addresses in whichever process it is used in.
 */
export function encodeMsghdr(iov: bigint, control: bigint, controlLen: number): Uint8Array {
  const m = new BigUint64Array(7); // name, namelen, iov, iovlen, control, controllen, flags
  m[2] = iov;
  m[3] = 1n;
  m[4] = control;
  m[5] = BigInt(controlLen);
  return new Uint8Array(m.buffer);
}

/** The descriptors of the SCM_RIGHTS message that starts `control` (empty when there is none). */
export function decodeRights(control: Uint8Array): number[] {
  const v = new DataView(control.buffer, control.byteOffset, control.byteLength);
  if (control.length < 16 || v.getInt32(8, true) !== SOL.SOCKET) return [];
  if (v.getInt32(12, true) !== SCM_RIGHTS) return [];
  const len = Number(v.getBigUint64(0, true));
  const out: number[] = [];
  for (let at = 16; at + 4 <= Math.min(len, control.length); at += 4) {
    out.push(v.getInt32(at, true));
  }
  return out;
}

/**
 * sendmsg(2) of one byte with `fds` (at most `SCM_MAX_FD`) as SCM_RIGHTS on `sock`: the bytes
 * sent (1), or a negative errno. The message holds its own references: the fds may be closed.
 */
export function trySendFds(sock: number, fds: number[]): number {
  // One buffer above V8's 64-byte limit for typed arrays in the JS heap (see tryAttachFilter):
  // the byte at 0, the iovec at 8, the msghdr at 32, the control message at 96.
  const space = rightsSpace(fds.length);
  const buf = new Uint8Array(96 + space);
  const base = BigInt(addressOf(buf));
  const v = new DataView(buf.buffer);
  v.setBigUint64(8, base, true);
  v.setBigUint64(16, 1n, true);
  buf.set(encodeMsghdr(base + 8n, base + 96n, space), 32);
  v.setBigUint64(96, BigInt(16 + fds.length * 4), true);
  v.setInt32(104, SOL.SOCKET, true);
  v.setInt32(108, SCM_RIGHTS, true);
  fds.forEach((fd, i) => v.setInt32(112 + i * 4, fd, true));
  return attempt(SYS.sendmsg, sock, base + 32n, MSG.NOSIGNAL);
}

/** `SCM_CREDENTIALS`: a control message carrying a sender's pid, uid and gid. */
export const SCM_CREDENTIALS = 2;

/** A sender's `struct ucred` as SCM_CREDENTIALS carries it. */
export interface Ucred {
  pid: number;
  uid: number;
  gid: number;
}

/** What the control messages of a received message carry: credentials and descriptors. */
export interface Control {
  /** SCM_CREDENTIALS (received with SO_PASSCRED), or null. */
  credentials: Ucred | null;
  /** SCM_RIGHTS: the descriptors installed in the receiver. */
  fds: number[];
}

/** Decodes a control buffer a recvmsg filled (`control`, as long as msg_controllen said). */
export function decodeControl(control: Uint8Array): Control {
  const v = new DataView(control.buffer, control.byteOffset, control.byteLength);
  const out: Control = { credentials: null, fds: [] };
  for (let at = 0; at + 16 <= control.length;) {
    const len = Number(v.getBigUint64(at, true));
    if (len < 16 || at + len > control.length) break;
    if (v.getInt32(at + 8, true) === SOL.SOCKET) {
      const type = v.getInt32(at + 12, true);
      if (type === SCM_CREDENTIALS && len >= 28) {
        out.credentials = {
          pid: v.getInt32(at + 16, true),
          uid: v.getUint32(at + 20, true),
          gid: v.getUint32(at + 24, true),
        };
      } else if (type === SCM_RIGHTS) {
        for (let i = at + 16; i + 4 <= at + len; i += 4) out.fds.push(v.getInt32(i, true));
      }
    }
    at += (len + 7) & ~7;
  }
  return out;
}

/** Bytes of a control buffer that receives credentials and up to `SCM_MAX_FD` descriptors. */
export const CONTROL_ROOM = 32 + 16 + SCM_MAX_FD * 4 + 8;

/**
 * sendmsg(2) of `data` to the raw sockaddr `to` (null: the connected peer), with `credentials`
 * as SCM_CREDENTIALS and `fds` (at most `SCM_MAX_FD`) as SCM_RIGHTS when given: the bytes sent,
 * or a negative errno.
 */
export function trySendMessage(
  fd: number,
  data: Uint8Array,
  to: Uint8Array | null,
  credentials: Ucred | null,
  flags: number,
  fds: readonly number[] = [],
): number {
  // One buffer above V8's 64-byte limit (see tryAttachFilter), so the pointers inside stay valid:
  // the msghdr at 0, the iovec at 56, the address at 72 (at most 128 bytes), the control messages
  // at 200, the data after them.
  const rights = fds.length ? rightsSpace(fds.length) : 0;
  const controlLen = (credentials ? 32 : 0) + rights;
  const dataAt = 200 + controlLen;
  const buf = new Uint8Array(dataAt + Math.max(data.length, 64));
  const base = BigInt(addressOf(buf));
  const v = new DataView(buf.buffer);
  buf.set(encodeMsghdr(base + 56n, controlLen ? base + 200n : 0n, controlLen), 0);
  if (to) {
    buf.set(to.subarray(0, 128), 72);
    v.setBigUint64(0, base + 72n, true); // msg_name
    v.setUint32(8, Math.min(to.length, 128), true); // msg_namelen
  }
  buf.set(data, dataAt);
  v.setBigUint64(56, base + BigInt(dataAt), true);
  v.setBigUint64(64, BigInt(data.length), true);
  let at = 200;
  if (credentials) {
    v.setBigUint64(at, 28n, true); // CMSG_LEN(sizeof(struct ucred))
    v.setInt32(at + 8, SOL.SOCKET, true);
    v.setInt32(at + 12, SCM_CREDENTIALS, true);
    v.setInt32(at + 16, credentials.pid, true);
    v.setUint32(at + 20, credentials.uid, true);
    v.setUint32(at + 24, credentials.gid, true);
    at += 32;
  }
  if (fds.length) {
    v.setBigUint64(at, BigInt(16 + fds.length * 4), true);
    v.setInt32(at + 8, SOL.SOCKET, true);
    v.setInt32(at + 12, SCM_RIGHTS, true);
    fds.forEach((n, i) => v.setInt32(at + 16 + i * 4, n, true));
  }
  return attempt(SYS.sendmsg, fd, base, flags);
}

/** socketpair(2): the two fds, or a negative errno. */
export function trySocketpair(family: number, type: number): [number, number] | number {
  const fds = new Int32Array(2);
  const r = attempt(SYS.socketpair, family, type, 0, addressOf(fds));
  return r < 0 ? r : [fds[0], fds[1]];
}
