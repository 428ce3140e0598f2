/**
 * The POSIX message queues of a container's IPC namespace, read and made again inside its init
 * (injected syscalls: `mq_open` names a queue of the caller's IPC namespace).
 *
 * Dump: the queues by name (a listing of an mqueue file system made in the namespace, never
 * mounted, or of the one the container mounted), each with its owner and mode (fstat), its
 * capacity and message size (mq_getsetattr), and its messages: POSIX gives no way to read one
 * without taking it, so every message is taken (in the order a receiver takes them: highest
 * priority first, then oldest) and at once sent back in that order, which leaves the queue as it
 * was; the tree is frozen, so nothing else receives or sends meanwhile. The namespace's limits
 * (/proc/sys/fs/mqueue) go with them: a queue larger than the defaults can only be made again
 * under them.
 *
 * Restore, in the fresh namespace: the limits written, each queue made with its attributes,
 * owner and mode, its messages sent with their priorities.
 *
 * Refused: a queue a process waits to be notified of (mq_notify: the registration cannot be
 * read back), messages longer than the scratch region holds.
 */
import {
  cstring,
  decodeStat,
  errnoName,
  FSCONFIG,
  MQ_ATTR,
  O,
  STAT_SIZE,
  SYS,
} from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { MqueueEntry, MqueueLimitsEntry } from "../image/schema.ts";
import { readMountInfo } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";
import { readIpcSysctl, writeIpcSysctl } from "./ipc_sysctl.ts";

/** Scratch offsets: a name, a struct, a priority, then a message (clear of ipc_sysctl.ts's). */
const NAME_AT = 0;
const STRUCT_AT = 512;
const PRIORITY_AT = 768;
const MESSAGE_AT = 4096;
/** The longest message the scratch region holds. */
const MESSAGE_MAX = 56 * 1024;

/** The limits of /proc/sys/fs/mqueue, by the entry's field. */
const LIMITS: Record<keyof MqueueLimitsEntry, string> = {
  queuesMax: "queues_max",
  msgMax: "msg_max",
  msgsizeMax: "msgsize_max",
  msgDefault: "msg_default",
  msgsizeDefault: "msgsize_default",
};

/**
 * The POSIX message queues of the IPC namespace of the container whose init `inj` runs in, by
 * name: read in an mqueue file system made in it, else (an init without the capability fsopen
 * needs, as an OCI runtime's) where the container mounted one.
 */
function mqueueNames(inj: Injector): string[] {
  const pid = inj.pid;
  const made = madeMqueueNames(inj);
  if (made) return made;
  const mounted = readMountInfo(pid).find((m) => m.fsType === "mqueue");
  if (!mounted) {
    throw new DumpError(
      `cannot list the POSIX message queues of its IPC namespace: its init may not make an ` +
        `mqueue file system, and the container mounted none`,
    );
  }
  return [...Deno.readDirSync(`/proc/${pid}/root${mounted.mountPoint}`)].map((e) => e.name);
}

/**
 * The POSIX message queues of the IPC namespace of `inj`'s process, in an mqueue made there;
 * null when it may not make one.
 */
function madeMqueueNames(inj: Injector): string[] | null {
  const str = (s: string, at: number) => inj.put(cstring(s), at);
  const ctx = inj.raw(SYS.fsopen, str("mqueue", NAME_AT), 0);
  if (ctx < 0n) return null;
  const fds = [ctx];
  try {
    inj.call("fsconfig", ctx, FSCONFIG.CMD_CREATE, 0, 0, 0);
    const mount = inj.call("fsmount", ctx, 0, 0);
    fds.push(mount);
    // The mount's descriptor is a path only: its root opened to be read.
    const root = inj.call(
      "openat",
      mount,
      str(".", NAME_AT),
      O.RDONLY | O.DIRECTORY | O.CLOEXEC,
      0,
    );
    fds.push(root);
    const names: string[] = [];
    const size = 4096;
    for (;;) {
      const n = Number(
        inj.call("getdents64", root, inj.put(new Uint8Array(size), MESSAGE_AT), size),
      );
      if (n === 0) return names;
      const buf = inj.get(MESSAGE_AT, n);
      const v = new DataView(buf.buffer, buf.byteOffset, n);
      for (let off = 0; off < n;) {
        const reclen = v.getUint16(off + 16, true);
        const raw = buf.subarray(off + 19, off + reclen);
        const name = new TextDecoder().decode(raw.subarray(0, raw.indexOf(0)));
        if (name !== "." && name !== "..") names.push(name);
        off += reclen;
      }
    }
  } finally {
    for (const fd of fds) inj.call("close", fd);
  }
}

/** Runs `body` with queue `name` open (`flags`, O_NONBLOCK) in `inj`'s process, closed after. */
function withQueue<T>(
  inj: Injector,
  name: string,
  flags: number,
  body: (fd: bigint) => T,
  mode = 0,
  attr = 0n,
): T {
  const at = inj.put(cstring(name), NAME_AT);
  const fd = inj.call("mq_open", at, flags | O.NONBLOCK | O.CLOEXEC, mode, attr);
  try {
    return body(fd);
  } finally {
    inj.call("close", fd);
  }
}

/** Sends `m` on queue `fd` of `inj`'s process. */
function send(inj: Injector, fd: bigint, m: MqueueEntry["messages"][number]): void {
  inj.call("mq_timedsend", fd, inj.put(m.data, MESSAGE_AT), m.data.length, m.priority, 0);
}

/** Queue `name` of the IPC namespace of `inj`'s process, with its messages (left in it). */
function dumpQueue(inj: Injector, name: string): MqueueEntry {
  return withQueue(inj, name, O.RDWR, (fd) => {
    // Reading the queue's file gives its state, among it who asked to be notified.
    const text = inj.put(new Uint8Array(256), STRUCT_AT);
    const n = Number(inj.call("read", fd, text, 256));
    const state = new TextDecoder().decode(inj.get(STRUCT_AT, n));
    const notified = Number(/NOTIFY_PID:\s*(\d+)/.exec(state)?.[1] ?? 0);
    if (notified) {
      throw new DumpError(
        `process ${notified} waits to be notified of POSIX message queue /${name} (mq_notify), ` +
          `which a dump cannot read back`,
      );
    }
    inj.call("fstat", fd, inj.put(new Uint8Array(STAT_SIZE), STRUCT_AT));
    const st = decodeStat(inj.get(STRUCT_AT, STAT_SIZE));
    inj.call("mq_getsetattr", fd, 0, inj.put(new Uint8Array(MQ_ATTR.size), STRUCT_AT));
    const a = new DataView(inj.get(STRUCT_AT, MQ_ATTR.size).buffer);
    const attr = (at: number) => Number(a.getBigInt64(at, true));
    const queue: MqueueEntry = {
      name,
      uid: st.uid,
      gid: st.gid,
      mode: st.mode & 0o7777,
      maxmsg: attr(MQ_ATTR.maxmsg),
      msgsize: attr(MQ_ATTR.msgsize),
      messages: [],
    };
    const count = attr(MQ_ATTR.curmsgs);
    if (count && queue.msgsize > MESSAGE_MAX) {
      throw new DumpError(
        `POSIX message queue /${name} takes messages of up to ${queue.msgsize} bytes; a dump ` +
          `reads those of up to ${MESSAGE_MAX}`,
      );
    }
    try {
      for (let i = 0; i < count; i++) {
        const buf = inj.put(new Uint8Array(8), PRIORITY_AT);
        const into = inj.put(new Uint8Array(queue.msgsize), MESSAGE_AT);
        const len = inj.raw(SYS.mq_timedreceive, fd, into, queue.msgsize, buf, 0);
        if (len < 0n) {
          throw new DumpError(
            `cannot read message ${i} of POSIX message queue /${name} (${errnoName(Number(-len))})`,
          );
        }
        queue.messages.push({
          priority: new DataView(inj.get(PRIORITY_AT, 4).buffer).getUint32(0, true),
          data: inj.get(MESSAGE_AT, Number(len)),
        });
      }
    } finally {
      // Sent back in the order taken: each priority keeps its order, and the queue is whole.
      for (const m of queue.messages) send(inj, fd, m);
    }
    return queue;
  });
}

/**
 * The POSIX message queues of the IPC namespace of the container whose init `inj` runs in, and
 * with them the namespace's limits; none: an empty list and no limits.
 */
export function dumpMqueues(inj: Injector): { mqueues: MqueueEntry[]; limits?: MqueueLimitsEntry } {
  const mqueues = mqueueNames(inj).sort().map((name) => dumpQueue(inj, name));
  if (!mqueues.length) return { mqueues };
  const limits = Object.fromEntries(
    Object.entries(LIMITS).map(([k, file]) => [k, Number(readIpcSysctl(inj, `fs/mqueue/${file}`))]),
  ) as unknown as MqueueLimitsEntry;
  return { mqueues, limits };
}

/**
 * Makes the queues of `mqueues` again in the (fresh) IPC namespace of `inj`'s process, under
 * `limits`, with their attributes, owners, modes and messages.
 */
export function makeMqueues(
  inj: Injector,
  mqueues: readonly MqueueEntry[],
  limits?: MqueueLimitsEntry,
): void {
  for (const [k, file] of Object.entries(LIMITS)) {
    if (limits) writeIpcSysctl(inj, `fs/mqueue/${file}`, limits[k as keyof MqueueLimitsEntry]);
  }
  for (const q of mqueues) {
    const attr = new DataView(new ArrayBuffer(MQ_ATTR.size));
    attr.setBigInt64(MQ_ATTR.maxmsg, BigInt(q.maxmsg), true);
    attr.setBigInt64(MQ_ATTR.msgsize, BigInt(q.msgsize), true);
    const at = inj.put(new Uint8Array(attr.buffer), STRUCT_AT);
    const flags = O.WRONLY | O.CREAT | O.EXCL;
    withQueue(
      inj,
      q.name,
      flags,
      (fd) => {
        // Created under the init's umask: owner and mode given after.
        inj.call("fchown", fd, q.uid, q.gid);
        inj.call("fchmod", fd, q.mode);
        for (const m of q.messages) send(inj, fd, m);
      },
      q.mode,
      at,
    );
  }
}

/** How the queues of the IPC namespace of `inj`'s process differ from `mqueues`, or null. */
export function mqueuesDiffer(inj: Injector, mqueues: readonly MqueueEntry[]): string | null {
  const text = (qs: readonly MqueueEntry[]) =>
    JSON.stringify(
      qs.map((q) => [
        q.name,
        q.uid,
        q.gid,
        q.mode,
        q.maxmsg,
        q.msgsize,
        q.messages.map((m) => [m.priority, [...m.data]]),
      ]),
    );
  const now = dumpMqueues(inj).mqueues;
  if (text(now) === text(mqueues)) return null;
  return `its POSIX message queues are ${now.map((q) => `/${q.name}`).join(", ") || "none"} ` +
    `with other attributes or messages than the image's`;
}
