/**
 * System V shared memory segments (shmget/shmat), as a process has them attached.
 *
 * A segment lives in the IPC namespace, not in the process: it outlives a killed process unless
 * it was marked for removal (IPC_RMID, then it goes with its last attach). Its mapping shows as
 * `/SYSV<key> (deleted)` and the mapping's inode is the shmid.
 *
 * Dump: the segment's key, id, size, mode, owner and removal mark come from /proc/sysvipc/shm;
 * its present pages are stored as for other shared memory.
 *
 * Restore: a segment that still exists with the same id, key and size is attached again as it is
 * (its contents are the live ones, which other processes may share). One that is gone is made
 * again with the same id (kernel.shm_next_id), key, owner and mode, filled from the image, and
 * marked for removal again if it was. Either way the target gets an fd on the segment's file
 * (through an attach and /proc/self/map_files) and its mappings are mmap()ed from that fd: the
 * kernel's shm_mmap makes each one a real attach (shmdt works, nattch counts it).
 */
import { addressOf, Errno, syscall, SyscallError } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";

/** A segment as /proc/sysvipc/shm lists it. */
export interface SysvSegment {
  /** The IPC key (0: IPC_PRIVATE). */
  key: number;
  shmid: number;
  /** Permission bits. */
  mode: number;
  size: number;
  uid: number;
  gid: number;
  /** Marked for removal (IPC_RMID): it goes with its last attach. */
  removed: boolean;
}

/** SHM_DEST in the mode /proc shows. */
const SHM_DEST = 0o1000;
const IPC_CREAT = 0o1000, IPC_EXCL = 0o2000, IPC_RMID = 0, IPC_SET = 1, IPC_STAT = 2;
const SHMID_DS_SIZE = 112;

/** Every segment of the tool's IPC namespace, by shmid. */
export function sysvSegments(): Map<number, SysvSegment> {
  const out = new Map<number, SysvSegment>();
  let text = "";
  try {
    text = Deno.readTextFileSync("/proc/sysvipc/shm");
  } catch {
    return out;
  }
  for (const line of text.split("\n").slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10) continue;
    const mode = parseInt(f[2], 8);
    out.set(Number(f[1]), {
      key: Number(f[0]),
      shmid: Number(f[1]),
      mode: mode & 0o777,
      size: Number(f[3]),
      uid: Number(f[7]),
      gid: Number(f[8]),
      removed: (mode & SHM_DEST) !== 0,
    });
  }
  return out;
}

/** Whether a mapping's /proc name is a System V segment's. */
export function isSysvName(name: string | null | undefined): boolean {
  return !!name?.startsWith("/SYSV");
}

/**
 * Makes a segment that is gone again, with its old id: kernel.shm_next_id picks the id of the
 * next shmget in this IPC namespace. Returns false when it still exists as it was (nothing to
 * make, nothing to fill); throws when its id now belongs to another segment.
 */
export function ensureSegment(want: SysvSegment): boolean {
  const now = sysvSegments().get(want.shmid);
  if (now) {
    if (now.key === want.key && now.size === want.size) return false;
    throw new RestoreError(
      `System V shared memory ${want.shmid} is now another segment (key ${now.key}, ` +
        `${now.size} bytes; the image has key ${want.key}, ${want.size} bytes)`,
    );
  }
  Deno.writeTextFileSync("/proc/sys/kernel/shm_next_id", String(want.shmid));
  let id: number;
  try {
    id = Number(syscall("shmget", want.key, want.size, IPC_CREAT | IPC_EXCL | want.mode));
  } catch (err) {
    Deno.writeTextFileSync("/proc/sys/kernel/shm_next_id", "-1");
    if (err instanceof SyscallError && err.errno === Errno.EEXIST) {
      throw new RestoreError(
        `System V shared memory key ${want.key} is taken by another segment (the image's was ` +
          `id ${want.shmid})`,
      );
    }
    throw err;
  }
  if (id !== want.shmid) {
    removeSegment(id);
    throw new RestoreError(
      `System V shared memory ${want.shmid} could not be made again with its id (got ${id})`,
    );
  }
  setOwner(id, want);
  return true;
}

/** Gives a segment the owner and mode it had (it was made by the tool, as root). */
function setOwner(shmid: number, want: SysvSegment): void {
  const ds = new Uint8Array(SHMID_DS_SIZE);
  syscall("shmctl", shmid, IPC_STAT, addressOf(ds));
  const v = new DataView(ds.buffer);
  v.setUint32(4, want.uid, true); // shm_perm.uid
  v.setUint32(8, want.gid, true); // shm_perm.gid
  v.setUint16(20, want.mode, true); // shm_perm.mode
  syscall("shmctl", shmid, IPC_SET, addressOf(ds));
}

/** IPC_RMID: the segment goes once nothing has it attached. */
export function removeSegment(shmid: number): void {
  try {
    syscall("shmctl", shmid, IPC_RMID, 0);
  } catch { /* already gone */ }
}
