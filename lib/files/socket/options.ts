/**
 * The socket options tardigrade keeps, for every kind of socket. Options are compared with a fresh
 * socket of the same kind made by the tool, and only those that differ are kept (so defaults, TCP
 * buffer autotuning and sysctls stay as they are): SO_REUSEADDR, SO_REUSEPORT, SO_KEEPALIVE,
 * SO_BROADCAST, SO_OOBINLINE, SO_PRIORITY, SO_LINGER, SO_PASSCRED, SO_RCVLOWAT, SO_RCVTIMEO,
 * SO_SNDTIMEO, SO_SNDBUF, SO_RCVBUF, TCP_NODELAY, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT,
 * TCP_DEFER_ACCEPT, TCP_USER_TIMEOUT, TCP_FASTOPEN, IP_TOS, IP_TTL, IP_FREEBIND,
 * IP_BIND_ADDRESS_NO_PORT, IPV6_V6ONLY, IPV6_UNICAST_HOPS, IPV6_FREEBIND. They are read where the
 * socket is: inside the frozen target, or from the tool's copy of it. At restore they are set
 * inside the target in the table's order, SO_SNDBUF and SO_RCVBUF with half the value, as the
 * kernel doubles it (the *FORCE variants first, so a size above the sysctl maximum comes back too).
 * Sockets of a SO_REUSEPORT group join it again as each binds with SO_REUSEPORT set, in the order
 * they are made; a BPF program that steers the group (SO_ATTACH_REUSEPORT_CBPF/EBPF) cannot be
 * read back and is not kept.
 */
import {
  AF,
  close,
  encodeFprog,
  ICMP_FILTER,
  ICMPV6_FILTER,
  IP,
  IPPROTO,
  IPV6,
  NETLINK_OPT,
  PACKET,
  SO,
  SOCK,
  SOL,
  SYS,
  TCP,
  tryAttachFilter,
  tryGetFilter,
  tryGetsockopt,
  trySetsockopt,
  trySocket,
  UDPLITE,
} from "../../../ffi/mod.ts";
import { DumpError } from "../../errors.ts";
import type { FieldType } from "../../image/validate.ts";
import type { FileRestoreContext } from "../types.ts";
import { i32, injectRaw, readI32 } from "../util.ts";

/** One socket option that differs from a fresh socket's, with its raw getsockopt value. */
export interface SocketOption {
  /** "SO_REUSEADDR" … */
  name: string;
  level: number;
  option: number;
  value: Uint8Array;
}

/** The image fields of a socket's options (`SocketOption[]`). */
export const SOCKET_OPTIONS: FieldType = {
  list: { map: { name: "text", level: "whole", option: "whole", value: "bytes" } },
};

/** Reads options of one socket: the bytes getsockopt gives, or a negative errno. */
export interface OptionReader {
  /**
   * getsockopt with room for `size` bytes: the bytes the kernel gave, or a negative errno.
   * `input`: what the buffer holds before the call, for the options that read a request from it.
   */
  getsockopt(level: number, option: number, size: number, input?: Uint8Array): Uint8Array | number;
  /**
   * The classic BPF filter attached (SO_GET_FILTER; empty: none), or a negative errno; absent
   * where the caller keeps filters its own way.
   */
  filter?(): Uint8Array | number;
}

interface OptionSpec {
  name: string;
  level: number;
  option: number;
  size: number;
  applies(family: number, type: number, protocol: number): boolean;
}

const any = () => true;
const tcp = (_f: number, _t: number, p: number) => p === IPPROTO.TCP;
const ipv4 = (f: number) => f === AF.INET;
const ipv6 = (f: number) => f === AF.INET6;
const unix = (f: number) => f === AF.UNIX;
const inet = (f: number) => f === AF.INET || f === AF.INET6;
/** Multicast options mean something on datagram sockets only (a TCP socket reads odd values). */
const dgram4 = (f: number, t: number) => f === AF.INET && (t === SOCK.DGRAM || t === SOCK.RAW);
const dgram6 = (f: number, t: number) => f === AF.INET6 && (t === SOCK.DGRAM || t === SOCK.RAW);
const udplite = (_f: number, _t: number, p: number) => p === IPPROTO.UDPLITE;
const raw4 = (f: number, t: number) => f === AF.INET && t === SOCK.RAW;
const raw6 = (f: number, t: number) => f === AF.INET6 && t === SOCK.RAW;
const rawIcmp = (f: number, t: number, p: number) => raw4(f, t) && p === IPPROTO.ICMP;
const packet = (f: number) => f === AF.PACKET;
const netlink = (f: number) => f === AF.NETLINK;
const rawIcmp6 = (f: number, t: number, p: number) => raw6(f, t) && p === IPPROTO.ICMPV6;

/** An option of `size` bytes (4: an int) at `level`, kept where `applies`. */
const opt = (
  name: string,
  level: number,
  option: number,
  applies: OptionSpec["applies"],
  size = 4,
): OptionSpec => ({ name, level, option, size, applies });

/**
 * The options kept, in the order they are set again (all before bind and listen). SO_BUF_LOCK
 * follows the buffer sizes, as setting one locks it (see `changedOptions`); IP_TOS precedes
 * SO_PRIORITY, which it sets.
 */
const OPTIONS: OptionSpec[] = [
  // Setting IP_TOS sets the priority from it: first, so that SO_PRIORITY has the last word.
  opt("IP_TOS", SOL.IP, IP.TOS, ipv4),
  opt("SO_REUSEADDR", SOL.SOCKET, SO.REUSEADDR, any),
  opt("SO_REUSEPORT", SOL.SOCKET, SO.REUSEPORT, any),
  opt("SO_KEEPALIVE", SOL.SOCKET, SO.KEEPALIVE, any),
  opt("SO_BROADCAST", SOL.SOCKET, SO.BROADCAST, any),
  opt("SO_DONTROUTE", SOL.SOCKET, SO.DONTROUTE, any),
  opt("SO_OOBINLINE", SOL.SOCKET, SO.OOBINLINE, any),
  opt("SO_PRIORITY", SOL.SOCKET, SO.PRIORITY, any),
  opt("SO_MARK", SOL.SOCKET, SO.MARK, any),
  opt("SO_RCVMARK", SOL.SOCKET, SO.RCVMARK, any),
  opt("SO_BINDTODEVICE", SOL.SOCKET, SO.BINDTODEVICE, inet, 16),
  opt("SO_LINGER", SOL.SOCKET, SO.LINGER, any, 8),
  opt("SO_PASSCRED", SOL.SOCKET, SO.PASSCRED, unix),
  opt("SO_PASSSEC", SOL.SOCKET, SO.PASSSEC, unix),
  opt("SO_TIMESTAMP", SOL.SOCKET, SO.TIMESTAMP, any),
  opt("SO_TIMESTAMPNS", SOL.SOCKET, SO.TIMESTAMPNS, any),
  opt("SO_TIMESTAMPING", SOL.SOCKET, SO.TIMESTAMPING, any),
  opt("SO_BUSY_POLL", SOL.SOCKET, SO.BUSY_POLL, inet),
  opt("SO_PREFER_BUSY_POLL", SOL.SOCKET, SO.PREFER_BUSY_POLL, inet),
  opt("SO_BUSY_POLL_BUDGET", SOL.SOCKET, SO.BUSY_POLL_BUDGET, inet),
  opt("SO_ZEROCOPY", SOL.SOCKET, SO.ZEROCOPY, inet),
  opt("SO_RCVLOWAT", SOL.SOCKET, SO.RCVLOWAT, any),
  opt("SO_RCVTIMEO", SOL.SOCKET, SO.RCVTIMEO, any, 16),
  opt("SO_SNDTIMEO", SOL.SOCKET, SO.SNDTIMEO, any, 16),
  opt("SO_SNDBUF", SOL.SOCKET, SO.SNDBUF, any),
  opt("SO_RCVBUF", SOL.SOCKET, SO.RCVBUF, any),
  opt("SO_BUF_LOCK", SOL.SOCKET, SO.BUF_LOCK, any),
  opt("TCP_NODELAY", SOL.TCP, TCP.NODELAY, tcp),
  opt("TCP_CORK", SOL.TCP, TCP.CORK, tcp),
  opt("TCP_KEEPIDLE", SOL.TCP, TCP.KEEPIDLE, tcp),
  opt("TCP_KEEPINTVL", SOL.TCP, TCP.KEEPINTVL, tcp),
  opt("TCP_KEEPCNT", SOL.TCP, TCP.KEEPCNT, tcp),
  opt("TCP_SYNCNT", SOL.TCP, TCP.SYNCNT, tcp),
  opt("TCP_LINGER2", SOL.TCP, TCP.LINGER2, tcp),
  opt("TCP_DEFER_ACCEPT", SOL.TCP, TCP.DEFER_ACCEPT, tcp),
  opt("TCP_CONGESTION", SOL.TCP, TCP.CONGESTION, tcp, 16),
  opt("TCP_THIN_LINEAR_TIMEOUTS", SOL.TCP, TCP.THIN_LINEAR_TIMEOUTS, tcp),
  opt("TCP_USER_TIMEOUT", SOL.TCP, TCP.USER_TIMEOUT, tcp),
  opt("TCP_FASTOPEN", SOL.TCP, TCP.FASTOPEN, tcp),
  opt("TCP_NOTSENT_LOWAT", SOL.TCP, TCP.NOTSENT_LOWAT, tcp),
  opt("IP_TTL", SOL.IP, IP.TTL, ipv4),
  opt("IP_PKTINFO", SOL.IP, IP.PKTINFO, ipv4),
  opt("IP_MTU_DISCOVER", SOL.IP, IP.MTU_DISCOVER, ipv4),
  opt("IP_RECVERR", SOL.IP, IP.RECVERR, ipv4),
  opt("IP_RECVTTL", SOL.IP, IP.RECVTTL, ipv4),
  opt("IP_RECVTOS", SOL.IP, IP.RECVTOS, ipv4),
  opt("IP_FREEBIND", SOL.IP, IP.FREEBIND, ipv4),
  opt("IP_TRANSPARENT", SOL.IP, IP.TRANSPARENT, ipv4),
  opt("IP_RECVORIGDSTADDR", SOL.IP, IP.RECVORIGDSTADDR, ipv4),
  opt("IP_NODEFRAG", SOL.IP, IP.NODEFRAG, ipv4),
  opt("IP_BIND_ADDRESS_NO_PORT", SOL.IP, IP.BIND_ADDRESS_NO_PORT, ipv4),
  opt("IP_MULTICAST_TTL", SOL.IP, IP.MULTICAST_TTL, dgram4),
  opt("IP_MULTICAST_LOOP", SOL.IP, IP.MULTICAST_LOOP, dgram4),
  opt("IP_MULTICAST_ALL", SOL.IP, IP.MULTICAST_ALL, dgram4),
  opt("IPV6_V6ONLY", SOL.IPV6, IPV6.V6ONLY, ipv6),
  opt("IPV6_UNICAST_HOPS", SOL.IPV6, IPV6.UNICAST_HOPS, ipv6),
  opt("IPV6_MULTICAST_HOPS", SOL.IPV6, IPV6.MULTICAST_HOPS, dgram6),
  opt("IPV6_MULTICAST_LOOP", SOL.IPV6, IPV6.MULTICAST_LOOP, dgram6),
  opt("IPV6_MTU_DISCOVER", SOL.IPV6, IPV6.MTU_DISCOVER, ipv6),
  opt("IPV6_RECVERR", SOL.IPV6, IPV6.RECVERR, ipv6),
  opt("IPV6_RECVPKTINFO", SOL.IPV6, IPV6.RECVPKTINFO, ipv6),
  opt("IPV6_RECVTCLASS", SOL.IPV6, IPV6.RECVTCLASS, ipv6),
  opt("IPV6_TCLASS", SOL.IPV6, IPV6.TCLASS, ipv6),
  opt("IPV6_TRANSPARENT", SOL.IPV6, IPV6.TRANSPARENT, ipv6),
  opt("IPV6_FREEBIND", SOL.IPV6, IPV6.FREEBIND, ipv6),
  opt("UDPLITE_SEND_CSCOV", SOL.UDPLITE, UDPLITE.SEND_CSCOV, udplite),
  opt("UDPLITE_RECV_CSCOV", SOL.UDPLITE, UDPLITE.RECV_CSCOV, udplite),
  opt("IP_HDRINCL", SOL.IP, IP.HDRINCL, raw4),
  opt("ICMP_FILTER", SOL.RAW, ICMP_FILTER, rawIcmp),
  // A raw IPv6 socket of a protocol other than ICMPv6 (which always checksums) may ask for one.
  opt("IPV6_CHECKSUM", SOL.IPV6, IPV6.CHECKSUM, (f, t, p) => raw6(f, t) && p !== IPPROTO.ICMPV6),
  opt("ICMPV6_FILTER", SOL.ICMPV6, ICMPV6_FILTER, rawIcmp6, 32),
  // The version first: the others may depend on it.
  opt("PACKET_VERSION", SOL.PACKET, PACKET.VERSION, packet),
  opt("PACKET_RESERVE", SOL.PACKET, PACKET.RESERVE, packet),
  opt("PACKET_AUXDATA", SOL.PACKET, PACKET.AUXDATA, packet),
  opt("PACKET_ORIGDEV", SOL.PACKET, PACKET.ORIGDEV, packet),
  opt("PACKET_LOSS", SOL.PACKET, PACKET.LOSS, packet),
  opt("PACKET_VNET_HDR", SOL.PACKET, PACKET.VNET_HDR, packet),
  opt("PACKET_TIMESTAMP", SOL.PACKET, PACKET.TIMESTAMP, packet),
  opt("PACKET_QDISC_BYPASS", SOL.PACKET, PACKET.QDISC_BYPASS, packet),
  opt("PACKET_IGNORE_OUTGOING", SOL.PACKET, PACKET.IGNORE_OUTGOING, packet),
  opt("NETLINK_PKTINFO", SOL.NETLINK, NETLINK_OPT.PKTINFO, netlink),
  opt("NETLINK_BROADCAST_ERROR", SOL.NETLINK, NETLINK_OPT.BROADCAST_ERROR, netlink),
  opt("NETLINK_NO_ENOBUFS", SOL.NETLINK, NETLINK_OPT.NO_ENOBUFS, netlink),
  opt("NETLINK_LISTEN_ALL_NSID", SOL.NETLINK, NETLINK_OPT.LISTEN_ALL_NSID, netlink),
  opt("NETLINK_CAP_ACK", SOL.NETLINK, NETLINK_OPT.CAP_ACK, netlink),
  opt("NETLINK_EXT_ACK", SOL.NETLINK, NETLINK_OPT.EXT_ACK, netlink),
  opt("NETLINK_GET_STRICT_CHK", SOL.NETLINK, NETLINK_OPT.GET_STRICT_CHK, netlink),
];

/** Reads the options of a socket of the tool's own, through its fd; its filter with `filter`. */
export function toolSocketOptions(fd: number, filter = false): OptionReader {
  return {
    getsockopt: (level, option, size, input) => tryGetsockopt(fd, level, option, size, input),
    ...(filter ? { filter: () => tryGetFilter(fd) } : {}),
  };
}

/** The options of a fresh socket of this kind made by the tool (null when it cannot make one). */
function defaultOptions(
  family: number,
  type: number,
  protocol: number,
): Map<string, Uint8Array | number> | null {
  const fd = trySocket(family, type | SOCK.CLOEXEC, protocol);
  if (fd < 0) return null;
  try {
    const read = toolSocketOptions(fd);
    const out = new Map<string, Uint8Array | number>();
    for (const o of OPTIONS) {
      if (o.applies(family, type, protocol)) {
        out.set(o.name, read.getsockopt(o.level, o.option, o.size));
      }
    }
    return out;
  } finally {
    close(fd);
  }
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/**
 * The kept options of a socket of this family, type and protocol, read through `socket`, that
 * differ from a fresh socket's; `what` names the socket in a refusal.
 */
export function changedOptions(
  socket: OptionReader,
  family: number,
  type: number,
  protocol: number,
  what = "the socket",
): SocketOption[] {
  const defaults = defaultOptions(family, type, protocol);
  const out: SocketOption[] = [];
  for (const o of OPTIONS) {
    if (!o.applies(family, type, protocol)) continue;
    const value = socket.getsockopt(o.level, o.option, o.size);
    if (typeof value === "number") continue; // not readable here: nothing to put back
    const fresh = defaults?.get(o.name);
    // Setting a buffer size locks it (no autotuning since): the lock is kept with either size.
    const sized = o.option === SO.BUF_LOCK && o.level === SOL.SOCKET &&
      out.some((x) => x.level === SOL.SOCKET && (x.option === SO.SNDBUF || x.option === SO.RCVBUF));
    if (!sized && fresh instanceof Uint8Array && sameBytes(fresh, value)) continue;
    out.push({ name: o.name, level: o.level, option: o.option, value });
  }
  // Last, as it is set last: a filter (SO_ATTACH_FILTER) and its lock.
  const program = socket.filter?.();
  if (typeof program === "number") {
    throw new DumpError(
      `${what} has a socket filter that cannot be read back (errno ${-program}: an eBPF ` +
        `program, SO_ATTACH_BPF), which tardigrade cannot keep; a policy can skip it`,
    );
  }
  if (program?.length) {
    out.push({
      name: "SO_ATTACH_FILTER",
      level: SOL.SOCKET,
      option: SO.ATTACH_FILTER,
      value: program,
    });
    const locked = socket.getsockopt(SOL.SOCKET, SO.LOCK_FILTER, 4);
    if (locked instanceof Uint8Array && readI32(locked) !== 0) {
      out.push({
        name: "SO_LOCK_FILTER",
        level: SOL.SOCKET,
        option: SO.LOCK_FILTER,
        value: locked,
      });
    }
  }
  return out;
}

/** The kept option called `name` ("SO_REUSEADDR" …), if it was kept. */
export function findOption(
  options: readonly SocketOption[],
  name: string,
): SocketOption | undefined {
  return options.find((o) => o.name === name);
}

/** The int value of the kept option called `name`, or undefined when it was not kept. */
export function intOption(options: readonly SocketOption[], name: string): number | undefined {
  const o = findOption(options, name);
  return o ? readI32(o.value) : undefined;
}

/**
 * Options set only once a socket's queue is in again: a filter could drop what the tool sends,
 * and with SO_PASSCRED on either end a message that carried no credentials would get the tool's.
 */
export function isAfterQueue(o: SocketOption): boolean {
  return o.level === SOL.SOCKET &&
    (o.option === SO.ATTACH_FILTER || o.option === SO.LOCK_FILTER || o.option === SO.PASSCRED);
}

/** Sets a kept option again through the tool's copy `fd` of the socket: 0, or a negative errno. */
export function setToolOption(fd: number, o: SocketOption): number {
  if (o.level === SOL.SOCKET && o.option === SO.ATTACH_FILTER) return tryAttachFilter(fd, o.value);
  return trySetsockopt(fd, o.level, o.option, o.value);
}

/** Sets a kept option again on target fd `fd`. */
export function setOption(ctx: FileRestoreContext, fd: number, o: SocketOption): void {
  let value = o.value;
  if (o.level === SOL.SOCKET && o.option === SO.ATTACH_FILTER) {
    // The value is the program: a struct sock_fprog pointing at it goes to setsockopt.
    value = encodeFprog(o.value.length / 8, ctx.put(o.value));
  }
  if (o.level === SOL.SOCKET && (o.option === SO.SNDBUF || o.option === SO.RCVBUF)) {
    // The kernel doubles what is set: set half. FORCE passes the sysctl maximum (privileged).
    value = i32(Math.floor(readI32(o.value) / 2));
    const force = o.option === SO.SNDBUF ? SO.SNDBUFFORCE : SO.RCVBUFFORCE;
    if (ctx.injector.raw(SYS.setsockopt, fd, SOL.SOCKET, force, ctx.put(value), 4) === 0n) return;
  }
  const addr = ctx.put(value);
  injectRaw(
    ctx,
    `setsockopt(${o.name})`,
    SYS.setsockopt,
    fd,
    o.level,
    o.option,
    addr,
    value.length,
  );
}
