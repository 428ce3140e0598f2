/**
 * The netlink sock_diag client (NETLINK_SOCK_DIAG): what the socket calls cannot tell. Of a UNIX
 * socket, by inode: its peer's inode, its queue lengths (a listener's accept queue) and its
 * shutdown state. Of TCP: whether this kernel has a socket for a given address pair. It sees the
 * tool's network namespace only; every query gives null where it finds nothing or fails.
 */
import {
  AF,
  close,
  IPPROTO,
  MSG,
  NETLINK,
  NLM_F,
  NLMSG,
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

/**
 * Sends one SOCK_DIAG_BY_FAMILY request, `body` being what follows the netlink header, and
 * returns the first reply (its netlink header included), or null when there is none or it is
 * an error.
 */
function ask(body: Uint8Array): DataView | null {
  const s = trySocket(AF.NETLINK, SOCK.DGRAM | SOCK.CLOEXEC, NETLINK.SOCK_DIAG);
  if (s < 0) return null;
  try {
    const req = new Uint8Array(NLMSG_HEADER + body.length);
    const v = new DataView(req.buffer);
    v.setUint32(0, req.length, true); // nlmsg_len
    v.setUint16(4, SOCK_DIAG.BY_FAMILY, true);
    v.setUint16(6, NLM_F.REQUEST, true);
    v.setUint32(8, 1, true); // seq
    req.set(body, NLMSG_HEADER);
    if (trySend(s, req, 0) < 0) return null;
    const buf = new Uint8Array(8192);
    const n = tryRecv(s, buf, MSG.DONTWAIT);
    if (n < NLMSG_HEADER) return null;
    const reply = new DataView(buf.buffer, 0, n);
    return reply.getUint16(4, true) === NLMSG.ERROR ? null : reply;
  } finally {
    close(s);
  }
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
