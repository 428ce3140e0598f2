/**
 * A container's IPC namespace. The restore gives the container a fresh, empty one; the objects
 * one may hold (System V shared memory segments, semaphore sets and message queues, POSIX message
 * queues) are not carried yet, so the dump refuses a namespace that holds any, naming what it
 * holds. They are counted inside the container's init: `*_INFO` of shmctl, semctl and msgctl, and
 * a listing of a mqueue file system made in its namespace (fsopen, never mounted anywhere).
 */
import { CLONE, FSCONFIG, IPC_INFO, IPC_INFO_SIZE, O, SYS } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";

/** What `*_INFO` counts, as the refusal names it. */
const OBJECT_NAMES = {
  shm: "System V shared memory segments",
  sem: "System V semaphore sets",
  msg: "System V message queues",
} as const;

/** The number of objects of each System V kind the IPC namespace of `inj`'s process holds. */
function sysvCounts(inj: Injector): Record<keyof typeof IPC_INFO, number> {
  const at = inj.put(new Uint8Array(IPC_INFO_SIZE), 0);
  const count = (kind: keyof typeof IPC_INFO) => {
    const { cmd, countAt } = IPC_INFO[kind];
    if (kind === "sem") inj.call("semctl", 0, 0, cmd, at);
    else inj.call(kind === "shm" ? "shmctl" : "msgctl", 0, cmd, at);
    return new DataView(inj.get(countAt, 4).buffer.slice(0)).getInt32(0, true);
  };
  return { shm: count("shm"), sem: count("sem"), msg: count("msg") };
}

/** The POSIX message queues of the IPC namespace of `inj`'s process, by name. */
function mqueueNames(inj: Injector): string[] {
  const str = (s: string, at: number) => inj.put(new TextEncoder().encode(s + "\0"), at);
  const ctx = inj.raw(SYS.fsopen, str("mqueue", 0), 0);
  if (ctx < 0n) throw new DumpError(`cannot list its POSIX message queues (fsopen: ${-ctx})`);
  const fds = [ctx];
  try {
    inj.call("fsconfig", ctx, FSCONFIG.CMD_CREATE, 0, 0, 0);
    const mount = inj.call("fsmount", ctx, 0, 0);
    fds.push(mount);
    // The mount's descriptor is a path only: its root opened to be read.
    const root = inj.call("openat", mount, str(".", 0), O.RDONLY | O.DIRECTORY | O.CLOEXEC, 0);
    fds.push(root);
    const names: string[] = [];
    const size = 4096;
    for (;;) {
      const n = Number(inj.call("getdents64", root, inj.put(new Uint8Array(size), 0), size));
      if (n === 0) return names;
      const buf = inj.get(0, n);
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

/**
 * Refuses the IPC namespace of container `pid` (whose init `inj` runs in) when it holds objects,
 * which the restore would not make again.
 */
export function checkIpcEmpty(inj: Injector, pid: number): void {
  const counts = sysvCounts(inj);
  const held = (Object.keys(counts) as (keyof typeof counts)[])
    .filter((k) => counts[k] > 0)
    .map((k) => `${counts[k]} ${OBJECT_NAMES[k]}`);
  const queues = mqueueNames(inj);
  if (queues.length) held.push(`POSIX message queues (${queues.join(", ")})`);
  if (held.length) {
    throw new DumpError(
      `the IPC namespace of container ${pid} holds ${held.join(", ")}: IPC objects of a ` +
        `container are not dumped yet`,
    );
  }
}

/** Gives the process `inj` runs in a fresh, empty IPC namespace. */
export function makeIpc(inj: Injector): void {
  inj.call("unshare", CLONE.NEWIPC);
}
