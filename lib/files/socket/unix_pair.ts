/**
 * Connected UNIX sockets whose peer is dumped too: socketpairs (asyncio's self-pipe, a parent and
 * a child talking) and stream connections accepted from a listener, with the data queued in them.
 *
 * Dump: dispatch.ts hands over every connected UNIX stream or seqpacket socket and every datagram
 * socket connected to an unnamed peer. sock_diag gives the peer's inode and the shutdown state;
 * the peer is in the dump when a process of the dump holds `socket:[PEER]` among its fds.
 * Otherwise the dump is refused, naming the process outside that holds the peer (outside_peers.ts),
 * as for a connection its listener has not accepted yet: one end brought back alone would be cut
 * off from a process that still runs; declared external, it is handed in at restore instead. A socket whose peer was
 * closed (no peer inode, and for a stream a full shutdown) is kept: it comes back as a socketpair
 * half whose other half is closed again, after its data. The receive queue is read without
 * consuming it, inside the frozen target: SO_PEEK_OFF set to 0 makes successive MSG_PEEK reads
 * walk the queue, and is put back as it was afterwards, also on error. Stream bytes are kept as
 * one run (one for each writer's credentials), datagram and seqpacket messages one by one
 * (MSG_TRUNC says a message goes on in the next read), each with the SCM_CREDENTIALS it carries
 * (SO_PASSCRED is on for the walk; unix_datagrams.ts keeps them), sent with it again at restore;
 * SO_PASSCRED and a filter go on again only once no more is sent through either end. Descriptors
 * in flight (SCM_RIGHTS) are kept as unix_datagrams.ts keeps them: with their message, or in a
 * stream with the write that carried them, its bytes found exactly (queue.ts), so that a reader
 * gets them with the same byte as before. No pidfd_getfd at dump
 * (target_socket.ts says why).
 *
 * Restore, as pipe.ts restores a pipe: ends are keyed by the pair's two inodes within one restore
 * context. The first end opened makes the pair with an injected socketpair() and takes both halves
 * into the tool (pidfd_getfd); the other end, in the same or another process, is the tool's copy
 * handed over with an injected pidfd_getfd on the tool, so both ends are the very sockets one
 * socketpair() made. Each end gets its options, its receive queue refilled by sending from the
 * tool's copy of its peer (the sender's SO_SNDBUF raised meanwhile, as the original may have filled
 * the queue through a larger buffer), SO_PEEK_OFF and O_NONBLOCK. Once both ends are in place the
 * shutdown states go on (not before: a shut-down end cannot be sent to) and the tool lets go of its
 * copies; an end whose peer was closed, or whose peer a policy skipped, is left with a closed peer.
 *
 * Limits. Both ends come back unnamed: a connection accepted from a listener at /tmp/x.sock had
 * that address on one side (getsockname of the accepted end, getpeername of the client), but
 * socketpair() cannot give an address a listener holds, and connecting to the restored listener
 * would need two processes to connect and accept in step. The addresses stay in the image for
 * messages. A
 * zero-length message that was already peeked with SO_PEEK_OFF, or that ends the queue of a
 * seqpacket socket shut down for reading, is not seen (the kernel skips or cannot tell it apart).
 * An out-of-band byte (MSG_OOB) in a stream is refused.
 */
import {
  AF,
  close,
  F,
  MSG,
  pidfdGetfd,
  SETFL_MASK,
  SHUT,
  SK_SHUTDOWN,
  SO,
  SOCK,
  SOL,
  SYS,
  trySendMessage,
  tryShutdown,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { abandonFd, handToTarget, i32, injectClose, injectRaw, injectSocketpair } from "../util.ts";
import { describeHolder, externalHint } from "../outside_peers.ts";
import { formatAddress } from "./address.ts";
import { unixDiag } from "./diag.ts";
import { peekQueue, QueuePeeker, withRoomFor } from "./queue.ts";
import {
  CREDENTIALS,
  type Credentials,
  credentialsOf,
  credentialsProblem,
  dumpInFlight,
  refuseUnkeptInFlight,
  takeInFlight,
} from "./unix_datagrams.ts";
import {
  changedOptions,
  isAfterQueue,
  type OptionReader,
  setOption,
  setToolOption,
  SOCKET_OPTIONS,
  type SocketOption,
} from "./options.ts";
import { TargetSocket } from "./target_socket.ts";

/** One end of a connected UNIX socket pair. */
export interface UnixPairEntry extends FileEntry {
  kind: "unix-pair";
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  type: number;
  /** This end's inode when dumped. */
  inode: bigint;
  /** The peer's inode when dumped (the two entries of a pair name each other); 0: peer closed. */
  peer: bigint;
  /** This end's raw sockaddr if it had one (accepted from a named listener), else null. */
  address: Uint8Array | null;
  /** The peer's raw sockaddr if it had one, else null. */
  peerAddress: Uint8Array | null;
  /** sk_shutdown: 1 receiving is shut down, 2 sending is. */
  shutdown: number;
  /** What this end had to read: a stream's bytes as one run; one item per message otherwise. */
  queue: Uint8Array[];
  /** SO_PEEK_OFF, -1 when not in use. */
  peekOffset: number;
  /**
   * The SCM_CREDENTIALS each item of `queue` carries (null: none; a stream's run is split where
   * its writers' differ); absent when none carries any.
   */
  credentials?: (Credentials | null)[];
  /** The open files of the process each message of `queue` carries (SCM_RIGHTS), by id. */
  files?: number[][];
  /** Options that differ from a fresh socket's, as options.ts keeps them. */
  options: SocketOption[];
  /** "UNIX stream connected to socket:[123] (fd 4 of process 99)", for messages. */
  description: string;
}

/** What dispatch.ts has read already of a connected UNIX socket. */
export interface ConnectedUnix {
  /** "UNIX stream" …, for messages. */
  what: string;
  type: number;
  /** getsockname, null when unnamed. */
  address: Uint8Array | null;
  /** getpeername (two bytes for an unnamed peer). */
  peer: Uint8Array;
  /** Its options, read where it is or from a copy (socket_copy.ts). */
  reader: OptionReader;
}

// ---- Dump ----

// Which process of a dump holds each socket inode; read once per dump, as every process is frozen.
const holdersByDump = new WeakMap<object, Map<bigint, { pid: number; fd: number }>>();

/** Which process of the dump holds each socket inode (one fd of it), read once a dump. */
export function socketHolders(ctx: FileDumpContext): Map<bigint, { pid: number; fd: number }> {
  const key = ctx.scope ?? ctx;
  let holders = holdersByDump.get(key);
  if (holders) return holders;
  holders = new Map();
  if (ctx.heldFds) {
    // Read already for the dump's plan: 80,000 links are not read again.
    for (const fd of ctx.heldFds) {
      const m = fd.target.match(/^socket:\[(\d+)\]$/);
      if (m && !holders.has(BigInt(m[1]))) holders.set(BigInt(m[1]), { pid: fd.pid, fd: fd.fd });
    }
    holdersByDump.set(key, holders);
    return holders;
  }
  for (const pid of ctx.pids ?? [ctx.pid]) {
    for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
      try {
        const m = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`).match(/^socket:\[(\d+)\]$/);
        if (m && !holders.has(BigInt(m[1]))) holders.set(BigInt(m[1]), { pid, fd: Number(e.name) });
      } catch { /* closed meanwhile: cannot happen while frozen */ }
    }
  }
  holdersByDump.set(key, holders);
  return holders;
}

/** ` (cat 456 (fd 3) does)`: who outside the dump holds socket `peer`, when the scan finds one. */
function outsideHolderOf(peer: bigint, ctx: FileDumpContext): string {
  const h = ctx.outside?.holders(`socket:[${peer}]`)[0];
  if (!h) return "";
  return h.tool ? ` (tardigrade itself, pid ${h.pid}, does)` : ` (${describeHolder(h)} does)`;
}

/**
 * Dumps a connected UNIX socket whose peer is in this dump (or was closed), with its receive
 * queue; refuses, naming the fd, one connected to a socket no process of the dump holds.
 */
export async function dumpUnixPair(
  fd: Fd,
  ctx: FileDumpContext,
  s: ConnectedUnix,
): Promise<UnixPairEntry> {
  const on = s.address ? ` on ${formatAddress(s.address)}` : "";
  const sock = `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${fd.target}${on})`;
  const peerName = s.peer.length > 2 ? formatAddress(s.peer) : "an unnamed peer";
  const diag = unixDiag(fd.inode);
  if (!diag || diag.peer === null) {
    throw new DumpError(
      `${sock} is connected to ${peerName}, but sock_diag does not show its peer (another ` +
        `network namespace?); a policy can skip it`,
    );
  }
  const peer = BigInt(diag.peer);
  const holder = peer ? socketHolders(ctx).get(peer) : undefined;
  // No peer inode: the peer was closed (which shuts a stream down both ways), or it is a
  // connection still waiting in its listener's accept queue, held by no process yet.
  const closed = !peer &&
    (s.type === SOCK.DGRAM || diag.shutdown === (SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND));
  if (!holder && !closed) {
    const where = peer
      ? `(socket:[${peer}]) outside the dump: no process of this dump holds that end` +
        outsideHolderOf(peer, ctx)
      : `outside the dump, in its listener's queue of connections not accepted yet`;
    throw new DumpError(
      `${sock} is connected to ${peerName} ${where}, and tardigrade restores a connected ` +
        `UNIX socket only together with its peer; a policy can skip it, or ` +
        externalHint(fd.target),
    );
  }
  if (holder && unixDiag(peer)?.peer !== Number(fd.inode)) {
    throw new DumpError(
      `${sock} is connected to socket:[${peer}] (fd ${holder.fd} of process ${holder.pid}), ` +
        `which is connected elsewhere; a policy can skip it`,
    );
  }
  refuseUnkeptInFlight(fd, ctx, sock);

  // With each message's credentials (SO_PASSCRED on for the walk).
  const peeker = new QueuePeeker(new TargetSocket(ctx.frozen.injector, fd.fd), sock, true);
  const shutRd = (diag.shutdown & SK_SHUTDOWN.RCV) !== 0;
  let queue: Uint8Array[], credentials: (Credentials | null)[], savedOffset: number;
  const files: number[][] = [];
  try {
    const walked = peeker.walk(s.reader, () => peekQueue(peeker, s.type, shutRd));
    savedOffset = walked.savedOffset;
    queue = walked.result.map((m) => m.data);
    credentials = walked.result.map((m) => credentialsOf(m.credentials, ctx, sock) ?? null);
    for (const m of walked.result) files.push(await dumpInFlight(ctx, m.fds, peeker));
  } finally {
    // The copies the peeks installed go, whatever happened: the process finds its table as it was.
    peeker.closeInstalled();
  }

  const to = holder
    ? `socket:[${peer}] (fd ${holder.fd} of process ${holder.pid})`
    : "a closed peer";
  const entry: UnixPairEntry = {
    id: fd.fileId,
    kind: "unix-pair",
    flags: fd.flags,
    type: s.type,
    inode: fd.inode,
    peer,
    address: s.address,
    peerAddress: s.peer.length > 2 ? s.peer : null,
    shutdown: diag.shutdown,
    queue,
    peekOffset: savedOffset,
    options: changedOptions(s.reader, AF.UNIX, s.type, 0, sock),
    description: `${s.what}${on} connected to ${to}`,
  };
  if (credentials.some((c) => c)) entry.credentials = credentials;
  if (files.some((f) => f.length)) entry.files = files;
  return entry;
}

// ---- Restore ----

// A pair being restored: the tool's copy of each half (by dumped inode) until both are placed.
interface PairState {
  halves: Map<bigint, number>;
  placed: UnixPairEntry[];
  closed: boolean;
}

const restoring = new WeakMap<object, Map<string, PairState>>();

function pairsOf(ctx: FileRestoreContext | object): Map<string, PairState> {
  const scope = (ctx as FileRestoreContext).scope ?? ctx;
  let m = restoring.get(scope);
  if (!m) restoring.set(scope, m = new Map());
  return m;
}

const pairKey = (e: UnixPairEntry): string =>
  e.peer && e.peer < e.inode ? `${e.peer}:${e.inode}` : `${e.inode}:${e.peer}`;

function closeState(st: PairState): void {
  if (st.closed) return;
  st.closed = true;
  // No more sends through either half: the options that would have changed them go on now.
  for (const e of st.placed) {
    for (const o of e.options) {
      if (!isAfterQueue(o)) continue;
      const r = setToolOption(st.halves.get(e.inode)!, o);
      if (r < 0) throw new RestoreError(`${e.description}: setsockopt(${o.name}): errno ${-r}`);
    }
  }
  for (const fd of st.halves.values()) close(fd);
}

/**
 * Closes every socket the tool still holds for `scope` (each pair lets go of its own once both
 * ends are placed; this is for a restore that stops early, or a peer a policy skipped).
 */
function releaseUnixPairs(scope: object): void {
  for (const st of restoring.get(scope)?.values() ?? []) closeState(st);
  restoring.delete(scope);
}

/**
 * Puts `e.queue` back into e's receive queue, sent from the tool's copy of its peer, each message
 * with the credentials it carried.
 */
function refill(e: UnixPairEntry, sender: number, ctx: FileRestoreContext): void {
  if (!e.queue.length) return;
  for (const c of e.credentials ?? []) {
    const why = credentialsProblem(c, ctx);
    if (why) throw new RestoreError(`${e.description}: ${why}`);
  }
  withRoomFor(sender, e.queue, e.description, () => {
    for (const [i, message] of e.queue.entries()) {
      const c = e.credentials?.[i];
      const credentials = c ? { pid: c.pid, uid: c.uid, gid: c.gid } : null;
      const files = takeInFlight(ctx, e.files?.[i] ?? [], e.description);
      // A stream's run may take several sends; a message goes in one.
      let off = 0;
      do {
        const part = message.subarray(off);
        let sent: number;
        try {
          sent = trySendMessage(
            sender,
            part,
            null,
            credentials,
            MSG.DONTWAIT | MSG.NOSIGNAL,
            files,
          );
        } finally {
          for (const c of files.splice(0)) close(c);
        }
        if (sent < 0) {
          throw new RestoreError(`${e.description}: refilling its queue failed (errno ${-sent})`);
        }
        off += sent;
      } while (off < message.length);
    }
  });
}

/** sk_shutdown → how to shutdown() to get it. */
export const SHUT_HOW: Record<number, number> = {
  [SK_SHUTDOWN.RCV]: SHUT.RD,
  [SK_SHUTDOWN.SEND]: SHUT.WR,
  [SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND]: SHUT.RDWR,
};

/** Both ends are placed (or the peer never will be): shutdown states, then the tool lets go. */
function settle(st: PairState): void {
  for (const e of st.placed) {
    const how = SHUT_HOW[e.shutdown & (SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND)];
    if (how === undefined) continue;
    const r = tryShutdown(st.halves.get(e.inode)!, how);
    if (r < 0) throw new RestoreError(`${e.description}: shutdown failed (errno ${-r})`);
  }
  closeState(st);
}

function openUnixPair(e: UnixPairEntry, ctx: FileRestoreContext): number {
  const pairs = pairsOf(ctx);
  const key = pairKey(e);
  let st = pairs.get(key);
  let fd: number;
  if (!st) {
    const [mine, other] = injectSocketpair(ctx, AF.UNIX, e.type, 0);
    st = { halves: new Map(), placed: [], closed: false };
    pairs.set(key, st);
    st.halves.set(e.inode, pidfdGetfd(ctx.pidfd, mine));
    st.halves.set(e.peer, pidfdGetfd(ctx.pidfd, other));
    // No spare descriptor in the target, where the orchestrator could dup2 over it.
    injectClose(ctx, other);
    fd = mine;
  } else {
    if (st.closed) throw new RestoreError(`${e.description}: opened after its pair was settled`);
    fd = handToTarget(ctx, st.halves.get(e.inode)!, e.description);
  }
  try {
    for (const o of e.options) if (!isAfterQueue(o)) setOption(ctx, fd, o);
    refill(e, st.halves.get(e.peer)!, ctx);
    if (e.peekOffset !== -1) {
      const v = ctx.put(i32(e.peekOffset));
      injectRaw(ctx, "setsockopt(SO_PEEK_OFF)", SYS.setsockopt, fd, SOL.SOCKET, SO.PEEK_OFF, v, 4);
    }
    ctx.injector.call("fcntl", fd, F.SETFL, e.flags & SETFL_MASK);
    st.placed.push(e);
    if (!e.peer || st.placed.length === 2) settle(st);
  } catch (err) {
    abandonFd(ctx, fd, e.description, err);
  }
  return fd;
}

/** Connected UNIX sockets with their peer: socketpairs and accepted connections. */
export const unixPairHandler: FileHandler<UnixPairEntry> = {
  kind: "unix-pair",
  fields: {
    type: "whole",
    inode: "whole",
    peer: "whole",
    address: { nullable: "bytes" },
    peerAddress: { nullable: "bytes" },
    shutdown: "whole",
    queue: { list: "bytes" },
    peekOffset: "whole",
    credentials: { optional: { list: { nullable: CREDENTIALS } } },
    files: { optional: { list: { list: "whole" } } },
    options: SOCKET_OPTIONS,
    description: "text",
  },
  fdKinds: [], // dispatch.ts dumps them; found by entry kind at restore
  dump(fd: Fd): UnixPairEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: unix-pair entries come from dispatch.ts`,
    );
  },
  open: openUnixPair,
  finish(e: UnixPairEntry, _fd: number, ctx: FileRestoreContext): void {
    // Within a tree the peer may come in a later process: the scope releases it then.
    if (ctx.scope) return;
    const st = pairsOf(ctx).get(pairKey(e));
    if (st && !st.closed) settle(st);
  },
  release: releaseUnixPairs,
};
