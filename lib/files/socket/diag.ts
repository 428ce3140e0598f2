/**
 * The netlink sock_diag client (NETLINK_SOCK_DIAG): what the socket calls cannot tell. Of a UNIX
 * socket, by inode: its peer's inode, its queue lengths (a listener's accept queue), its shutdown
 * state and the file it bound. Of TCP: whether this kernel has a socket for a given address pair.
 * Of a packet socket: its memberships and rings; of a netlink socket: its queue and whether a dump
 * is under way (both answer only dumps of every socket, searched by inode). It sees the tool's
 * network namespace only; every query gives null where it finds nothing or fails.
 */
import {
  AF,
  close,
  IPPROTO,
  MSG,
  NETLINK,
  NETLINK_DIAG,
  NLM_F,
  NLMSG,
  PACKET_DIAG,
  SOCK,
  SOCK_DIAG,
  tryRecv,
  trySend,
  trySocket,
  UDIAG_SHOW,
  UNIX_DIAG,
} from "../../../ffi/mod.ts";
import { ipOf } from "./address.ts";

/** Size of `struct nlmsghdr`, before every request and reply. */
const NLMSG_HEADER = 16;

/** Sends one SOCK_DIAG_BY_FAMILY request with `flags` on the netlink socket `s`. */
function request(s: number, body: Uint8Array, flags: number): boolean {
  const req = new Uint8Array(NLMSG_HEADER + body.length);
  const v = new DataView(req.buffer);
  v.setUint32(0, req.length, true); // nlmsg_len
  v.setUint16(4, SOCK_DIAG.BY_FAMILY, true);
  v.setUint16(6, flags, true);
  v.setUint32(8, 1, true); // seq
  req.set(body, NLMSG_HEADER);
  return trySend(s, req, 0) >= 0;
}

/**
 * Sends one SOCK_DIAG_BY_FAMILY request, `body` being what follows the netlink header, and
 * returns the first reply (its netlink header included), or null when there is none or it is
 * an error.
 */
function ask(body: Uint8Array): DataView | null {
  const s = trySocket(AF.NETLINK, SOCK.DGRAM | SOCK.CLOEXEC, NETLINK.SOCK_DIAG);
  if (s < 0) return null;
  try {
    if (!request(s, body, NLM_F.REQUEST)) return null;
    const buf = new Uint8Array(8192);
    const n = tryRecv(s, buf, MSG.DONTWAIT);
    if (n < NLMSG_HEADER) return null;
    const reply = new DataView(buf.buffer, 0, n);
    return reply.getUint16(4, true) === NLMSG.ERROR ? null : reply;
  } finally {
    close(s);
  }
}

/**
 * Sends a SOCK_DIAG_BY_FAMILY dump request (the families that answer only dumps: packet,
 * netlink) and returns the reply message (netlink header included) for which `inodeAt` (the
 * offset of its inode) holds `inode`, or null.
 */
function askDump(body: Uint8Array, inodeAt: number, inode: bigint): DataView | null {
  const s = trySocket(AF.NETLINK, SOCK.DGRAM | SOCK.CLOEXEC, NETLINK.SOCK_DIAG);
  if (s < 0) return null;
  const ino = Number(inode & 0xffffffffn);
  try {
    if (!request(s, body, NLM_F.REQUEST | NLM_F.DUMP)) return null;
    const buf = new Uint8Array(65536);
    // The kernel makes each next part of a dump while the previous one is read.
    for (;;) {
      const n = tryRecv(s, buf, MSG.DONTWAIT);
      if (n < NLMSG_HEADER) return null;
      const all = new DataView(buf.buffer, 0, n);
      for (let at = 0; at + NLMSG_HEADER <= n;) {
        const len = all.getUint32(at, true);
        const type = all.getUint16(at + 4, true);
        if (len < NLMSG_HEADER || type === NLMSG.DONE || type === NLMSG.ERROR) return null;
        if (at + inodeAt + 4 <= n && all.getUint32(at + inodeAt, true) === ino) {
          return new DataView(buf.slice(at, at + len).buffer);
        }
        at += (len + 3) & ~3;
      }
    }
  } finally {
    close(s);
  }
}

/** The netlink attributes (type, value) of a reply, from byte `from` on. */
function* attributes(r: DataView, from: number): Generator<[number, DataView]> {
  const end = Math.min(r.byteLength, r.getUint32(0, true));
  for (let at = from; at + 4 <= end;) {
    const len = r.getUint16(at, true);
    if (len < 4 || at + len > end) return;
    yield [
      r.getUint16(at + 2, true) & 0x3fff,
      new DataView(r.buffer, r.byteOffset + at + 4, len - 4),
    ];
    at += (len + 3) & ~3;
  }
}

/** What sock_diag reports of a packet socket. */
export interface PacketDiag {
  /** Memberships (PACKET_ADD_MEMBERSHIP): interface, PACKET_MR_* type, hardware address. */
  memberships: { ifindex: number; type: number; address: Uint8Array }[];
  /** Whether it has a receive or a transmit ring (PACKET_RX_RING, PACKET_TX_RING). */
  rings: string[];
}

/** sock_diag's view of the packet socket with this inode; null when it does not find it. */
export function packetDiag(inode: bigint): PacketDiag | null {
  // struct packet_diag_req: family, protocol, pad, inode, show, cookie
  const req = new Uint8Array(20);
  const v = new DataView(req.buffer);
  req[0] = AF.PACKET;
  v.setUint32(8, PACKET_DIAG.SHOW_MCLIST | PACKET_DIAG.SHOW_RING_CFG, true);
  // The netlink header, then struct packet_diag_msg (16 bytes: pdiag_ino at 4).
  const r = askDump(req, NLMSG_HEADER + 4, inode);
  if (!r) return null;
  const out: PacketDiag = { memberships: [], rings: [] };
  for (const [type, a] of attributes(r, NLMSG_HEADER + 16)) {
    if (type === PACKET_DIAG.RX_RING) out.rings.push("PACKET_RX_RING");
    if (type === PACKET_DIAG.TX_RING) out.rings.push("PACKET_TX_RING");
    if (type !== PACKET_DIAG.MCLIST) continue;
    // struct packet_diag_mclist: index, count, type (u16), alen (u16), addr[32]
    for (let at = 0; at + 44 <= a.byteLength; at += 44) {
      const alen = Math.min(a.getUint16(at + 10, true), 32);
      const count = a.getUint32(at + 4, true);
      const m = {
        ifindex: a.getUint32(at, true),
        type: a.getUint16(at + 8, true),
        address: new Uint8Array(
          a.buffer.slice(a.byteOffset + at + 12, a.byteOffset + at + 12 + alen),
        ),
      };
      for (let i = 0; i < count; i++) out.memberships.push(m);
    }
  }
  return out;
}

/** What sock_diag reports of a netlink socket. */
export interface NetlinkDiag {
  /** Bytes of messages waiting to be read. */
  queued: number;
  /** A dump it asked for is under way (NDIAG_FLAG_CB_RUNNING). */
  dumping: boolean;
}

/** sock_diag's view of the netlink socket with this inode; null when it does not find it. */
export function netlinkDiag(inode: bigint): NetlinkDiag | null {
  // struct netlink_diag_req: family, protocol, pad, inode, show, cookie
  const req = new Uint8Array(20);
  const v = new DataView(req.buffer);
  req[0] = AF.NETLINK;
  req[1] = NETLINK_DIAG.PROTO_ALL;
  v.setUint32(8, NETLINK_DIAG.SHOW_MEMINFO | NETLINK_DIAG.SHOW_FLAGS, true);
  // The netlink header, then struct netlink_diag_msg (28 bytes: ndiag_ino at 16).
  const r = askDump(req, NLMSG_HEADER + 16, inode);
  if (!r) return null;
  const out: NetlinkDiag = { queued: 0, dumping: false };
  for (const [type, a] of attributes(r, NLMSG_HEADER + 28)) {
    if (type === NETLINK_DIAG.MEMINFO && a.byteLength >= 4) out.queued = a.getUint32(0, true);
    if (type === NETLINK_DIAG.FLAGS && a.byteLength >= 4) {
      out.dumping = (a.getUint32(0, true) & NETLINK_DIAG.FLAG_CB_RUNNING) !== 0;
    }
  }
  return out;
}

/** What sock_diag reports of one UNIX socket (in the tool's network namespace). */
export interface UnixDiag {
  /** Receive queue: the accept queue's length of a listener, else bytes queued to read. */
  rqueue: number;
  /** Send queue: the accept queue's maximum of a listener, else bytes not yet read by the peer. */
  wqueue: number;
  /** The peer's inode (0: the peer was closed); null when not connected. */
  peer: number | null;
  /** sk_shutdown: `SK_SHUTDOWN.RCV` 1, `SK_SHUTDOWN.SEND` 2. */
  shutdown: number;
  /**
   * The file a socket bound to a path made (its inode, and its device as major and minor), as
   * the kernel holds it: also when the path was removed or now names another file; null when
   * it is not bound to a path.
   */
  file: { inode: number; major: number; minor: number } | null;
}

/** sock_diag's view of the UNIX socket with this inode; null when it does not find it. */
export function unixDiag(inode: bigint): UnixDiag | null {
  const ino = Number(inode & 0xffffffffn);
  // struct unix_diag_req
  const req = new Uint8Array(24);
  const v = new DataView(req.buffer);
  req[0] = AF.UNIX; // sdiag_family
  v.setUint32(4, 0xffffffff, true); // udiag_states: any
  v.setUint32(8, ino, true);
  v.setUint32(12, UDIAG_SHOW.RQLEN | UDIAG_SHOW.PEER | UDIAG_SHOW.VFS, true);
  v.setUint32(16, 0xffffffff, true); // no cookie
  v.setUint32(20, 0xffffffff, true);
  const r = ask(req);
  // The netlink header, then struct unix_diag_msg (16 bytes: udiag_ino at 4), then attributes.
  if (!r || r.byteLength < 32) return null;
  if (r.getUint32(20, true) !== ino) return null;
  const out: UnixDiag = { rqueue: 0, wqueue: 0, peer: null, shutdown: 0, file: null };
  let haveQueue = false;
  const end = Math.min(r.byteLength, r.getUint32(0, true));
  for (let at = 32; at + 4 <= end;) {
    const len = r.getUint16(at, true);
    if (len < 4) break;
    const type = r.getUint16(at + 2, true);
    if (type === UNIX_DIAG.RQLEN && len >= 12) {
      out.rqueue = r.getUint32(at + 4, true);
      out.wqueue = r.getUint32(at + 8, true);
      haveQueue = true;
    } else if (type === UNIX_DIAG.PEER && len >= 8) {
      out.peer = r.getUint32(at + 4, true);
    } else if (type === UNIX_DIAG.VFS && len >= 12) {
      const dev = r.getUint32(at + 8, true); // the kernel's dev_t: major above 20 bits of minor
      out.file = { inode: r.getUint32(at + 4, true), major: dev >>> 20, minor: dev & 0xfffff };
    } else if (type === UNIX_DIAG.SHUTDOWN && len >= 5) {
      out.shutdown = r.getUint8(at + 4);
    }
    at += (len + 3) & ~3;
  }
  return haveQueue ? out : null;
}

/**
 * The accept queue (length, maximum) of a listening UNIX socket, asked of sock_diag by inode in
 * the tool's network namespace; null when it does not find it.
 */
export function unixListenQueue(inode: bigint): { queued: number; max: number } | null {
  const d = unixDiag(inode);
  return d ? { queued: d.rqueue, max: d.wqueue } : null;
}

/**
 * The TCP state (`TCP_STATE.*`) of the socket this kernel has for the address pair of `address`
 * and `peer` (raw inet sockaddrs of one family; an exact lookup), or null when it has none.
 */
export function tcpSocketState(
  family: number,
  address: Uint8Array,
  peer: Uint8Array,
): number | null {
  // struct inet_diag_req_v2
  const req = new Uint8Array(56);
  const v = new DataView(req.buffer);
  req[0] = family; // sdiag_family
  req[1] = IPPROTO.TCP; // sdiag_protocol
  v.setUint32(4, 0xffffffff, true); // idiag_states: any
  // inet_diag_sockid: ports as the sockaddrs hold them (network order), then the addresses.
  req.set(address.subarray(2, 4), 8);
  req.set(peer.subarray(2, 4), 10);
  const own = ipOf(address);
  req.set(own.bytes, 12);
  req.set(ipOf(peer).bytes, 28);
  v.setUint32(44, own.scope, true);
  v.setUint32(48, 0xffffffff, true); // no cookie
  v.setUint32(52, 0xffffffff, true);
  const r = ask(req);
  // The netlink header, then struct inet_diag_msg (idiag_state at 1).
  if (!r || r.byteLength < 18) return null;
  return r.getUint8(17);
}
