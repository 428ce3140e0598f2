/**
 * A listener's queue of connections not accepted yet, made again at restore: the clients
 * (unix_pending.ts, tcp_pending.ts) and their listeners (standalone.ts) are made as their
 * processes are, and once every process is made (the scope's release) each listener's clients
 * connect in the order accept() took them, each from inside its own process through its kind's
 * `connect`, so the connections wait in the restored listener's queue as they did. A client the
 * dump's policy left out is not in the queue; a client whose listener is not in the image fails
 * the restore.
 */
import { close, pidfdGetfd } from "../../../ffi/mod.ts";
import { RestoreError } from "../../errors.ts";
import type { FileRestoreContext } from "../types.ts";
import { abandonFd } from "../util.ts";

/** A client made, waiting to connect. */
export interface WaitingClient {
  /** Its listener's inode when dumped. */
  listener: bigint;
  /** The client, for messages. */
  description: string;
  /**
   * Connects it, at target fd `fd` of its process, to the listener at `address`; `copy` is the
   * tool's descriptor of the same socket.
   */
  connect(fd: number, address: Uint8Array, copy: number): void;
}

/** A client made, with where it lives (its open file's id there) and the tool's copy of it. */
interface MadeClient extends WaitingClient {
  ctx: FileRestoreContext;
  file: number;
  copy: number;
}

/** A listener made, with its clients' inodes in order and its address. */
interface MadeListener {
  pending: readonly bigint[];
  address: Uint8Array;
  around?: AroundConnects;
}

/**
 * What a listener does around its clients' connects (a TCP listener of a SO_REUSEPORT group
 * steers them to itself: reuseport.ts): calls `connectAll`, which says how many connected.
 */
export type AroundConnects = (connectAll: () => number) => void;

interface Made {
  clients: Map<bigint, MadeClient>;
  listeners: Map<bigint, MadeListener>;
}

const madeByScope = new WeakMap<object, Made>();

function madeIn(scope: object): Made {
  let made = madeByScope.get(scope);
  if (!made) madeByScope.set(scope, made = { clients: new Map(), listeners: new Map() });
  return made;
}

/**
 * A listener of the image (inode `inode` when dumped) is made, with clients waiting (`pending`,
 * in order): they connect to `address` (for UNIX: an absolute path or an abstract name) once
 * every process is made, within `around` if given.
 */
export function awaitPendingClients(
  ctx: FileRestoreContext,
  inode: bigint,
  pending: readonly bigint[],
  address: Uint8Array,
  around?: AroundConnects,
): void {
  madeIn(ctx.scope ?? ctx).listeners.set(inode, { pending, address, around });
}

/**
 * Client socket `fd` (open file `file`, inode `inode` when dumped) is made in the target,
 * unconnected: it connects once every process is made, at its own descriptor. The tool keeps a
 * copy of it until then; on failure `fd` is closed.
 */
export function awaitConnect(
  ctx: FileRestoreContext,
  fd: number,
  file: number,
  inode: bigint,
  client: WaitingClient,
): void {
  try {
    const copy = pidfdGetfd(ctx.pidfd, fd);
    madeIn(ctx.scope ?? ctx).clients.set(inode, { ...client, ctx, file, copy });
  } catch (err) {
    abandonFd(ctx, fd, client.description, err);
  }
}

/**
 * Connects one client at its own descriptor, in place by then (the files the tool hands in are
 * done with: their channel into the process is closed).
 */
function connectClient(c: MadeClient, l: MadeListener): void {
  c.connect(c.ctx.fdOfFile(c.file), l.address, c.copy);
}

/**
 * Lets go of what the tool holds for `scope`; with `connect`, connects every client first, in
 * its listener's order.
 */
export function settlePending(scope: object, connect: boolean): void {
  const made = madeByScope.get(scope);
  madeByScope.delete(scope);
  if (!made) return;
  try {
    if (!connect) return;
    for (const c of made.clients.values()) {
      if (!made.listeners.has(c.listener)) {
        throw new RestoreError(
          `${c.description}: its listener socket:[${c.listener}] is not in the image`,
        );
      }
    }
    for (const l of made.listeners.values()) {
      const connectAll = () => {
        let connected = 0;
        for (const inode of l.pending) {
          const c = made.clients.get(inode);
          if (!c) continue;
          connectClient(c, l);
          connected++;
        }
        return connected;
      };
      if (l.around) l.around(connectAll);
      else connectAll();
    }
  } finally {
    for (const c of made.clients.values()) close(c.copy);
  }
}
