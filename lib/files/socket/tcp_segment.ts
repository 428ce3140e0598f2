/**
 * One TCP segment as if from a connection's peer, handed to this machine's own socket of the
 * connection: how a restored connection gets the FIN (or the acknowledgement of its own FIN) the
 * peer had sent before the dump, as CRIU's libsoccr does (send_fin). TCP repair mode can set
 * sequence numbers and queues, but not a FIN received; the segment moves the socket to the state
 * it had (CLOSE_WAIT, CLOSING, FIN_WAIT2 …) through the kernel's own state machine.
 *
 * The segment goes out of a raw socket (IPPROTO_RAW: the IP header is ours, so its source is the
 * peer's address) and, its destination being a local address, comes straight back in through
 * loopback; it never reaches the peer. It carries SO_MARK `SEGMENT_MARK` (CRIU's SOCCR_MARK), so
 * that a netfilter lock on the connection can let it pass. An IPv6 socket's v4-mapped connection
 * gets an IPv4 segment.
 */
import {
  AF,
  close,
  errnoName,
  IPPROTO,
  SO,
  SOCK,
  SOL,
  trySendTo,
  trySetsockoptInt,
  trySocket,
} from "../../../ffi/mod.ts";
import { familyOf, ipOf } from "./address.ts";

/** SO_MARK of the segments (0xC114, as CRIU's), for a network lock to let through. */
export const SEGMENT_MARK = 0xc114;

/** TCP header flags. */
export const TCP_FLAG = { FIN: 0x01, ACK: 0x10 } as const;

/** What the segment says. */
export interface Segment {
  /** Raw sockaddr of the peer (the segment's source) and of the local end (its destination). */
  from: Uint8Array;
  to: Uint8Array;
  seq: number;
  ack: number;
  /** `TCP_FLAG` bits. */
  flags: number;
  /** The window field, already scaled down. */
  window: number;
}

const V4_MAPPED_PREFIX = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff];

/** The IPv4 address of an AF_INET sockaddr or of a v4-mapped AF_INET6 one; null otherwise. */
function ipv4Of(addr: Uint8Array): Uint8Array | null {
  if (familyOf(addr) === AF.INET) return addr.subarray(4, 8);
  const ip = ipOf(addr).bytes;
  return V4_MAPPED_PREFIX.every((b, i) => ip[i] === b) ? ip.subarray(12, 16) : null;
}

/** The Internet checksum of `parts` laid end to end (each of even length but the last). */
function checksum(...parts: Uint8Array[]): number {
  let sum = 0;
  for (const p of parts) {
    for (let i = 0; i < p.length; i += 2) sum += (p[i] << 8) | (p[i + 1] ?? 0);
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

/** The 20-byte TCP header of `s`, its checksum over `pseudo` (the IP pseudo-header) filled in. */
function tcpHeader(s: Segment, pseudo: Uint8Array): Uint8Array {
  const h = new Uint8Array(20);
  const v = new DataView(h.buffer);
  h.set(s.from.subarray(2, 4), 0); // ports as the sockaddrs hold them (network order)
  h.set(s.to.subarray(2, 4), 2);
  v.setUint32(4, s.seq >>> 0);
  v.setUint32(8, s.ack >>> 0);
  h[12] = 5 << 4; // data offset: no options
  h[13] = s.flags;
  v.setUint16(14, Math.min(0xffff, s.window));
  v.setUint16(16, checksum(pseudo, h));
  return h;
}

/** The whole IPv4 packet of `s`, and the sockaddr_in it is sent to. */
function ipv4Packet(s: Segment, src: Uint8Array, dst: Uint8Array): [Uint8Array, Uint8Array] {
  const pseudo = new Uint8Array(12);
  pseudo.set(src, 0);
  pseudo.set(dst, 4);
  pseudo[9] = IPPROTO.TCP;
  pseudo[11] = 20;
  const packet = new Uint8Array(40);
  packet[0] = 0x45; // version 4, 5 words of header
  packet[3] = 40; // total length
  packet[8] = 64; // TTL
  packet[9] = IPPROTO.TCP;
  packet.set(src, 12);
  packet.set(dst, 16);
  new DataView(packet.buffer).setUint16(10, checksum(packet.subarray(0, 20)));
  packet.set(tcpHeader(s, pseudo), 20);
  const to = new Uint8Array(16);
  to[0] = AF.INET;
  to.set(dst, 4);
  return [packet, to];
}

/** The whole IPv6 packet of `s`, and the sockaddr_in6 it is sent to. */
function ipv6Packet(s: Segment): [Uint8Array, Uint8Array] {
  const src = ipOf(s.from).bytes, dst = ipOf(s.to);
  const pseudo = new Uint8Array(40);
  pseudo.set(src, 0);
  pseudo.set(dst.bytes, 16);
  pseudo[35] = 20; // upper-layer length
  pseudo[39] = IPPROTO.TCP;
  const packet = new Uint8Array(60);
  packet[0] = 0x60; // version 6
  packet[5] = 20; // payload length
  packet[6] = IPPROTO.TCP;
  packet[7] = 64; // hop limit
  packet.set(src, 8);
  packet.set(dst.bytes, 24);
  packet.set(tcpHeader(s, pseudo), 40);
  const to = new Uint8Array(28);
  to[0] = AF.INET6;
  to.set(dst.bytes, 8);
  new DataView(to.buffer).setUint32(24, dst.scope, true);
  return [packet, to];
}

/**
 * Sends `s` to this machine's socket of the connection; throws naming what failed. (The caller
 * checks that the socket took it: its state or its shutdown flags.)
 */
export function sendSegment(s: Segment): void {
  const src4 = ipv4Of(s.from), dst4 = ipv4Of(s.to);
  const v4 = src4 !== null && dst4 !== null;
  const [packet, to] = v4 ? ipv4Packet(s, src4, dst4) : ipv6Packet(s);
  const raw = trySocket(v4 ? AF.INET : AF.INET6, SOCK.RAW | SOCK.CLOEXEC, IPPROTO.RAW);
  if (raw < 0) throw new Error(`cannot make a raw socket (${errnoName(-raw)})`);
  try {
    trySetsockoptInt(raw, SOL.SOCKET, SO.MARK, SEGMENT_MARK);
    const r = trySendTo(raw, packet, 0, to);
    if (r < 0) throw new Error(`cannot send the peer's segment (${errnoName(-r)})`);
  } finally {
    close(raw);
  }
}
