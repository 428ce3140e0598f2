/**
 * The netlink sock_diag client (NETLINK_SOCK_DIAG): what the socket calls cannot tell. Of a UNIX
 * socket, by inode: its peer's inode, its queue lengths (a listener's accept queue), its shutdown
 * state and the file it bound. Of TCP: whether this kernel has a socket for a given address pair,
 * and where a connecting socket (whose getpeername says ENOTCONN) connects to. Of a packet socket:
 * its memberships and rings; of a netlink socket: its queue and whether a dump is under way (both
 * answer only dumps of every socket, searched by inode). It sees the tool's network namespace,
 * or during the dump of a container with a net namespace of its own that one (`diagSocketsFrom`:
 * its sockets made inside the container); every query gives null where it finds nothing or fails.
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
  TCP_STATE,
  tryRecv,
  trySend,
  trySocket,
  UDIAG_SHOW,
  UNIX_DIAG,
} from "../../../ffi/mod.ts";
import { ipOf } from "./address.ts";

/** Opens a sock_diag socket in the network namespace the queries are about, or gives -errno. */
let openDiagSocket: (() => number) | null = null;

/**
 * Makes every query until disposed ask the network namespace in which `open` makes its sock_diag
 * sockets (a container's); one such namespace at a time in the tool.
 */
export function diagSocketsFrom(open: () => number): Disposable {
  if (openDiagSocket) {
    throw new Error("the sockets of another container's net namespace are being dumped");
  }
  openDiagSocket = open;
  return { [Symbol.dispose]: () => void (openDiagSocket = null) };
}

/** Size of `struct nlmsghdr`, before every request and reply. */
const NLMSG_HEADER = 16;

/**
 * Opens a sock_diag socket and sends it one SOCK_DIAG_BY_FAMILY request with `flags` (`NLM_F`),
 * `body` being what follows the netlink header; the socket, or null when either fails.
 */
function request(body: Uint8Array, flags: number): number | null {
  const s = openDiagSocket?.() ??
    trySocket(AF.NETLINK, SOCK.DGRAM | SOCK.CLOEXEC, NETLINK.SOCK_DIAG);
  if (s < 0) return null;
  const req = new Uint8Array(NLMSG_HEADER + body.length);
  const v = new DataView(req.buffer);
  v.setUint32(0, req.length, true); // nlmsg_len
  v.setUint16(4, SOCK_DIAG.BY_FAMILY, true);
  v.setUint16(6, flags, true);
  v.setUint32(8, 1, true); // seq
  req.set(body, NLMSG_HEADER);
  if (trySend(s, req, 0) >= 0) return s;
  close(s);
  return null;
}

/**
 * Sends one request (see `request`) and returns the first reply (its netlink header included),
 * or null when there is none or it is an error.
 */
function ask(body: Uint8Array): DataView | null {
  const s = request(body, NLM_F.REQUEST);
  if (s === null) return null;
  try {
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
 * Sends one dump request (see `request`) and hands every reply message (its netlink header
 * included) to `visit` until it returns a value, which is returned; null when none does or the
 * request fails.
 */
function askAll<T>(body: Uint8Array, visit: (message: DataView) => T | null): T | null {
  const s = request(body, NLM_F.REQUEST | NLM_F.DUMP);
  if (s === null) return null;
  try {
    const buf = new Uint8Array(65536);
    for (;;) {
      const n = tryRecv(s, buf, 0);
      if (n < NLMSG_HEADER) return null;
      for (let at = 0; at + NLMSG_HEADER <= n;) {
        const length = new DataView(buf.buffer, at, 4).getUint32(0, true);
        if (length < NLMSG_HEADER) return null;
        const m = new DataView(buf.buffer, at, Math.min(n - at, length));
        const type = m.getUint16(4, true);
        if (type === NLMSG.DONE || type === NLMSG.ERROR) return null;
        const found = visit(m);
        if (found !== null) return found;
        at += (length + 3) & ~3;
      }
    }
  } finally {
    close(s);
  }
}

/**
 * The reply to a dump request (the families that answer only dumps: packet, netlink) whose
 * `inodeAt` (the offset of its inode) holds `inode`, copied out; null when none does.
 */
function askDump(body: Uint8Array, inodeAt: number, inode: bigint): DataView | null {
  const ino = Number(inode & 0xffffffffn);
  return askAll(
    body,
    (m) =>
      m.byteLength >= inodeAt + 4 && m.getUint32(inodeAt, true) === ino
        ? new DataView(m.buffer.slice(m.byteOffset, m.byteOffset + m.byteLength))
        : null,
  );
}

/** Where `struct inet_diag_msg` ends in a reply (its attributes follow), and its idiag_inode. */
const INET_DIAG_MSG_END = NLMSG_HEADER + 72;
const INET_DIAG_INODE = NLMSG_HEADER + 68;

/** Whether reply `m` is the inet socket with inode `ino`. */
function isInode(m: DataView, ino: number): boolean {
  return m.byteLength >= INET_DIAG_MSG_END && m.getUint32(INET_DIAG_INODE, true) === ino;
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
  /**
   * A listener's connections not accepted yet, in the order accept() takes them: the inode of
   * each one's client (0 for a client closed since); empty for other sockets.
   */
  icons: number[];
}

/** UNIX_DIAG_ICONS: the client inodes (u32 each) of a listener's queue, in order. */
function iconsOf(a: DataView): number[] {
  const out: number[] = [];
  for (let at = 0; at + 4 <= a.byteLength; at += 4) out.push(a.getUint32(at, true));
  return out;
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
  v.setUint32(12, UDIAG_SHOW.RQLEN | UDIAG_SHOW.PEER | UDIAG_SHOW.VFS | UDIAG_SHOW.ICONS, true);
  v.setUint32(16, 0xffffffff, true); // no cookie
  v.setUint32(20, 0xffffffff, true);
  const r = ask(req);
  // The netlink header, then struct unix_diag_msg (16 bytes: udiag_ino at 4), then attributes.
  if (!r || r.byteLength < 32) return null;
  if (r.getUint32(20, true) !== ino) return null;
  const out: UnixDiag = {
    rqueue: 0,
    wqueue: 0,
    peer: null,
    shutdown: 0,
    file: null,
    icons: [],
  };
  let haveQueue = false;
  for (const [type, a] of attributes(r, 32)) {
    if (type === UNIX_DIAG.RQLEN && a.byteLength >= 8) {
      out.rqueue = a.getUint32(0, true);
      out.wqueue = a.getUint32(4, true);
      haveQueue = true;
    } else if (type === UNIX_DIAG.PEER && a.byteLength >= 4) {
      out.peer = a.getUint32(0, true);
    } else if (type === UNIX_DIAG.VFS && a.byteLength >= 8) {
      const dev = a.getUint32(4, true); // the kernel's dev_t: major above 20 bits of minor
      out.file = { inode: a.getUint32(0, true), major: dev >>> 20, minor: dev & 0xfffff };
    } else if (type === UNIX_DIAG.SHUTDOWN && a.byteLength >= 1) {
      out.shutdown = a.getUint8(0);
    } else if (type === UNIX_DIAG.ICONS) {
      out.icons = iconsOf(a);
    }
  }
  return haveQueue ? out : null;
}

/** Where a connection not accepted yet waits: its listener's inode and its place there. */
export interface PendingPlace {
  listener: bigint;
  /** 0 for the connection accept() takes first. */
  position: number;
}

/**
 * Every UNIX connection waiting in a listener's queue (in the tool's network namespace, or the
 * container's), by its client's inode: a client's peer has no inode of its own until accepted,
 * so only the listeners' lists (UNIX_DIAG_ICONS) tell which queue it waits in. Empty when
 * sock_diag does not answer.
 */
export function unixPendingPlaces(): Map<bigint, PendingPlace> {
  // struct unix_diag_req for a dump of every listening socket
  const req = new Uint8Array(24);
  const v = new DataView(req.buffer);
  req[0] = AF.UNIX;
  v.setUint32(4, 1 << TCP_STATE.LISTEN, true);
  v.setUint32(12, UDIAG_SHOW.ICONS, true);
  v.setUint32(16, 0xffffffff, true);
  v.setUint32(20, 0xffffffff, true);
  const places = new Map<bigint, PendingPlace>();
  // The walk ends at NLMSG_DONE once every listener was visited.
  askAll(req, (m) => {
    if (m.byteLength < NLMSG_HEADER + 16) return null;
    const listener = BigInt(m.getUint32(NLMSG_HEADER + 4, true));
    for (const [type, a] of attributes(m, NLMSG_HEADER + 16)) {
      if (type !== UNIX_DIAG.ICONS) continue;
      for (const [position, client] of iconsOf(a).entries()) {
        if (client) places.set(BigInt(client), { listener, position });
      }
    }
    return null;
  });
  return places;
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

/** One TCP socket as sock_diag lists it. */
export interface TcpDiag {
  /** `TCP_STATE.*`. */
  state: number;
  /** 0 for a socket no file holds (one in a listener's queue, not accepted yet). */
  inode: bigint;
  /** Its own and its peer's raw sockaddrs. */
  address: Uint8Array;
  peer: Uint8Array;
  /** Bytes received and not read; bytes sent and not acknowledged. */
  rqueue: number;
  wqueue: number;
  /** TCP_INFO's tcpi_last_data_recv: milliseconds since it last received data (or was made). */
  sinceReceived: number;
}

/** Where `struct inet_diag_msg` has its id's ports and addresses, and its queues. */
const SPORT = 4, DPORT = 6, SRC = 8, DST = 24, IFACE = 40, RQUEUE = 56, WQUEUE = 60;
/** `INET_DIAG_INFO`, the attribute with struct tcp_info, and the request bit that asks for it. */
const INET_DIAG_INFO = 2;
/** tcpi_last_data_recv in struct tcp_info. */
const TCPI_LAST_DATA_RECV = 52;

/** The raw sockaddr of `family` at the port and address offsets of a struct inet_diag_msg. */
function diagSockaddr(family: number, msg: Uint8Array, port: number, addr: number): Uint8Array {
  const out = new Uint8Array(family === AF.INET ? 16 : 28);
  new DataView(out.buffer).setUint16(0, family, true);
  out.set(msg.subarray(port, port + 2), 2);
  if (family === AF.INET) out.set(msg.subarray(addr, addr + 4), 4);
  else {
    out.set(msg.subarray(addr, addr + 16), 8);
    out.set(msg.subarray(IFACE, IFACE + 4), 24); // scope: the interface
  }
  return out;
}

/**
 * Every TCP socket of `family` in one of `states` (a mask of `1 << TCP_STATE.*`), as sock_diag
 * lists them; empty when it does not answer.
 */
export function tcpSockets(family: number, states: number): TcpDiag[] {
  const req = new Uint8Array(56); // struct inet_diag_req_v2
  req[0] = family;
  req[1] = IPPROTO.TCP;
  req[2] = 1 << (INET_DIAG_INFO - 1); // idiag_ext
  new DataView(req.buffer).setUint32(4, states, true);
  const out: TcpDiag[] = [];
  askAll(req, (m) => {
    if (m.byteLength < INET_DIAG_MSG_END) return null;
    const msg = new Uint8Array(m.buffer, m.byteOffset + NLMSG_HEADER, 72);
    const v = new DataView(msg.buffer, msg.byteOffset, 72);
    let sinceReceived = 0;
    for (const [type, a] of attributes(m, INET_DIAG_MSG_END)) {
      if (type === INET_DIAG_INFO && a.byteLength >= TCPI_LAST_DATA_RECV + 4) {
        sinceReceived = a.getUint32(TCPI_LAST_DATA_RECV, true);
      }
    }
    out.push({
      state: msg[1],
      inode: BigInt(m.getUint32(INET_DIAG_INODE, true)),
      address: diagSockaddr(family, msg, SPORT, SRC),
      peer: diagSockaddr(family, msg, DPORT, DST),
      rqueue: v.getUint32(RQUEUE, true),
      wqueue: v.getUint32(WQUEUE, true),
      sinceReceived,
    });
    return null;
  });
  return out;
}

/**
 * The raw sockaddr a TCP socket in SYN_SENT connects to, found by its inode among this kernel's
 * connecting sockets of `family`; null when sock_diag does not show it.
 */
export function connectingPeer(family: number, inode: bigint): Uint8Array | null {
  const ino = inode & 0xffffffffn;
  return tcpSockets(family, 1 << TCP_STATE.SYN_SENT).find((s) => s.inode === ino)?.peer ?? null;
}

/** The `INET_DIAG_SHUTDOWN` attribute of an inet sock_diag reply: sk_shutdown. */
const INET_DIAG_SHUTDOWN = 8;

/**
 * sk_shutdown (`SK_SHUTDOWN.RCV` 1, `SK_SHUTDOWN.SEND` 2) of the UDP socket of `family` with this
 * inode, as sock_diag shows it; null when it does not list it (an unbound socket is in no table).
 */
export function udpShutdown(family: number, inode: bigint): number | null {
  const ino = Number(inode & 0xffffffffn);
  const req = new Uint8Array(56); // struct inet_diag_req_v2, every state
  req[0] = family;
  req[1] = IPPROTO.UDP;
  new DataView(req.buffer).setUint32(4, 0xffffffff, true);
  return askAll(req, (m) => {
    if (!isInode(m, ino)) return null;
    for (let at = INET_DIAG_MSG_END; at + 4 <= m.byteLength;) {
      const len = m.getUint16(at, true);
      if (len < 4) break;
      if (m.getUint16(at + 2, true) === INET_DIAG_SHUTDOWN && len >= 5) return m.getUint8(at + 4);
      at += (len + 3) & ~3;
    }
    return 0;
  });
}
