/**
 * Datagrams queued on a named UNIX datagram socket (one that comes back on its own,
 * standalone.ts), each with its sender's address and credentials.
 *
 * Dump, inside the frozen target (queue.ts): the queue is walked with MSG_PEEK, each datagram with
 * its sender's address (msg_name: unnamed, a path or an abstract name) and, while SO_PASSCRED is
 * turned on for the walk (then put back), the SCM_CREDENTIALS it carries: pid 0 with the overflow
 * ids means it carries none (no side had SO_PASSCRED when it was sent). A sender pid outside the
 * dump is kept with its start time, so that a restore can tell it is still the same process.
 * Descriptors in flight (SCM_RIGHTS): the peek installs copies of them in the target; each is
 * dumped by the fd table as an open file of the process (`FileDumpContext.dumpInFlight`, by its
 * kind's handler): one entry for one open file, also where a descriptor of the process, or of one
 * dumped before, has it too, or a message carries it twice; the message keeps the file ids, and
 * the copies are closed again whatever happens. Refused: a file in flight that a process dumped
 * after this one holds too (the restore would make it there, after this process needs it), and
 * credentials whose pid this namespace cannot see or that ended.
 *
 * Restore, after the socket is bound and before it connects (a connected datagram socket takes
 * datagrams from its peer only): the tool sends each datagram to the socket's address again from a
 * socket of its own, so the program reads the same sender: unnamed, a socket the restore made at
 * that address already (its copy, taken when it was bound), or a socket the tool binds there for
 * the while (a path it made is unlinked again). Credentials go with SCM_CREDENTIALS (root may give
 * any pid, uid and gid), files in flight with SCM_RIGHTS (each one the fd table has at a
 * descriptor, takes from a process made before, or makes once by its handler:
 * `FileRestoreContext.openInFlight`; the tool sends a copy). Refused: a sender address some process outside the image is bound to, a
 * relative sender path that no socket of the image holds, credentials of a process outside the
 * image that ended, and credentials at all in a new pid namespace (the tool would name the pid as
 * its own namespace sees it).
 */
import {
  AF,
  close,
  Errno,
  MSG,
  pidfdGetfd,
  SOCK,
  tryBind,
  trySendMessage,
  trySocket,
  type Ucred,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import { tryReadStat } from "../../inspect/procfs.ts";
import type { FieldType } from "../../image/validate.ts";
import type { FileDumpContext, FileRestoreContext } from "../types.ts";
import { inDump, injectClose } from "../util.ts";
import { formatAddress, unixAddress, unixPath } from "./address.ts";
import { peekQueue, QueuePeeker, withRoomFor } from "./queue.ts";
import type { SocketReader } from "./socket_copy.ts";
import type { TargetSocket } from "./target_socket.ts";

/** One datagram waiting to be read. */
export interface QueuedDatagram {
  data: Uint8Array;
  /** The sender's raw address (two bytes for an unnamed sender). */
  sender: Uint8Array;
  /** The SCM_CREDENTIALS it carries, absent when it carries none. */
  credentials?: Credentials;
  /** The open files of the process it carries (SCM_RIGHTS), by id; absent when none. */
  files?: number[];
}

/** SCM_CREDENTIALS of a queued message; `startTime` (stat field 22) of a sender outside the dump. */
export type Credentials = Ucred & { startTime?: bigint };

/** The image fields of `Credentials`. */
export const CREDENTIALS: FieldType = {
  map: { pid: "whole", uid: "whole", gid: "whole", startTime: { optional: "whole" } },
};

/** The image fields of a queue of datagrams. */
export const QUEUED_DATAGRAMS: FieldType = {
  list: {
    map: {
      data: "bytes",
      sender: "bytes",
      credentials: { optional: CREDENTIALS },
      files: { optional: { list: "whole" } },
    },
  },
};

// What credentials read as when a datagram carries none: no pid, the overflow uid and gid.
const OVERFLOW_ID = 65534;

/**
 * What the image keeps of the credentials a queued message shows (undefined: it carries none);
 * refuses those that could not be given again. `name` describes the socket.
 */
export function credentialsOf(
  c: Ucred | null,
  ctx: FileDumpContext,
  name: string,
): Credentials | undefined {
  if (!c || (c.pid === 0 && c.uid === OVERFLOW_ID && c.gid === OVERFLOW_ID)) return undefined;
  if (c.pid === 0) {
    throw new DumpError(
      `${name} has a message queued whose credentials name a process this pid namespace ` +
        `cannot see; they could not be given again; a policy can skip it`,
    );
  }
  if (inDump(c.pid, ctx)) return { pid: c.pid, uid: c.uid, gid: c.gid };
  const st = tryReadStat(c.pid);
  if (!st) {
    throw new DumpError(
      `${name} has a message queued with the credentials of process ${c.pid}, which has ` +
        `ended: they could not be given again; a policy can skip it`,
    );
  }
  return { pid: c.pid, uid: c.uid, gid: c.gid, startTime: st.starttime };
}

/**
 * The datagrams queued on the named UNIX datagram socket `socket` (fd `fd`), read without
 * taking them; `name` describes it in messages.
 */
export async function dumpDatagramQueue(
  fd: Fd,
  ctx: FileDumpContext,
  socket: TargetSocket,
  reader: SocketReader,
  name: string,
): Promise<QueuedDatagram[]> {
  refuseUnkeptInFlight(fd, ctx, name);
  const peeker = new QueuePeeker(socket, name, true);
  try {
    const messages = peeker.walk(reader, () => peekQueue(peeker, SOCK.DGRAM, false)).result;
    const out: QueuedDatagram[] = [];
    for (const m of messages) {
      const datagram: QueuedDatagram = {
        data: m.data,
        sender: m.sender ?? new Uint8Array([AF.UNIX, 0]),
      };
      const credentials = credentialsOf(m.credentials, ctx, name);
      if (credentials) datagram.credentials = credentials;
      if (m.fds.length) datagram.files = await dumpInFlight(ctx, m.fds, peeker);
      out.push(datagram);
    }
    return out;
  } finally {
    // The copies the peeks installed go, whatever happened: the process finds its table as it was.
    peeker.closeInstalled();
  }
}

/** Refuses a queue with descriptors in flight where the dump cannot keep them. */
export function refuseUnkeptInFlight(fd: Fd, ctx: FileDumpContext, name: string): void {
  const passed = Number((fd.info as Record<string, string>)["scm_fds"] ?? 0);
  if (passed > 0 && !ctx.dumpInFlight) {
    throw new DumpError(
      `${name} has ${passed} file descriptor(s) queued in messages (SCM_RIGHTS), which ` +
        `tardigrade cannot keep here; a policy can skip it`,
    );
  }
}

/** The file ids of the descriptors in flight a peek installed at `fds` (dumped by the table). */
export async function dumpInFlight(
  ctx: FileDumpContext,
  fds: readonly number[],
  peeker: QueuePeeker,
): Promise<number[]> {
  const ids: number[] = [];
  for (const n of fds) ids.push(await ctx.dumpInFlight!(n, peeker.installed, peeker.name));
  return ids;
}

/**
 * Makes the open files `ids` in flight again and hands the tool a copy of each (the target's
 * descriptor closed again), to send with a message; the caller closes the copies.
 */
export function takeInFlight(
  ctx: FileRestoreContext,
  ids: readonly number[],
  what: string,
): number[] {
  const copies: number[] = [];
  try {
    for (const id of ids) {
      if (!ctx.openInFlight) {
        throw new RestoreError(`${what}: descriptors in flight cannot be made here`);
      }
      const fd = ctx.openInFlight(id);
      try {
        copies.push(pidfdGetfd(ctx.pidfd, fd));
      } finally {
        injectClose(ctx, fd);
      }
    }
  } catch (err) {
    for (const c of copies) close(c);
    throw err;
  }
  return copies;
}

// ---- Restore ----

// The tool's copies of the named UNIX datagram sockets a restore has made, by address.
const senders = new WeakMap<object, Map<string, number>>();

const addressKey = (a: Uint8Array): string => [...a].join(",");

function sendersOf(ctx: FileRestoreContext): Map<string, number> {
  const scope = ctx.scope ?? ctx;
  let m = senders.get(scope);
  if (!m) senders.set(scope, m = new Map());
  return m;
}

/**
 * Keeps a copy of the restored socket at target fd `fd`, bound to `address`, so that datagrams
 * it had sent and that wait in another socket's queue can be sent from it again.
 */
export function rememberSender(ctx: FileRestoreContext, fd: number, address: Uint8Array): void {
  const m = sendersOf(ctx);
  const key = addressKey(address);
  if (!m.has(key)) m.set(key, pidfdGetfd(ctx.pidfd, fd));
}

/** Closes the copies a restore kept (`scope` as the hooks of registry.ts give it). */
export function forgetSenders(scope: object): void {
  for (const fd of senders.get(scope)?.values() ?? []) close(fd);
  senders.delete(scope);
}

/** Whether credentials can be given again by the tool: a reason not to, or null. */
export function credentialsProblem(
  c: Credentials | null | undefined,
  ctx: FileRestoreContext,
): string | null {
  if (!c) return null;
  if (ctx.tasks?.ownNamespace) {
    return `a queued message carries the credentials of process ${c.pid}, which a restore in ` +
      `a new pid namespace cannot give again`;
  }
  const restored = ctx.tasks ? ctx.tasks.restored(c.pid) : c.pid === ctx.pid;
  if (restored || c.startTime === undefined) return null;
  if (tryReadStat(c.pid)?.starttime !== c.startTime) {
    return `a queued message carries the credentials of process ${c.pid} (not in the image), ` +
      `which has ended`;
  }
  return null;
}

/** A socket of the tool's sending from `sender`, and how to let go of it. */
function senderSocket(
  ctx: FileRestoreContext,
  sender: Uint8Array,
  cwd: string,
  what: string,
): { fd: number; done(): void } {
  const kept = sendersOf(ctx).get(addressKey(sender));
  if (kept !== undefined) return { fd: kept, done: () => {} };
  const s = trySocket(AF.UNIX, SOCK.DGRAM | SOCK.CLOEXEC, 0);
  if (s < 0) throw new RestoreError(`${what}: socket failed (errno ${-s})`);
  if (sender.length <= 2) return { fd: s, done: () => close(s) };
  let path = unixPath(sender);
  let bindTo = sender;
  if (path && !path.startsWith("/")) {
    close(s);
    throw new RestoreError(
      `${what}: a queued datagram came from ${path}, a relative path no socket of the image is ` +
        `bound to (relative to ${cwd}?), which tardigrade cannot bind again`,
    );
  }
  if (path) {
    const at = unixAddress(path);
    if (at) bindTo = at;
    try {
      // A socket file nobody is bound to any more (a dead sender's) is in the way.
      if (Deno.lstatSync(path).isSocket) Deno.removeSync(path);
    } catch { /* nothing there */ }
  }
  const r = tryBind(s, bindTo);
  if (r < 0) {
    close(s);
    throw new RestoreError(
      `${what}: a queued datagram came from ${formatAddress(sender)}, which tardigrade cannot ` +
        (r === -Errno.EADDRINUSE
          ? `bind to send it again: a process outside the image is bound to it`
          : `bind to send it again (errno ${-r})`),
    );
  }
  return {
    fd: s,
    done: () => {
      close(s);
      if (path) {
        try {
          Deno.removeSync(path);
        } catch { /* already gone */ }
        path = "";
      }
    },
  };
}

/** Whether datagrams can be queued again: a reason not to, or null (checked before any is sent). */
export function datagramsProblem(
  queue: readonly QueuedDatagram[],
  ctx: FileRestoreContext,
): string | null {
  for (const d of queue) {
    const why = credentialsProblem(d.credentials, ctx);
    if (why) return why;
  }
  return null;
}

/**
 * Queues `queue` again on the restored socket bound to `address` (an absolute or abstract UNIX
 * address the tool can send to), each from its sender; `what` names the socket in messages.
 */
export function refillDatagrams(
  ctx: FileRestoreContext,
  queue: readonly QueuedDatagram[],
  address: Uint8Array,
  cwd: string,
  what: string,
): void {
  const why = datagramsProblem(queue, ctx);
  if (why) throw new RestoreError(`${what}: ${why}`);
  // Each sender once, with room for every datagram at once (they stay charged to it until read).
  const from = new Map<string, { fd: number; done(): void }>();
  const all = queue.map((d) => d.data);
  const sendAll = (rest: string[]): void => {
    if (rest.length) {
      withRoomFor(from.get(rest[0])!.fd, all, what, () => sendAll(rest.slice(1)));
      return;
    }
    for (const d of queue) {
      const { pid, uid, gid } = d.credentials ?? { pid: 0, uid: 0, gid: 0 };
      const credentials = d.credentials ? { pid, uid, gid } : null;
      const fd = from.get(addressKey(d.sender))!.fd;
      const files = takeInFlight(ctx, d.files ?? [], what);
      let sent: number;
      try {
        sent = trySendMessage(fd, d.data, address, credentials, MSG.DONTWAIT | MSG.NOSIGNAL, files);
      } finally {
        for (const c of files) close(c);
      }
      if (sent !== d.data.length) {
        throw new RestoreError(
          `${what}: queueing a datagram of ${d.data.length} bytes from ` +
            `${formatAddress(d.sender)} again failed (` +
            (sent < 0 ? `errno ${-sent})` : `${sent} sent)`),
        );
      }
    }
  };
  try {
    for (const d of queue) {
      const key = addressKey(d.sender);
      if (!from.has(key)) from.set(key, senderSocket(ctx, d.sender, cwd, what));
    }
    sendAll([...from.keys()]);
  } finally {
    for (const s of from.values()) s.done();
  }
}
