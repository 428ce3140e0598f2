/**
 * A container's IPC namespace. The restore gives the container a fresh one, with its System V
 * message queues and semaphore sets made again (sysv_ipc.ts); the objects not carried yet (System
 * V shared memory segments, POSIX message queues) are refused at dump time, naming what it holds.
 * They are counted inside the container's init: `SHM_INFO` of shmctl, and a listing of the mqueue
 * file system it mounted, or of one made in its namespace (fsopen, never mounted anywhere).
 */
import {
  CLONE,
  cstring,
  errnoName,
  FSCONFIG,
  IPC_INFO,
  IPC_INFO_SIZE,
  O,
  SYS,
} from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import { readMountInfo } from "../inspect/procfs.ts";

/** The number of System V shared memory segments of the IPC namespace of `inj`'s process. */
function shmCount(inj: Injector): number {
  const at = inj.put(new Uint8Array(IPC_INFO_SIZE), 0);
  inj.call("shmctl", 0, IPC_INFO.shm.cmd, at);
  return new DataView(inj.get(IPC_INFO.shm.countAt, 4).buffer.slice(0)).getInt32(0, true);
}

/**
 * The POSIX message queues of the IPC namespace of container `pid` (whose init `inj` runs in),
 * by name: read where the container mounted its mqueue file system, else in one made in it.
 */
function mqueueNames(inj: Injector, pid: number): string[] {
  const mounted = readMountInfo(pid).find((m) => m.fsType === "mqueue");
  if (mounted) {
    // Read by the tool: the init may lack the capability fsopen needs (an OCI runtime's).
    return [...Deno.readDirSync(`/proc/${pid}/root${mounted.mountPoint}`)].map((e) => e.name);
  }
  return madeMqueueNames(inj);
}

/** The POSIX message queues of the IPC namespace of `inj`'s process, in an mqueue made there. */
function madeMqueueNames(inj: Injector): string[] {
  const str = (s: string, at: number) => inj.put(cstring(s), at);
  const ctx = inj.raw(SYS.fsopen, str("mqueue", 0), 0);
  if (ctx < 0n) {
    throw new DumpError(
      `cannot list the POSIX message queues of its IPC namespace (fsopen: ` +
        `${errnoName(Number(-ctx))})`,
    );
  }
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
 * Refuses the IPC namespace of container `pid` (whose init `inj` runs in) when it holds objects
 * the restore would not make again.
 */
export function checkIpcCarried(inj: Injector, pid: number): void {
  const held: string[] = [];
  const segments = shmCount(inj);
  if (segments) held.push(`${segments} System V shared memory segments`);
  const queues = mqueueNames(inj, pid);
  if (queues.length) held.push(`POSIX message queues (${queues.join(", ")})`);
  if (held.length) {
    throw new DumpError(
      `the IPC namespace of container ${pid} holds ${held.join(" and ")}, which tardigrade ` +
        `does not dump yet inside a container`,
    );
  }
}

/** Gives the process `inj` runs in a fresh, empty IPC namespace. */
export function makeIpc(inj: Injector): void {
  inj.call("unshare", CLONE.NEWIPC);
}
