/**
 * UNIX stream and seqpacket connections that wait in a listener's queue, not accepted yet, when
 * both ends are in the dump: the client's socket (entry kind "unix-pending") and its place in the
 * listener's queue (the listener's `pending`, standalone.ts).
 *
 * Dump. The server side of such a connection (the "embryo") has no descriptor and no inode until
 * accept() gives it one, so sock_diag shows the client with a peer of inode 0; the listener's
 * UNIX_DIAG_ICONS lists its clients' inodes in the order accept() takes them
 * (diag.ts `unixPendingPlaces`). The client is kept with its options, its shutdown state and the
 * credentials its process had when dumped (the accepted end's SO_PEERCRED is its connecter's);
 * the listener with its clients' inodes in order (a ghost listener whose path was removed too:
 * its clients connect before the path goes again). Refused, naming the fd: a listener whose path
 * now names another file (its clients could not connect to it), a client whose listener
 * no process of the dump holds (or the other way round), a client closed since it connected
 * (inode 0: what it sent cannot be told), a client that had bound an address of its own, and a
 * client that has sent data not read yet: it waits in the embryo's queue, which only accept()
 * can read, and an injected accept would take the connection out of the queue for good, so a
 * dump that fails or leaves the process running would not leave it as it was (CRIU refuses it
 * too).
 *
 * Restore. The client is a fresh socket (O_NONBLOCK while it connects); once every process is
 * made (release, before the ghosts' paths go), each listener's clients connect again in their
 * order (pending_queue.ts), each from inside its own process (SO_PEERCRED names that pid) with
 * the dumped effective uid and gid put on the connecting thread for the call, to the listener's
 * absolute path or abstract name. The connection then waits in the restored listener's queue as
 * it did; the client's options, shutdown and file status flags go on after the connect
 * (SO_PASSCRED set before it would bind the client to an abstract name).
 */
import { AF, F, SETFL_MASK, SK_SHUTDOWN, SOCK, SYS } from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import { statusField } from "../../inspect/procfs.ts";
import type { FileEntry } from "../../image/schema.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "../types.ts";
import { asIds, injectRaw } from "../util.ts";
import { describeHolder } from "../outside_peers.ts";
import { formatAddress } from "./address.ts";
import { type PendingPlace, unixDiag, unixPendingPlaces } from "./diag.ts";
import { changedOptions, setOption, SOCKET_OPTIONS, type SocketOption } from "./options.ts";
import { type ConnectedUnix, SHUT_HOW, socketHolders } from "./unix_pair.ts";
import { awaitConnect, settlePending } from "./pending_queue.ts";

/** The client end of a UNIX connection waiting in its listener's queue. */
export interface UnixPendingEntry extends FileEntry {
  kind: "unix-pending";
  /** SOCK_STREAM 1, SOCK_SEQPACKET 5. */
  type: number;
  /** This end's inode when dumped. */
  inode: bigint;
  /** The listener's inode when dumped (its entry's `pending` lists this end's inode). */
  listener: bigint;
  /** The listener's raw sockaddr, as getpeername gave it, for messages. */
  listenerAddress: Uint8Array;
  /** sk_shutdown: 1 receiving is shut down, 2 sending is. */
  shutdown: number;
  /** Effective uid and gid of the process that held it: the accepted end's SO_PEERCRED. */
  uid: number;
  gid: number;
  /** Options that differ from a fresh socket's, as options.ts keeps them. */
  options: SocketOption[];
  /** "UNIX stream waiting in the queue of /tmp/x.sock (socket:[123])", for messages. */
  description: string;
}

// ---- Dump ----

// Where every connection not accepted yet waits, read once a dump (every process is frozen).
const placesByDump = new WeakMap<object, Map<bigint, PendingPlace>>();

/** Where the client socket with this inode waits, not accepted yet; undefined: it does not. */
export function unixPendingPlace(inode: bigint, ctx: FileDumpContext): PendingPlace | undefined {
  const key = ctx.scope ?? ctx;
  let places = placesByDump.get(key);
  if (!places) placesByDump.set(key, places = unixPendingPlaces());
  return places.get(inode);
}

/** " (held by cat 456 (fd 3))" for a socket a process outside the dump holds, when one does. */
function outsideHolder(inode: bigint, ctx: FileDumpContext): string {
  const h = ctx.outside?.holders(`socket:[${inode}]`)[0];
  return h ? ` (held by ${describeHolder(h)})` : "";
}

/** Why the client with this inode cannot be kept waiting in its queue; null when it can. */
function clientProblem(inode: bigint): string | null {
  const d = unixDiag(inode);
  if (!d) return "sock_diag does not show it (another network namespace?)";
  if (d.wqueue > 0 || d.rqueue > 0) {
    return "has sent data the server has not read: it waits in the connection's queue, which " +
      "only accept() can read, and accepting it would take it out of the listener's queue for " +
      "good (the dump must leave the process as it was if it fails)";
  }
  return null;
}

/**
 * The inodes of the clients of a listening UNIX socket's connections not accepted yet, in order;
 * refuses (through `refuse`) one that cannot come back waiting there.
 */
export function listenerPending(
  fd: Fd,
  ctx: FileDumpContext,
  refuse: (why: string) => never,
): bigint[] {
  const icons = unixDiag(fd.inode)?.icons ?? [];
  const holders = socketHolders(ctx);
  return icons.map((icon, i) => {
    const inode = BigInt(icon);
    const which = `its connection #${i + 1} not yet accepted`;
    if (!icon) {
      refuse(
        `with ${which} from a client that closed its end (what it sent cannot be told; it would ` +
          `be lost)`,
      );
    }
    const holder = holders.get(inode);
    if (!holder) {
      refuse(
        `with ${which} from socket:[${inode}] outside the dump${outsideHolder(inode, ctx)}: ` +
          `tardigrade keeps such a connection only with its client (it would be lost)`,
      );
    }
    const why = clientProblem(inode);
    if (why) {
      refuse(
        `with ${which} from socket:[${inode}] (fd ${holder.fd} of process ${holder.pid}) ` +
          `that ${why}`,
      );
    }
    return inode;
  });
}

/**
 * Dumps the client of a connection waiting in its listener's queue (`place`), refusing one that
 * cannot come back waiting there.
 */
export function dumpUnixPending(
  fd: Fd,
  ctx: FileDumpContext,
  s: ConnectedUnix,
  place: PendingPlace,
): UnixPendingEntry {
  const sock = `fd ${fd.fd} of process ${fd.pid}: ${s.what} socket (${fd.target})`;
  const to = `${formatAddress(s.peer)} (socket:[${place.listener}])`;
  const refuse = (why: string): never => {
    throw new DumpError(
      `${sock}, connected to ${to} and not yet accepted, ${why}; a policy can skip it`,
    );
  };
  const listener = socketHolders(ctx).get(place.listener);
  if (!listener) {
    return refuse(
      `waits in the queue of a listener outside the dump${
        outsideHolder(place.listener, ctx)
      }: tardigrade keeps such a connection only with its listener`,
    );
  }
  if (s.address) refuse(`is bound to ${formatAddress(s.address)} itself`);
  const why = clientProblem(fd.inode);
  if (why) refuse(why);
  const ids = (name: string): number => Number(statusField(fd.pid, name)?.split(/\s+/)[1] ?? 0);
  return {
    id: fd.fileId,
    kind: "unix-pending",
    flags: fd.flags,
    type: s.type,
    inode: fd.inode,
    listener: place.listener,
    listenerAddress: s.peer,
    shutdown: unixDiag(fd.inode)?.shutdown ?? 0,
    uid: ids("Uid"),
    gid: ids("Gid"),
    options: changedOptions(s.reader, AF.UNIX, s.type, 0, sock),
    description: `${s.what} waiting in the queue of ${to} (fd ${listener.fd} of process ` +
      `${listener.pid}), #${place.position + 1}`,
  };
}

// ---- Restore ----

/** Connects client `fd` to the listener at `address`, then gives it its options and state. */
function connectClient(
  e: UnixPendingEntry,
  ctx: FileRestoreContext,
  fd: number,
  address: Uint8Array,
): void {
  // In its own process, with the ids it had: the accepted end's SO_PEERCRED.
  const r = asIds(
    ctx,
    e.uid,
    e.gid,
    () => ctx.injector.raw(SYS.connect, fd, ctx.put(address), address.length),
  );
  if (r < 0n) {
    throw new RestoreError(
      `${e.description}: cannot connect to ${formatAddress(address)} again (errno ${-r})`,
    );
  }
  for (const o of e.options) setOption(ctx, fd, o);
  const how = SHUT_HOW[e.shutdown & (SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND)];
  if (how !== undefined) injectRaw(ctx, "shutdown", SYS.shutdown, fd, how);
  ctx.injector.call("fcntl", fd, F.SETFL, e.flags & SETFL_MASK);
}

function openPending(e: UnixPendingEntry, ctx: FileRestoreContext): number {
  const fd = Number(injectRaw(ctx, "socket", SYS.socket, AF.UNIX, e.type | SOCK.NONBLOCK, 0));
  awaitConnect(ctx, fd, e.id, e.inode, {
    listener: e.listener,
    description: e.description,
    connect: (at, address) => connectClient(e, ctx, at, address),
  });
  return fd;
}

/** Clients of UNIX connections not accepted yet: made at once, connected once all are made. */
export const unixPendingHandler: FileHandler<UnixPendingEntry> = {
  kind: "unix-pending",
  fields: {
    type: "whole",
    inode: "whole",
    listener: "whole",
    listenerAddress: "bytes",
    shutdown: "whole",
    uid: "whole",
    gid: "whole",
    options: SOCKET_OPTIONS,
    description: "text",
  },
  fdKinds: [], // dispatch.ts dumps them; found by entry kind at restore
  dump(fd: Fd): UnixPendingEntry {
    throw new DumpError(
      `fd ${fd.fd} of process ${fd.pid}: unix-pending entries come from dispatch.ts`,
    );
  },
  check(e: UnixPendingEntry): string | null {
    return e.type === SOCK.STREAM || e.type === SOCK.SEQPACKET
      ? null
      : `${e.description}: type ${e.type} is not stream (1) or seqpacket (5)`;
  },
  open: openPending,
  finish(_e: UnixPendingEntry, _fd: number, ctx: FileRestoreContext): void {
    // Restored alone (no scope): its listener is in this process, made by now.
    if (!ctx.scope) settlePending(ctx, true);
  },
  release: (scope) => settlePending(scope, true),
  abort: (scope) => settlePending(scope, false),
};
