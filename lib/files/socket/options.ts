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
 */
import {
  AF,
  close,
  IP,
  IPPROTO,
  IPV6,
  SO,
  SOCK,
  SOL,
  SYS,
  TCP,
  tryGetsockopt,
  trySocket,
} from "../../../ffi/mod.ts";
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
  /** getsockopt with room for `size` bytes: the bytes the kernel gave, or a negative errno. */
  getsockopt(level: number, option: number, size: number): Uint8Array | number;
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

/** The options kept, in the order they are set again (all before bind and listen). */
const OPTIONS: OptionSpec[] = [
  { name: "SO_REUSEADDR", level: SOL.SOCKET, option: SO.REUSEADDR, size: 4, applies: any },
  { name: "SO_REUSEPORT", level: SOL.SOCKET, option: SO.REUSEPORT, size: 4, applies: any },
  { name: "SO_KEEPALIVE", level: SOL.SOCKET, option: SO.KEEPALIVE, size: 4, applies: any },
  { name: "SO_BROADCAST", level: SOL.SOCKET, option: SO.BROADCAST, size: 4, applies: any },
  { name: "SO_OOBINLINE", level: SOL.SOCKET, option: SO.OOBINLINE, size: 4, applies: any },
  { name: "SO_PRIORITY", level: SOL.SOCKET, option: SO.PRIORITY, size: 4, applies: any },
  { name: "SO_LINGER", level: SOL.SOCKET, option: SO.LINGER, size: 8, applies: any },
  { name: "SO_PASSCRED", level: SOL.SOCKET, option: SO.PASSCRED, size: 4, applies: unix },
  { name: "SO_RCVLOWAT", level: SOL.SOCKET, option: SO.RCVLOWAT, size: 4, applies: any },
  { name: "SO_RCVTIMEO", level: SOL.SOCKET, option: SO.RCVTIMEO, size: 16, applies: any },
  { name: "SO_SNDTIMEO", level: SOL.SOCKET, option: SO.SNDTIMEO, size: 16, applies: any },
  { name: "SO_SNDBUF", level: SOL.SOCKET, option: SO.SNDBUF, size: 4, applies: any },
  { name: "SO_RCVBUF", level: SOL.SOCKET, option: SO.RCVBUF, size: 4, applies: any },
  { name: "TCP_NODELAY", level: SOL.TCP, option: TCP.NODELAY, size: 4, applies: tcp },
  { name: "TCP_KEEPIDLE", level: SOL.TCP, option: TCP.KEEPIDLE, size: 4, applies: tcp },
  { name: "TCP_KEEPINTVL", level: SOL.TCP, option: TCP.KEEPINTVL, size: 4, applies: tcp },
  { name: "TCP_KEEPCNT", level: SOL.TCP, option: TCP.KEEPCNT, size: 4, applies: tcp },
  { name: "TCP_DEFER_ACCEPT", level: SOL.TCP, option: TCP.DEFER_ACCEPT, size: 4, applies: tcp },
  { name: "TCP_USER_TIMEOUT", level: SOL.TCP, option: TCP.USER_TIMEOUT, size: 4, applies: tcp },
  { name: "TCP_FASTOPEN", level: SOL.TCP, option: TCP.FASTOPEN, size: 4, applies: tcp },
  { name: "IP_TOS", level: SOL.IP, option: IP.TOS, size: 4, applies: ipv4 },
  { name: "IP_TTL", level: SOL.IP, option: IP.TTL, size: 4, applies: ipv4 },
  { name: "IP_FREEBIND", level: SOL.IP, option: IP.FREEBIND, size: 4, applies: ipv4 },
  {
    name: "IP_BIND_ADDRESS_NO_PORT",
    level: SOL.IP,
    option: IP.BIND_ADDRESS_NO_PORT,
    size: 4,
    applies: ipv4,
  },
  { name: "IPV6_V6ONLY", level: SOL.IPV6, option: IPV6.V6ONLY, size: 4, applies: ipv6 },
  { name: "IPV6_UNICAST_HOPS", level: SOL.IPV6, option: IPV6.UNICAST_HOPS, size: 4, applies: ipv6 },
  { name: "IPV6_FREEBIND", level: SOL.IPV6, option: IPV6.FREEBIND, size: 4, applies: ipv6 },
];

/** Reads the options of a socket of the tool's own, through its fd. */
export function toolSocketOptions(fd: number): OptionReader {
  return { getsockopt: (level, option, size) => tryGetsockopt(fd, level, option, size) };
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
 * differ from a fresh socket's.
 */
export function changedOptions(
  socket: OptionReader,
  family: number,
  type: number,
  protocol: number,
): SocketOption[] {
  const defaults = defaultOptions(family, type, protocol);
  const out: SocketOption[] = [];
  for (const o of OPTIONS) {
    if (!o.applies(family, type, protocol)) continue;
    const value = socket.getsockopt(o.level, o.option, o.size);
    if (typeof value === "number") continue; // not readable here: nothing to put back
    const fresh = defaults?.get(o.name);
    if (fresh instanceof Uint8Array && sameBytes(fresh, value)) continue;
    out.push({ name: o.name, level: o.level, option: o.option, value });
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

/** Sets a kept option again on target fd `fd`. */
export function setOption(ctx: FileRestoreContext, fd: number, o: SocketOption): void {
  let value = o.value;
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
