/**
 * Which sockets of the inet, packet and netlink families come back on their own (standalone.ts),
 * and their protocols' names for messages; dispatch.ts asks.
 */
import { IPPROTO, NETLINK, SOCK } from "../../../ffi/mod.ts";

/** An ICMP "ping" socket (net.ipv4.ping_group_range lets a group make them). */
export const isPing = (type: number, protocol: number): boolean =>
  type === SOCK.DGRAM && (protocol === IPPROTO.ICMP || protocol === IPPROTO.ICMPV6);

/**
 * The inet sockets standalone.ts makes again from their address and options, besides TCP: UDP,
 * UDP-Lite and ping datagram sockets and raw sockets of any protocol (what they had queued to read
 * is let go, as a network may drop it).
 */
export function standaloneInet(type: number, protocol: number): boolean {
  if (type === SOCK.RAW) return true;
  return type === SOCK.DGRAM &&
    (protocol === IPPROTO.UDP || protocol === IPPROTO.UDPLITE || isPing(type, protocol));
}

/** The types of packet and netlink sockets that come back on their own (standalone.ts). */
export const LINK_LEVEL_TYPES: readonly number[] = [SOCK.RAW, SOCK.DGRAM];

/** Names of inet protocols, for messages. */
export const INET_PROTOCOLS: Readonly<Record<number, string>> = {
  [IPPROTO.TCP]: "TCP",
  [IPPROTO.UDP]: "UDP",
  [IPPROTO.UDPLITE]: "UDP-Lite",
  [IPPROTO.ICMP]: "ICMP",
  [IPPROTO.ICMPV6]: "ICMPv6",
};

/** Names of netlink protocols, for messages. */
export const NETLINK_PROTOCOLS: Readonly<Record<number, string>> = {
  [NETLINK.ROUTE]: "route",
  [NETLINK.SOCK_DIAG]: "sock_diag",
  [NETLINK.AUDIT]: "audit",
  [NETLINK.GENERIC]: "generic",
};
