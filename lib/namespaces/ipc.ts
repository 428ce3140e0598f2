/**
 * A container's IPC namespace as a whole. The restore gives the container a fresh one and makes
 * its objects again in it: System V message queues and semaphore sets (sysv_ipc.ts), shared
 * memory segments (shm_segments.ts) and POSIX message queues (mqueues.ts). Everything is read and
 * made by syscalls injected into the container's init: the tool never enters the namespace.
 */
import { CLONE } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { IpcEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";
import { dumpMqueues, makeMqueues, mqueuesDiffer } from "./mqueues.ts";
import { dumpShmSegments, makeShmSegments, shmSegmentsDiffer } from "./shm_segments.ts";
import { dumpSysvIpc, makeSysvIpc } from "./sysv_ipc.ts";

/**
 * The objects of the IPC namespace of a container (its init frozen, `inj` running in it);
 * undefined when it holds none.
 */
export function dumpIpc(inj: Injector): IpcEntry | undefined {
  const entry: IpcEntry = dumpSysvIpc(inj);
  const shm = dumpShmSegments(inj);
  if (shm.length) entry.shm = shm;
  const { mqueues, limits } = dumpMqueues(inj);
  if (mqueues.length) Object.assign(entry, { mqueues, mqueueLimits: limits });
  const empty = !entry.msg.length && !entry.sem.length && !entry.shm && !entry.mqueues;
  return empty ? undefined : entry;
}

/**
 * Gives the process `inj` runs in (a container's restored init) a fresh IPC namespace with
 * the objects of `entry`, checked as the dump read them (System V segments only by their ids,
 * owners and sizes until the tree attaches them: `ipcDiffers`).
 */
export function makeIpc(inj: Injector, entry?: IpcEntry): void {
  inj.call("unshare", CLONE.NEWIPC);
  if (!entry) return;
  makeSysvIpc(inj, entry);
  if (sysvText(dumpSysvIpc(inj)) !== sysvText(entry)) {
    throw new RestoreError("its System V objects did not come back as dumped");
  }
  makeShmSegments(inj, entry.shm ?? []);
  makeMqueues(inj, entry.mqueues ?? [], entry.mqueueLimits);
  const why = mqueuesDiffer(inj, entry.mqueues ?? []);
  if (why) throw new RestoreError(why);
}

/** The System V queues and sets of an entry as comparable text (message types are bigints). */
const sysvText = (ipc: Pick<IpcEntry, "msg" | "sem">) =>
  JSON.stringify(
    { msg: ipc.msg, sem: ipc.sem },
    (_k, v) => typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? [...v] : v,
  );

/**
 * How the IPC namespace of the restored container (its init `inj`, the tree made) differs from
 * `entry`, or null: its shared memory segments, now attached as they were.
 */
export function ipcDiffers(inj: Injector, entry?: IpcEntry): string | null {
  return shmSegmentsDiffer(inj, entry?.shm ?? []);
}
