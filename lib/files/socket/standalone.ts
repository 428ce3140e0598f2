/**
 * Sockets that come back on their own (entry kind "socket"): made again from their family, type,
 * address, options and backlog, with no peer to carry. Listening TCP (IPv4 and IPv6) and UNIX
 * stream/seqpacket sockets, bound or unbound UDP, UDP-Lite, ICMP "ping", raw IP and UNIX datagram
 * sockets (also ones connect()ed to an address; a ping or raw socket's peer is read from
 * /proc/PID/net, proc_net.ts), packet and netlink sockets (packet.ts, netlink.ts), TCP/UNIX
 * stream sockets that are not connected yet, and an
 * unbound UNIX stream/seqpacket socket whose peer was closed everywhere with nothing queued (it
 * comes back as a socketpair with one end closed again; the JVM holds one). dispatch.ts decides
 * which sockets these are.
 *
 * Dump, inside the frozen process (target_socket.ts): the listen backlog is exact. For TCP,
 * TCP_INFO of a listener reports the accept queue's maximum (tcpi_sacked) and length
 * (tcpi_unacked), as `ss` shows them; for UNIX, a sock_diag (NETLINK_SOCK_DIAG, UDIAG_SHOW_RQLEN)
 * query by inode gives both. Only where sock_diag cannot see the socket (another network
 * namespace) the backlog falls back to net.core.somaxconn (`backlogSource: "somaxconn"`). The
 * options that differ from a fresh socket's are kept (options.ts). A named UNIX datagram socket's
 * queued datagrams are kept with their senders (unix_datagrams.ts); a UNIX path is found where it
 * was bound, also from another directory than the cwd, or removed or replaced since (unix_path.ts).
 * A listener's connections not accepted yet are kept with their clients, in order (`pending`:
 * unix_pending.ts, tcp_pending.ts, which refuse those they cannot keep, such as a TCP client on
 * another host, as CRIU refuses them). The file a UNIX socket's bind() made keeps its permissions
 * and owner (`boundFile`, unix_path.ts). Refused (a DumpError naming fd, family, type and state;
 * a policy can skip them): an unnamed UNIX datagram socket with datagrams queued. Datagrams queued
 * on a UDP socket are not kept (UDP may lose them anyway), nor those of a UDP-Lite, ping, raw or packet socket. A TCP
 * socket in state CLOSE that never connected comes back as a fresh socket (one whose connection
 * ended goes to tcp_stream.ts, one with an error not yet read is refused: dispatch.ts).
 *
 * A UDP socket shut down one way or both (shutdown() shuts even an unconnected one, saying
 * ENOTCONN) keeps it: sock_diag shows its sk_shutdown (INET_DIAG_SHUTDOWN), which a reader of
 * the socket cannot see (poll shows no shut writing). An unbound, unconnected one is in no table
 * sock_diag lists: its shutdown is not seen.
 *
 * Restore: socket() with SOCK_NONBLOCK as the file had O_NONBLOCK, the options (options.ts),
 * bind() to the same address (IP_FREEBIND or IP_TRANSPARENT, set before, bind an address this
 * host does not have), what packet and netlink sockets join, the queued datagrams, connect() for
 * a connected datagram socket (to a UNIX peer of the image made later: from the tool's copy once
 * every process is made), shutdown() of a UDP socket that was shut, listen(backlog). A UNIX
 * socket file left over from the dumped process is unlinked first, but only if it is a socket
 * nobody is bound to (connect gives ECONNREFUSED); a ghost's path is bound and unlinked again
 * (unix_path.ts). A relative UNIX path is bound after an injected chdir to the directory it was
 * found in at dump (the restorer sets the final cwd later). check()
 * refuses up front an address in use (a probe bind by the tool, unless SO_REUSEPORT is set) and a
 * UNIX path that is not a stale socket. A SO_REUSEPORT socket joins its group again (a member
 * outside the image too); a listener's clients are steered into its own queue (reuseport.ts).
 */
import {
  AF,
  close,
  Errno,
  errnoName,
  IPPROTO,
  O,
  pidfdGetfd,
  SHUT,
  SK_SHUTDOWN,
  SO,
  SOCK,
  SOCK_IOCTL,
  SOL,
  SYS,
  TCP_STATE,
  tryBind,
  tryConnect,
  trySetsockopt,
  trySocket,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import { mountRoot } from "../../inspect/mount_root.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { abandonFd, asIds, injectClose, injectRaw, injectSocketpair, readU32 } from "../util.ts";
import { formatAddress, unixAddress, unixPath } from "./address.ts";
import { udpShutdown, unixListenQueue } from "./diag.ts";
import {
  changedOptions,
  findOption,
  intOption,
  isAfterQueue,
  setOption,
  SOCKET_OPTIONS,
  type SocketOption,
} from "./options.ts";
import type { SocketReader } from "./socket_copy.ts";
import type { TargetSocket } from "./target_socket.ts";
import { isPing } from "./kinds.ts";
import { listenerPending } from "./unix_pending.ts";
import { tcpListenerPending } from "./tcp_pending.ts";
import { awaitPendingClients } from "./pending_queue.ts";
import { groupKey, joinGroup, refuseReuseportProgram, steerToMember } from "./reuseport.ts";
import {
  bindGhost,
  BOUND_FILE,
  type BoundFile,
  dumpUnixPaths,
  type PathFate,
  restoreBoundFile,
  unlinkGhosts,
} from "./unix_path.ts";
import {
  dumpNetlink,
  NETLINK_STATE,
  netlinkBindAddress,
  type NetlinkState,
  restoreNetlink,
} from "./netlink.ts";
import {
  dumpPacket,
  PACKET_STATE,
  packetBindAddress,
  packetProblem,
  type PacketState,
  restorePacket,
} from "./packet.ts";
import {
  dumpMulticast,
  MULTICAST_STATE,
  type MulticastMembership,
  multicastProblem,
  restoreMulticast,
} from "./multicast.ts";
import {
  dumpDatagramQueue,
  forgetSenders,
  QUEUED_DATAGRAMS,
  type QueuedDatagram,
  refillDatagrams,
  rememberSender,
} from "./unix_datagrams.ts";

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
  /** The directory a relative UNIX path resolves from (the process's cwd at dump, unless it
   * was bound from another: unix_path.ts). */
  cwd: string;
  /** A UNIX path removed or replaced since bind(): bound again, then unlinked (unix_path.ts). */
  pathFate?: PathFate;
  /**
   * A UNIX socket's file at its path: its permissions and owner, given again after bind()
   * (unix_path.ts); absent in older images (the file gets the restoring process's).
   */
  boundFile?: BoundFile;
  /** "removed": connected to a ghost UNIX socket of the image, whose path was removed. */
  peerFate?: "removed";
  /**
   * Its UNIX peer is a socket of the image: connected as soon as that exists (it may be made
   * later: then from the tool's copy once every process is made).
   */
  peerInImage?: boolean;
  options: SocketOption[];
  /**
   * A UDP socket's sk_shutdown (`SK_SHUTDOWN.RCV` 1, `SK_SHUTDOWN.SEND` 2) when it was shut down
   * one way or both; absent: not shut (and in images of older versions).
   */
  shutdown?: number;
  /** The dumped socket's inode. */
  inode: bigint;
  /** "IPv4 TCP 127.0.0.1:4000 listening", for messages. */
  description: string;
  /** A named UNIX datagram socket's queued datagrams (unix_datagrams.ts); absent when empty. */
  queue?: QueuedDatagram[];
  /** A packet socket's memberships and fanout group (packet.ts). */
  packet?: PacketState;
  /** A netlink socket's multicast groups (netlink.ts). */
  netlink?: NetlinkState;
  /** The IP multicast groups it joined (multicast.ts); absent: none (and in older images). */
  multicast?: MulticastMembership[];
  /**
   * A UNIX listener's SO_PEERCRED ids (the effective ids of whoever called listen(), which its
   * clients see as their peer's), when not root's; listen() is called with them again. Absent:
   * root's (and in older images).
   */
  listenIds?: { uid: number; gid: number };
  /**
   * A listener's connections not accepted yet: the inodes of their clients (entries of kind
   * "unix-pending" or "tcp-pending"), in the order accept() takes them; absent: none (and in
   * older images).
   */
  pending?: bigint[];
  /**
   * true: a TCP listener with SO_REUSEPORT and `pending`, whose clients connect again while a
   * reuseport program sends its group's new connections to it (reuseport.ts); absent: no steering
   * (older readers refuse the key rather than let the connections go to another member).
   */
  steerPending?: boolean;
}

/** What dispatch.ts has read of a socket it hands over here. */
export interface StandaloneSocket {
  /** The socket, inside the frozen process. */
  socket: TargetSocket;
  /** Its options and names, read where it is or from a copy (socket_copy.ts). */
  reader: SocketReader;
  /** "IPv4 TCP" …, for messages. */
  what: string;
  /** SO_DOMAIN, SO_TYPE and SO_PROTOCOL. */
  family: number;
  type: number;
  protocol: number;
  /** getsockname, null when unbound. */
  address: Uint8Array | null;
  /** getpeername, null when not connected. */
  peer: Uint8Array | null;
  /** SO_ACCEPTCONN. */
  listening: boolean;
  /** A UNIX socketpair half whose peer was closed everywhere, with nothing queued. */
  peerClosed: boolean;
  /** TCP_INFO (its first 32 bytes) of a TCP socket; null for other protocols. */
  tcpInfo: Uint8Array | null;
  /** "on 127.0.0.1:80" or "unbound", for messages. */
  at: string;
  /** Refuses the dump of the socket, saying why. */
  refuse(why: string): never;
  /** The dump it is part of. */
  ctx: FileDumpContext;
}

/** What a socket's sk_shutdown shut, for messages; and the shutdown() call that shuts it so. */
const SHUT_NAMES: Record<number, string> = {
  [SK_SHUTDOWN.RCV]: "reading",
  [SK_SHUTDOWN.SEND]: "writing",
  [SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND]: "reading and writing",
};
const SHUT_HOW: Record<number, number> = {
  [SK_SHUTDOWN.RCV]: SHUT.RD,
  [SK_SHUTDOWN.SEND]: SHUT.WR,
  [SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND]: SHUT.RDWR,
};

// ---- Dump ----

function somaxconn(): number {
  try {
    return Number(Deno.readTextFileSync("/proc/sys/net/core/somaxconn").trim()) || 4096;
  } catch {
    return 4096;
  }
}

/** listen()'s backlog: the accept queue's maximum. */
function backlogOf(
  fd: Fd,
  s: StandaloneSocket,
): { backlog: number; backlogSource: SocketEntry["backlogSource"] } {
  if (s.tcpInfo) {
    if (s.tcpInfo[0] !== TCP_STATE.LISTEN) return { backlog: 0, backlogSource: "none" };
    const backlog = readU32(s.tcpInfo, 28); // tcpi_sacked: sk_max_ack_backlog
    return { backlog, backlogSource: "tcp_info" };
  }
  if (s.family !== AF.UNIX || !s.listening) return { backlog: 0, backlogSource: "none" };
  const q = unixListenQueue(fd.inode);
  if (!q) return { backlog: somaxconn(), backlogSource: "somaxconn" };
  return { backlog: q.max, backlogSource: "sock_diag" };
}

/** A UNIX listener's SO_PEERCRED ids: those its clients see as their peer's. */
function listenIds(s: StandaloneSocket): { uid: number; gid: number } {
  const v = s.reader.getsockopt(SOL.SOCKET, SO.PEERCRED, 12); // struct ucred: pid, uid, gid
  if (typeof v === "number") s.refuse(`${s.at}: getsockopt(SO_PEERCRED) failed (errno ${-v})`);
  return { uid: readU32(v, 4), gid: readU32(v, 8) };
}

/** Dumps a socket dispatch.ts found to come back on its own. */
export async function dumpStandalone(fd: Fd, s: StandaloneSocket): Promise<SocketEntry> {
  const { backlog, backlogSource } = backlogOf(fd, s);
  // A listener's connections not accepted yet come back with their clients (unix_pending.ts,
  // tcp_pending.ts).
  const refuseListening = (why: string) => s.refuse(`listening ${s.at} ${why}`);
  const queued = s.tcpInfo?.[0] === TCP_STATE.LISTEN ? readU32(s.tcpInfo, 24) : 0; // tcpi_unacked
  const pending = s.family === AF.UNIX && s.listening
    ? listenerPending(fd, s.ctx, refuseListening)
    : queued
    ? tcpListenerPending(fd, s.ctx, queued, refuseListening)
    : [];
  let queue: QueuedDatagram[] = [];
  if (s.family === AF.UNIX && !s.listening && s.type === SOCK.DGRAM) {
    if (s.address) {
      queue = await dumpDatagramQueue(
        fd,
        s.ctx,
        s.socket,
        s.reader,
        `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${s.at})`,
      );
    } else {
      // Only a socketpair half (unix_pair.ts) receives without an address.
      const queued = s.socket.ioctlInt(SOCK_IOCTL.FIONREAD);
      if (queued > 0) s.refuse(`${s.at}, with datagrams queued (${queued} bytes)`);
    }
  }
  const options = changedOptions(
    s.reader,
    s.family,
    s.type,
    s.protocol,
    `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${s.at})`,
  );
  const tcpListener = s.tcpInfo?.[0] === TCP_STATE.LISTEN;
  if ((tcpListener || s.protocol === IPPROTO.UDP) && intOption(options, "SO_REUSEPORT")) {
    const refuse = tcpListener ? refuseListening : (why: string) => s.refuse(`${s.at} ${why}`);
    refuseReuseportProgram(fd, s.ctx, tcpListener, refuse);
  }
  const state = s.listening
    ? "listening"
    : s.peerClosed
    ? "peer-closed"
    : s.peer
    ? "connected"
    : "unconnected";
  const name = `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${s.at})`;
  const paths = s.family === AF.UNIX
    ? dumpUnixPaths(fd, s.ctx, s.address, s.peerClosed ? null : s.peer, name)
    : { cwd: "/" };
  if (pending.length && paths.pathFate === "replaced") {
    // Its clients connect by path again, which now names another file.
    refuseListening(
      `with connection(s) not yet accepted, and its path now names another file: its clients ` +
        `could not connect to it again`,
    );
  }
  const to = s.peer && !s.peerClosed ? ` to ${formatAddress(s.peer)}` : "";
  // shutdown() of a UDP socket, connected or not, shuts it (an unconnected one says ENOTCONN).
  const shutdown = s.protocol === IPPROTO.UDP ? udpShutdown(s.family, fd.inode) ?? 0 : 0;
  const entry: SocketEntry = {
    id: fd.fileId,
    kind: "socket",
    flags: fd.flags,
    family: s.family,
    type: s.type,
    protocol: s.protocol,
    state,
    address: s.address,
    peer: s.peerClosed ? null : s.peer,
    backlog,
    backlogSource,
    ...paths,
    options,
    ...(shutdown ? { shutdown } : {}),
    inode: fd.inode,
    description: `${s.what} ${formatAddress(s.address)} ${state}${to}` +
      (shutdown ? `, shut for ${SHUT_NAMES[shutdown]}` : ""),
  };
  if (queue.length) entry.queue = queue;
  if (pending.length) entry.pending = pending;
  if (pending.length && s.protocol === IPPROTO.TCP && intOption(options, "SO_REUSEPORT")) {
    entry.steerPending = true;
  }
  if (s.family === AF.UNIX && s.listening) {
    const ids = listenIds(s);
    if (ids.uid || ids.gid) entry.listenIds = ids;
  }
  if (s.family === AF.PACKET) entry.packet = dumpPacket(fd, s.reader, s.address, s.refuse);
  if (s.family === AF.NETLINK) entry.netlink = dumpNetlink(fd, s.reader, s.address, s.refuse);
  if ((s.family === AF.INET || s.family === AF.INET6) && s.type !== SOCK.STREAM) {
    const groups = dumpMulticast(s.reader, s.family, s.refuse);
    if (groups.length) entry.multicast = groups;
  }
  return entry;
}

// ---- Restore ----

/** The absolute path of a UNIX socket address's file, or "" (abstract, unnamed). */
function absoluteUnixPath(e: SocketEntry, addr: Uint8Array | null): string {
  if (!addr || e.family !== AF.UNIX) return "";
  const path = unixPath(addr);
  if (!path) return "";
  return path.startsWith("/") ? path : `${e.cwd.replace(/\/$/, "")}/${path}`;
}

/** What is at a UNIX socket path (found under `root`) now: nothing, a socket file nobody is
 * bound to, a socket some process is bound to, or something else. */
function unixPathState(
  path: string,
  type: number,
  root: string,
): "free" | "stale" | "bound" | "other" {
  let st: Deno.FileInfo;
  try {
    st = Deno.lstatSync(root + path);
  } catch {
    return "free";
  }
  if (!st.isSocket) return "other";
  const addr = unixAddress(root + path);
  if (!addr) return "stale"; // too long to probe; bind will tell
  const s = trySocket(AF.UNIX, type | SOCK.CLOEXEC | SOCK.NONBLOCK, 0);
  if (s < 0) return "stale";
  try {
    // Only a socket file with no socket behind it refuses with ECONNREFUSED.
    return tryConnect(s, addr) === -Errno.ECONNREFUSED ? "stale" : "bound";
  } finally {
    close(s);
  }
}

const PATH_PROBLEM = {
  bound: "is a socket another process is bound to",
  other: "exists and is not a socket",
} as const;

/** Whether the tool can bind an inet address now, with the options that bear on it. */
function inetAddressFree(e: SocketEntry): boolean {
  const s = trySocket(e.family, e.type | SOCK.CLOEXEC, e.protocol);
  if (s < 0) return true;
  try {
    for (const name of ["SO_REUSEADDR", "IPV6_V6ONLY", "IP_FREEBIND", "IPV6_FREEBIND"]) {
      const o = findOption(e.options, name);
      if (o) trySetsockopt(s, o.level, o.option, o.value);
    }
    return tryBind(s, e.address!) !== -Errno.EADDRINUSE;
  } finally {
    close(s);
  }
}

function checkSocket(e: SocketEntry, root = ""): string | null {
  if (e.shutdown !== undefined && !(e.shutdown in SHUT_HOW)) {
    return `${e.description}: shutdown ${e.shutdown} is not 1, 2 or 3 (sk_shutdown)`;
  }
  const path = absoluteUnixPath(e, e.address);
  if (path && !e.pathFate) {
    const st = unixPathState(path, e.type, root);
    if (st === "bound" || st === "other") return `${e.description}: ${path} ${PATH_PROBLEM[st]}`;
  }
  const inet = e.family === AF.INET || e.family === AF.INET6;
  if (e.address && inet && !intOption(e.options, "SO_REUSEPORT")) {
    if (!inetAddressFree(e)) {
      return `${e.description}: ${formatAddress(e.address)} is in use` +
        (intOption(e.options, "SO_REUSEADDR")
          ? ""
          : " (connections in TIME_WAIT block it too: the socket had no SO_REUSEADDR)");
    }
  }
  const packetWhy = (e.packet && packetProblem(e.packet, e.address)) ??
    (e.multicast && multicastProblem(e.multicast));
  if (packetWhy) return `${e.description}: ${packetWhy}`;
  const peerPath = absoluteUnixPath(e, e.peer);
  if (peerPath && !e.peerInImage && unixPathState(peerPath, e.type, root) !== "bound") {
    return `${e.description}: nothing is bound to its peer ${peerPath} any more`;
  }
  return null;
}

/** A socketpair of which one end is closed again: a socket whose peer is gone. */
function openPeerClosed(e: SocketEntry, ctx: FileRestoreContext, type: number): number {
  const [fd, other] = injectSocketpair(ctx, e.family, type, e.protocol);
  injectClose(ctx, other);
  return fd;
}

/** Queues a named UNIX datagram socket's datagrams again (before it connects: see the top). */
function refill(e: SocketEntry, ctx: FileRestoreContext, fd: number): void {
  if (e.family !== AF.UNIX || e.type !== SOCK.DGRAM || !e.address) return;
  rememberSender(ctx, fd, e.address);
  if (!e.queue?.length) return;
  refillDatagrams(ctx, e.queue, connectAddress(e), e.cwd, e.description);
}

/** The address a client connects to a UNIX socket at: its absolute path, or its abstract name. */
function connectAddress(e: SocketEntry): Uint8Array {
  const path = absoluteUnixPath(e, e.address);
  const to = path ? unixAddress(path) : e.address;
  if (!to) throw new RestoreError(`${e.description}: ${path} is too long to connect to`);
  return to;
}

/** Binds target fd `fd` to the entry's address (`path`: its file's absolute path, or ""). */
function bindAddress(e: SocketEntry, ctx: FileRestoreContext, fd: number, path: string): void {
  // A netlink socket binds its port id alone: its groups are joined one by one (netlink.ts).
  const address = e.family === AF.NETLINK
    ? netlinkBindAddress(e.address!)!
    : e.family === AF.PACKET
    ? packetBindAddress(e.address!)
    : e.address!;
  const root = path ? mountRoot(ctx.pid) : "";
  if (path && !e.pathFate) {
    const st = unixPathState(path, e.type, root);
    if (st === "stale") Deno.removeSync(root + path);
    else if (st !== "free") throw new RestoreError(`${e.description}: ${path} ${PATH_PROBLEM[st]}`);
  }
  // A relative path is bound from the directory it resolved from; the process's own cwd comes
  // later.
  if (path && !unixPath(address).startsWith("/")) {
    injectRaw(ctx, "chdir", SYS.chdir, ctx.putString(e.cwd));
  }
  const r = ctx.injector.raw(SYS.bind, fd, ctx.put(address), address.length);
  if (r < 0n) {
    const code = Number(-r);
    throw new RestoreError(
      `${e.description}: cannot bind ${formatAddress(address)}: ` +
        (code === Errno.EADDRINUSE
          ? "address in use (is the dumped process still running?)"
          : `errno ${code}`),
    );
  }
  if (path && e.boundFile && !e.pathFate) restoreBoundFile(root + path, e.boundFile);
}

// Datagram sockets whose peer in the image was not made yet when they were: the tool's copy of
// each, connected once every process is made (release), by restore scope.
const laterConnects = new WeakMap<object, { copy: number; e: SocketEntry }[]>();

/** Connects target fd `fd` to the entry's peer (a datagram socket's), or later (see above). */
function connectPeer(e: SocketEntry, ctx: FileRestoreContext, fd: number): void {
  const peer = e.peer!;
  const r = ctx.injector.raw(SYS.connect, fd, ctx.put(peer), peer.length);
  if (r >= 0n) return;
  const notYet = -r === BigInt(Errno.ECONNREFUSED) || -r === BigInt(Errno.ENOENT);
  if (!e.peerInImage || !notYet) {
    throw new RestoreError(
      `${e.description}: cannot connect to ${formatAddress(peer)} (errno ${-r})`,
    );
  }
  const scope = ctx.scope ?? ctx;
  const list = laterConnects.get(scope) ?? [];
  laterConnects.set(scope, list);
  list.push({ copy: pidfdGetfd(ctx.pidfd, fd), e });
}

/** Connects the sockets whose peer was made after them, from the tool's copies, then lets go. */
function connectLater(scope: object, connect: boolean): void {
  const list = laterConnects.get(scope) ?? [];
  laterConnects.delete(scope);
  let failed: RestoreError | null = null;
  for (const { copy, e } of list) {
    try {
      if (!connect || failed) continue;
      const path = absoluteUnixPath(e, e.peer);
      const to = path ? unixAddress(path) : e.peer;
      const r: number = to ? tryConnect(copy, to) : -Errno.ENAMETOOLONG;
      if (r < 0) {
        failed = new RestoreError(
          `${e.description}: cannot connect to its peer ${formatAddress(e.peer)} (errno ${-r})`,
        );
      }
    } finally {
      close(copy);
    }
  }
  if (failed) throw failed;
}

/** socket() in the target, saying why where the machine does not let it make this kind. */
function makeSocket(e: SocketEntry, ctx: FileRestoreContext, type: number): number {
  const r = ctx.injector.raw(SYS.socket, e.family, type, e.protocol);
  if (r >= 0n) return Number(r);
  const ping = isPing(e.type, e.protocol);
  throw new RestoreError(
    `${e.description}: socket() failed (${errnoName(Number(-r))})` +
      (ping && -r === BigInt(Errno.EACCES)
        ? `: net.ipv4.ping_group_range does not let the restoring process's group (root's) ` +
          `make ping sockets`
        : ""),
  );
}

function openSocket(e: SocketEntry, ctx: FileRestoreContext): number {
  const type = e.type | (e.flags & O.NONBLOCK ? SOCK.NONBLOCK : 0);
  const fd = e.state === "peer-closed" ? openPeerClosed(e, ctx, type) : makeSocket(e, ctx, type);
  const late = (o: SocketOption) => !!e.queue?.length && isAfterQueue(o);
  try {
    for (const o of e.options) if (!late(o)) setOption(ctx, fd, o);
    if (e.address && (e.family !== AF.NETLINK || netlinkBindAddress(e.address))) {
      const path = absoluteUnixPath(e, e.address);
      const bind = () => bindAddress(e, ctx, fd, path);
      if (path && e.pathFate) {
        const scope = ctx.scope ?? ctx;
        bindGhost(path, e.pathFate, scope, e.description, bind, mountRoot(ctx.pid));
      } else bind();
    }
    refill(e, ctx, fd);
    if (e.packet) restorePacket(ctx, fd, e.packet);
    if (e.multicast) restoreMulticast(ctx, fd, e.family, e.multicast);
    if (e.netlink) restoreNetlink(ctx, fd, e.netlink);
    for (const o of e.options) if (late(o)) setOption(ctx, fd, o);
    if (e.peer) connectPeer(e, ctx, fd);
    if (e.shutdown) {
      const r = ctx.injector.raw(SYS.shutdown, fd, SHUT_HOW[e.shutdown]);
      if (r < 0n && r !== BigInt(-Errno.ENOTCONN)) {
        throw new RestoreError(`${e.description}: shutdown failed (${errnoName(Number(-r))})`);
      }
    }
    let member: number | undefined;
    if (e.state === "listening") {
      // With the ids its clients see as their peer's (SO_PEERCRED).
      const { uid, gid } = e.listenIds ?? { uid: 0, gid: 0 };
      asIds(ctx, uid, gid, () => injectRaw(ctx, "listen", SYS.listen, fd, e.backlog));
      // A TCP listener with SO_REUSEPORT joins its group now (reuseport.ts).
      if (e.protocol === IPPROTO.TCP && e.address && intOption(e.options, "SO_REUSEPORT")) {
        const device = findOption(e.options, "SO_BINDTODEVICE")?.value;
        member = joinGroup(ctx, groupKey(e.family, e.address, device));
      }
    }
    if (e.pending?.length) {
      const around = member === undefined || !e.steerPending
        ? undefined
        : (connectAll: () => number) =>
          steerToMember(ctx, ctx.fdOfFile(e.id), member, e.description, connectAll);
      awaitPendingClients(ctx, e.inode, e.pending, connectAddress(e), around);
    }
  } catch (err) {
    abandonFd(ctx, fd, e.description, err);
  }
  return fd;
}

/**
 * Listening, bound and unconnected TCP, UDP and UNIX sockets. dispatch.ts dumps them (it reads
 * every socket first, to find its kind); this restores them.
 */
export const standaloneSocketHandler: FileHandler<SocketEntry> = {
  kind: "socket",
  fields: {
    family: "whole",
    type: "whole",
    protocol: "whole",
    state: { oneOf: ["listening", "unconnected", "connected", "peer-closed"] },
    address: { nullable: "bytes" },
    peer: { nullable: "bytes" },
    backlog: "whole",
    backlogSource: { oneOf: ["tcp_info", "sock_diag", "somaxconn", "none"] },
    cwd: "text",
    options: SOCKET_OPTIONS,
    shutdown: { optional: "whole" },
    inode: "whole",
    description: "text",
    queue: { optional: QUEUED_DATAGRAMS },
    pathFate: { optional: { oneOf: ["removed", "replaced"] } },
    boundFile: BOUND_FILE,
    packet: PACKET_STATE,
    multicast: MULTICAST_STATE,
    netlink: NETLINK_STATE,
    peerFate: { optional: { oneOf: ["removed"] } },
    peerInImage: { optional: "bool" },
    pending: { optional: { list: "whole" } },
    steerPending: { optional: "bool" },
    listenIds: { optional: { map: { uid: "whole", gid: "whole" } } },
  },
  fdKinds: [], // dispatch.ts's handler dumps every socket and restores these with check/open here
  dump(fd: Fd): SocketEntry {
    throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: sockets are dumped by dispatch.ts`);
  },
  check: checkSocket,
  open: openSocket,
  release(scope: object): void {
    try {
      connectLater(scope, true); // before a ghost's path goes
    } finally {
      forgetSenders(scope);
      unlinkGhosts(scope);
    }
  },
  abort(scope: object): void {
    connectLater(scope, false);
    forgetSenders(scope);
    unlinkGhosts(scope);
  },
};
