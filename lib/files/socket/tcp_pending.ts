/**
 * TCP connections that wait in a listener's queue, not accepted yet, when both ends are in the
 * dump (loopback): the client's socket (entry kind "tcp-pending") and its place in the
 * listener's queue (the listener's `pending`, standalone.ts).
 *
 * Dump. The server side of such a connection is a socket the kernel made at the end of the
 * handshake: established, held by no file (inode 0) until accept() gives it one. sock_diag lists
 * it (tcpSockets, diag.ts) with its address pair, which names its client (the socket with the
 * pair reversed; an IPv4 client of an IPv6 listener shows v4-mapped there) and, by its address,
 * its listener. Which listener's queue holds it, and where, the kernel's queues tell, read with a
 * BPF iterator (accept_queues.ts). Where BPF iterators are not available, sock_diag alone serves:
 * it shows no order of the queue, so the sockets are ordered by their age (tcpi_last_data_recv,
 * which counts from the handshake's end while no data came), and two of one listener made within
 * the same clock tick are refused rather than guessed. The client is kept
 * with its addresses and options; the listener with its clients' inodes in order. Refused, naming
 * the fd (as CRIU refuses every listener with connections waiting): a connection whose client is
 * outside the dump (another host, or a process not dumped: its side of the handshake is not in
 * the image and cannot be made again; a client alone, whose listener is outside, is an ordinary
 * connection, tcp_stream.ts), one with data sent and not read either way (only accept() could
 * read the server's side, which would take the connection out of the queue for good), a client
 * in another state, a listener whose connections sock_diag does not all
 * show established. A member of a SO_REUSEPORT group (listeners bound to one address) is kept
 * with its connections when every member is in the dump (the restore steers them to it:
 * reuseport.ts) and, without the kernel's queues (sock_diag shows how many connections wait in
 * each queue but not which), when no other member has any waiting; refused otherwise, and when
 * listeners at other addresses share the port. A client that shut down sending (FIN_WAIT2, its
 * server side in CLOSE_WAIT) is kept so and shut down again after its handshake.
 *
 * Restore. The client is a fresh socket with its options, bound to its address (its port as it
 * was); once every process is made, each listener's clients connect in their order
 * (pending_queue.ts; a SO_REUSEPORT listener's steered to it), from inside their own process, to
 * the address they had connected to, each
 * waited for until the handshake is done (a new one: the sequence numbers are new, as nothing was
 * sent yet) and a clock tick more (so that a dump of the restored queue tells its order again),
 * so the connection waits in the restored listener's queue as it did.
 */
import {
  AF,
  Errno,
  F,
  IPPROTO,
  POLL,
  pollFds,
  SETFL_MASK,
  SHUT,
  SO,
  SOCK,
  SOL,
  SYS,
  TCP_STATE,
  tcpStateName,
  tryGetsockopt,
  tryShutdown,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { abandonFd, injectRaw, readI32 } from "../util.ts";
import { familyOf, formatAddress, ipOf } from "./address.ts";
import { type PendingPlace, type TcpDiag, tcpSockets } from "./diag.ts";
import {
  changedOptions,
  intOption,
  type OptionReader,
  setOption,
  SOCKET_OPTIONS,
  type SocketOption,
} from "./options.ts";
import { awaitConnect, settlePending } from "./pending_queue.ts";
import { pauseThread } from "../../ptrace/bounded_wait.ts";
import { socketHolders } from "./unix_pair.ts";
import { type AcceptQueue, acceptQueues, type QueuedPeer } from "./accept_queues.ts";
import { describeHolder } from "../outside_peers.ts";

/** The client end of a TCP connection waiting in its listener's queue. */
export interface TcpPendingEntry extends FileEntry {
  kind: "tcp-pending";
  /** AF_INET 2, AF_INET6 10. */
  family: number;
  /** This end's inode when dumped. */
  inode: bigint;
  /** The listener's inode when dumped (its entry's `pending` lists this end's inode). */
  listener: bigint;
  /** Its own raw sockaddr (bound again: its port as it was). */
  address: Uint8Array;
  /** The raw sockaddr it connected to (the listener's port; its address, or one of the host's). */
  peer: Uint8Array;
  /** It had shut down sending (FIN_WAIT2, its server side in CLOSE_WAIT); absent: it had not. */
  shutWrite?: boolean;
  /** Options that differ from a fresh socket's, as options.ts keeps them. */
  options: SocketOption[];
  /** "IPv4 TCP 127.0.0.1:5000 waiting in the queue of 127.0.0.1:80 …", for messages. */
  description: string;
}

// ---- Dump ----

/** An endpoint as text, an IPv4 one and its v4-mapped IPv6 form alike: "127.0.0.1|80". */
function endpoint(addr: Uint8Array): string {
  const ip = ipOf(addr).bytes;
  const v4 = ip.length === 4
    ? ip
    : ip.subarray(0, 10).every((b) => b === 0) && ip[10] === 0xff && ip[11] === 0xff
    ? ip.subarray(12)
    : null;
  const port = (addr[2] << 8) | addr[3];
  return `${v4 ? v4.join(".") : [...ip].join(",")}|${port}`;
}

const isAny = (addr: Uint8Array) => ipOf(addr).bytes.every((b) => b === 0);

/** Whether a listener at `listener` takes the connections made to `address` (one family). */
function listensAt(listener: Uint8Array, address: Uint8Array): boolean {
  return listener[2] === address[2] && listener[3] === address[3] &&
    (isAny(listener) || endpoint(listener) === endpoint(address));
}

/** The TCP sockets of both families, read once a dump (every process is frozen). */
const socketsByDump = new WeakMap<object, TcpDiag[]>();

function sockets(ctx: FileDumpContext): TcpDiag[] {
  const key = ctx.scope ?? ctx;
  let all = socketsByDump.get(key);
  if (!all) {
    // Every state but TIME_WAIT (which no socket of a program is in).
    const states = 0xfff & ~(1 << TCP_STATE.TIME_WAIT);
    all = [...tcpSockets(AF.INET, states), ...tcpSockets(AF.INET6, states)];
    socketsByDump.set(key, all);
  }
  return all;
}

/** The listeners of the kernel that would take connections to the server side `embryo`. */
function listenersOf(embryo: TcpDiag, all: TcpDiag[]): TcpDiag[] {
  return all.filter((l) =>
    l.state === TCP_STATE.LISTEN && familyOf(l.address) === familyOf(embryo.address) &&
    listensAt(l.address, embryo.address)
  );
}

/** A connection's server side not accepted yet: established, with no file. */
const isEmbryo = (s: TcpDiag) =>
  s.inode === 0n && (s.state === TCP_STATE.ESTABLISHED || s.state === TCP_STATE.CLOSE_WAIT);

/** The state a client is in whose server side, not accepted yet, is in `embryoState`. */
const CLIENT_STATE: Record<number, number> = {
  [TCP_STATE.ESTABLISHED]: TCP_STATE.ESTABLISHED,
  // The client shut down sending and its FIN was acknowledged.
  [TCP_STATE.CLOSE_WAIT]: TCP_STATE.FIN_WAIT2,
};

/** The socket with the reversed address pair of `s` (its other end on this host), if any. */
function otherEnd(s: TcpDiag, all: TcpDiag[], embryo: boolean): TcpDiag | undefined {
  const [to, from] = [endpoint(s.address), endpoint(s.peer)];
  return all.find((o) =>
    o !== s && isEmbryo(o) === embryo && endpoint(o.address) === from &&
    endpoint(o.peer) === to && o.state !== TCP_STATE.LISTEN
  );
}

/**
 * Where an established TCP socket (at `address`, connected to `peer`) waits, not accepted
 * yet, when its listener is in the dump too; undefined otherwise (it is an ordinary connection).
 */
export function tcpPendingPlace(
  ctx: FileDumpContext,
  address: Uint8Array,
  peer: Uint8Array,
): PendingPlace | undefined {
  const all = sockets(ctx);
  const [from, to] = [endpoint(address), endpoint(peer)];
  const embryo = all.find((s) =>
    isEmbryo(s) && endpoint(s.address) === to && endpoint(s.peer) === from
  );
  if (!embryo) return undefined;
  const listener = queueHolder(embryo, all, kernelQueues(ctx));
  if (!listener || !socketHolders(ctx).has(listener.inode)) return undefined;
  const queue = queueOf(listener, all, kernelQueues(ctx), () => 0);
  const position = queue.findIndex((e) => e === embryo);
  return position < 0 ? undefined : { listener: listener.inode, position };
}

/**
 * The listener in whose queue the server side `embryo` waits, where that can be told: the one
 * whose queue the kernel shows it in (accept_queues.ts), or else the only listener that takes
 * connections to its address, or, of a SO_REUSEPORT group (listeners bound to that very
 * address), the only member with connections waiting (sock_diag shows a listener's queue length,
 * not which connections are in it).
 */
function queueHolder(embryo: TcpDiag, all: TcpDiag[], kq: KernelQueues): TcpDiag | undefined {
  const listeners = listenersOf(embryo, all);
  if (typeof kq !== "string") {
    const key = endpoint(embryo.peer);
    return listeners.find((l) =>
      kq.get(l.inode)?.peers.some((p) => peerEndpoint(p, embryo.peer) === key)
    );
  }
  if (listeners.length === 1) return listeners[0];
  const at = endpoint(listeners[0]?.address ?? embryo.address);
  if (listeners.some((l) => endpoint(l.address) !== at)) return undefined;
  const waiting = listeners.filter((l) => l.rqueue > 0);
  return waiting.length === 1 ? waiting[0] : undefined;
}

/**
 * The server sides waiting in `listener`'s queue, in the order accept() takes them: the kernel's
 * order where it is read (accept_queues.ts), else oldest first, `tie` called when two are of the
 * same age (their order cannot be told then).
 */
function queueOf(
  listener: TcpDiag,
  all: TcpDiag[],
  kq: KernelQueues,
  tie: (a: TcpDiag, b: TcpDiag) => number,
): TcpDiag[] {
  const waiting = all.filter((s) => isEmbryo(s) && queueHolder(s, all, kq) === listener);
  if (typeof kq === "string") {
    return waiting.sort((a, b) => b.sinceReceived - a.sinceReceived || tie(a, b));
  }
  const order = (s: TcpDiag) => {
    const key = endpoint(s.peer);
    return kq.get(listener.inode)!.peers.findIndex((p) => peerEndpoint(p, s.peer) === key);
  };
  return waiting.sort((a, b) => order(a) - order(b));
}

/** The kernel's accept queues, read once a dump; a string: why they cannot be read here. */
export type KernelQueues = Map<bigint, AcceptQueue> | string;
const queuesByDump = new WeakMap<object, KernelQueues>();

/** The kernel's accept queues (accept_queues.ts), read once a dump; a string: why not. */
export function kernelQueues(ctx: FileDumpContext): KernelQueues {
  const key = ctx.scope ?? ctx;
  let queues = queuesByDump.get(key);
  if (queues === undefined) queuesByDump.set(key, queues = acceptQueues());
  return queues;
}

/** A peer as the kernel's queue shows it, as `endpoint` gives a sockaddr like `like`. */
function peerEndpoint(p: QueuedPeer, like: Uint8Array): string {
  const addr = new Uint8Array(like.length);
  addr.set(like.subarray(0, 2));
  addr[2] = p.port >> 8;
  addr[3] = p.port & 0xff;
  if (familyOf(like) === AF.INET) addr.set(p.v4, 4);
  else addr.set(p.v6, 8);
  return endpoint(addr);
}

/**
 * Refuses (through `refuse`, saying `lost`) a listener whose connections cannot be told from
 * those of the other listeners of its port (`shared`): listeners at another address of the same
 * port (a wildcard one and a specific one), a member of its SO_REUSEPORT group outside the dump
 * (the restore could not steer the connections past it), or other members with connections
 * waiting too.
 */
function refuseSharedPort(
  ctx: FileDumpContext,
  listener: TcpDiag,
  shared: TcpDiag[],
  lost: string,
  refuse: (why: string) => never,
  kq: KernelQueues,
): void {
  const elsewhere = shared.filter((l) => endpoint(l.address) !== endpoint(listener.address));
  if (elsewhere.length) {
    refuse(
      `${lost}, sharing its port with ${elsewhere.length} listener(s) at another address ` +
        `(${elsewhere.map((l) => formatAddress(l.address)).join(", ")}): which of them a ` +
        `connection waits in cannot be told`,
    );
  }
  const holders = socketHolders(ctx);
  const name = (l: TcpDiag) => {
    const h = holders.get(l.inode);
    return `socket:[${l.inode}]` + (h ? ` (fd ${h.fd} of process ${h.pid})` : "");
  };
  for (const l of shared) {
    if (holders.has(l.inode)) continue;
    const outside = ctx.outside?.holders(`socket:[${l.inode}]`).filter((h) => !h.tool) ?? [];
    refuse(
      `${lost}, in a SO_REUSEPORT group with ${name(l)}, held by ` +
        (outside.length ? outside.map(describeHolder).join(", ") : "no process found") +
        ` outside the dump: the restore could not steer the connections to this listener ` +
        `past it (dump that process too)`,
    );
  }
  const waiting = shared.filter((l) => l.rqueue > 0);
  // Where the kernel's queues are read, each member's connections are told apart.
  if (waiting.length && typeof kq === "string") {
    refuse(
      `${lost}, while ${waiting.length} other listener(s) of its SO_REUSEPORT group ` +
        `(${waiting.map(name).join(", ")}) have connections waiting too: which queue each ` +
        `connection waits in cannot be told (sock_diag shows how many wait, not which; ${kq})`,
    );
  }
}

/**
 * The inodes of the clients of a listening TCP socket's `queued` connections not accepted yet,
 * in order; refuses (through `refuse`) a listener whose connections cannot come back waiting.
 */
export function tcpListenerPending(
  fd: Fd,
  ctx: FileDumpContext,
  queued: number,
  refuse: (why: string) => never,
): bigint[] {
  const all = sockets(ctx);
  const listener = all.find((s) => s.inode === fd.inode && s.state === TCP_STATE.LISTEN);
  const lost = `with ${queued} connection(s) not yet accepted`;
  if (!listener) refuse(`${lost}, which sock_diag does not show (another network namespace?)`);
  const shared = all.filter((l) =>
    l !== listener && l.state === TCP_STATE.LISTEN &&
    familyOf(l.address) === familyOf(listener.address) &&
    (listensAt(l.address, listener.address) || listensAt(listener.address, l.address))
  );
  const kq = kernelQueues(ctx);
  if (typeof kq !== "string") {
    const mine = kq.get(listener.inode);
    if (mine?.truncated) {
      refuse(`${lost}: more than the ${mine.peers.length} the tool reads of a queue`);
    }
  }
  if (shared.length) refuseSharedPort(ctx, listener, shared, lost, refuse, kq);
  const queue = queueOf(listener, all, kq, (a, b) =>
    refuse(
      `${lost}, of which two (from ${formatAddress(a.peer)} and ${formatAddress(b.peer)}) ` +
        `came within one clock tick: their order in the queue cannot be told (${kq})`,
    ));
  if (queue.length !== queued) {
    refuse(
      `${lost}, of which sock_diag shows ${queue.length} waiting (established, or shut down ` +
        `by their client): the others cannot be told`,
    );
  }
  const holders = socketHolders(ctx);
  return queue.map((embryo, i) => {
    const which = `${lost}: #${i + 1} from ${formatAddress(embryo.peer)}`;
    const client = otherEnd(embryo, all, false);
    if (client?.inode === 0n) {
      refuse(`${which}, whose client closed its socket already (it would be lost)`);
    }
    const holder = client && holders.get(client.inode);
    if (!client || !holder) {
      refuse(
        `${which}, a peer outside the dump (${
          client ? "a process not dumped" : "another host or network namespace"
        }): ` +
          `its side of the handshake is not in the image and cannot be made again (CRIU ` +
          `refuses it too)`,
      );
    }
    // A server side in CLOSE_WAIT counts its client's FIN as a byte not read.
    const unread = embryo.rqueue - (embryo.state === TCP_STATE.CLOSE_WAIT ? 1 : 0);
    if (unread || embryo.wqueue || client.rqueue || client.wqueue) {
      refuse(
        `${which} (fd ${holder.fd} of process ${holder.pid}), which has sent data the server has ` +
          `not read: only accept() can read it, and accepting it would take it out of the ` +
          `listener's queue for good (the dump must leave the process as it was if it fails)`,
      );
    }
    if (client.state !== CLIENT_STATE[embryo.state]) {
      refuse(
        `${which} (fd ${holder.fd} of process ${holder.pid}), which is in state ` +
          `${tcpStateName(client.state)} (kept: established, or shut for sending once its FIN ` +
          `was acknowledged)`,
      );
    }
    return client.inode;
  });
}

/** What dispatch.ts has read of a TCP client whose connection waits in a listener's queue. */
export interface WaitingTcp {
  /** "IPv4 TCP" …, for messages. */
  what: string;
  family: number;
  address: Uint8Array;
  peer: Uint8Array;
  /** `TCP_STATE.ESTABLISHED`, or `FIN_WAIT2` once it shut down sending. */
  state: number;
  /** Its options, read where it is or from a copy (socket_copy.ts). */
  reader: OptionReader;
}

/** Dumps the client of a TCP connection waiting in its listener's queue (`place`). */
export function dumpTcpPending(
  fd: Fd,
  ctx: FileDumpContext,
  s: WaitingTcp,
  place: PendingPlace,
): TcpPendingEntry {
  const sock = `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${fd.target})`;
  const listener = socketHolders(ctx).get(place.listener);
  if (!listener) throw new DumpError(`${sock}: its listener is not in the dump`);
  return {
    id: fd.fileId,
    kind: "tcp-pending",
    flags: fd.flags,
    family: s.family,
    inode: fd.inode,
    listener: place.listener,
    address: s.address,
    peer: s.peer,
    ...(s.state === TCP_STATE.FIN_WAIT2 ? { shutWrite: true } : {}),
    options: changedOptions(s.reader, s.family, SOCK.STREAM, IPPROTO.TCP, sock),
    description: `${s.what} ${formatAddress(s.address)} waiting in the queue of ` +
      `${formatAddress(s.peer)} (socket:[${place.listener}], fd ${listener.fd} of process ` +
      `${listener.pid}), #${place.position + 1}`,
  };
}

// ---- Restore ----

/** How long a restored client's handshake with its restored listener may take. */
const HANDSHAKE_MS = 10_000;
/** More than a clock tick (4 ms at HZ=250, 10 ms at HZ=100): what the queue's order is told by. */
const TICK_MS = 12;

/** Connects client `fd` (the tool's `copy`) again and waits until its handshake is done. */
function connectClient(e: TcpPendingEntry, ctx: FileRestoreContext, fd: number, copy: number) {
  const r = ctx.injector.raw(SYS.connect, fd, ctx.put(e.peer), e.peer.length);
  if (r < 0n && r !== BigInt(-Errno.EINPROGRESS)) {
    throw new RestoreError(
      `${e.description}: cannot connect to ${formatAddress(e.peer)} again (errno ${-r})`,
    );
  }
  const [ready] = pollFds([copy], POLL.OUT, HANDSHAKE_MS);
  const err = tryGetsockopt(copy, SOL.SOCKET, SO.ERROR, 4);
  const code = typeof err === "number" ? -err : readI32(err);
  if (!ready || code) {
    throw new RestoreError(
      `${e.description}: connecting to ${formatAddress(e.peer)} again ` +
        (code ? `failed (errno ${code})` : `did not finish within ${HANDSHAKE_MS / 1000} s`),
    );
  }
  if (e.shutWrite) {
    const r = tryShutdown(copy, SHUT.WR);
    if (r < 0) throw new RestoreError(`${e.description}: shutdown failed (errno ${-r})`);
  }
  ctx.injector.call("fcntl", fd, F.SETFL, e.flags & SETFL_MASK);
  // The next one a clock tick later: a dump of the restored queue tells their order again.
  pauseThread(TICK_MS);
}

function openPending(e: TcpPendingEntry, ctx: FileRestoreContext): number {
  const type = SOCK.STREAM | SOCK.NONBLOCK;
  const fd = Number(injectRaw(ctx, "socket", SYS.socket, e.family, type, IPPROTO.TCP));
  try {
    for (const o of e.options) setOption(ctx, fd, o);
    // The dumped client's own end may linger in TIME_WAIT on this very address (its process was
    // ended by the dump): bound with SO_REUSEADDR, which is then given back as it was.
    const reuse = intOption(e.options, "SO_REUSEADDR") ?? 0;
    const setReuse = (v: number) =>
      ctx.injector.raw(SYS.setsockopt, fd, SOL.SOCKET, SO.REUSEADDR, ctx.put(int32(v)), 4);
    if (!reuse) setReuse(1);
    const r = ctx.injector.raw(SYS.bind, fd, ctx.put(e.address), e.address.length);
    if (!reuse) setReuse(0);
    if (r < 0n) {
      throw new RestoreError(
        `${e.description}: cannot bind ${formatAddress(e.address)} (errno ${-r}` +
          (r === BigInt(-Errno.EADDRINUSE) ? ": in use" : "") + ")",
      );
    }
  } catch (err) {
    abandonFd(ctx, fd, e.description, err);
  }
  awaitConnect(ctx, fd, e.id, e.inode, {
    listener: e.listener,
    description: e.description,
    connect: (at, _address, copy) => connectClient(e, ctx, at, copy),
  });
  return fd;
}

/** Clients of TCP connections not accepted yet: made at once, connected once all are made. */
export const tcpPendingHandler: FileHandler<TcpPendingEntry> = {
  kind: "tcp-pending",
  fields: {
    family: "whole",
    inode: "whole",
    listener: "whole",
    address: "bytes",
    peer: "bytes",
    shutWrite: { optional: "bool" },
    options: SOCKET_OPTIONS,
    description: "text",
  },
  fdKinds: [], // dispatch.ts dumps them; found by entry kind at restore
  dump(fd: Fd): TcpPendingEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: tcp-pending entries come from dispatch.ts`,
    );
  },
  check(e: TcpPendingEntry): string | null {
    return e.family === AF.INET || e.family === AF.INET6
      ? null
      : `${e.description}: family ${e.family} is not IPv4 (2) or IPv6 (10)`;
  },
  open: openPending,
  finish(_e: TcpPendingEntry, _fd: number, ctx: FileRestoreContext): void {
    // Restored alone (no scope): its listener is in this process, made by now.
    if (!ctx.scope) settlePending(ctx, true);
  },
  release: (scope) => settlePending(scope, true),
  abort: (scope) => settlePending(scope, false),
};

/** `v` as a C int. */
const int32 = (v: number) => new Uint8Array(new Int32Array([v]).buffer);
