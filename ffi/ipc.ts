/** System V shared memory: shmget/shmat/shmctl flags and the owner fields of `struct shmid64_ds`. */
import { addressOf } from "./libc.ts";
import { syscall } from "./syscalls.ts";

/** `shmget` flags and `shmctl` commands common to System V IPC. */
export const IPC = { CREAT: 0o1000, EXCL: 0o2000, RMID: 0, SET: 1, STAT: 2 } as const;

/**
 * The `*_INFO` commands of shmctl, msgctl and semctl, which say how many objects an IPC namespace
 * holds (asked inside a process of it), and where the count is in the struct each fills:
 * `shm_info.used_ids`, `msginfo.msgpool` and `seminfo.semusz` (ints).
 */
export const IPC_INFO = {
  shm: { cmd: 14, countAt: 0 },
  msg: { cmd: 12, countAt: 0 },
  sem: { cmd: 19, countAt: 28 },
} as const;

/** The largest of `struct shm_info`, `struct msginfo` and `struct seminfo` (x86_64). */
export const IPC_INFO_SIZE = 48;

/**
 * `shmat` flags (`RDONLY`, `EXEC`), and `DEST`: the mode bit /proc/sysvipc/shm shows for a
 * segment marked for removal.
 */
export const SHM = { RDONLY: 0o10000, EXEC: 0o100000, DEST: 0o1000 } as const;

/** `struct shmid64_ds` (x86_64). */
const SHMID_DS_SIZE = 112;

/** The owner and permission bits of a segment (`shm_perm`). */
export interface ShmPerm {
  uid: number;
  gid: number;
  /** Permission bits. */
  mode: number;
}

/** Gives segment `shmid` another owner and mode: shmctl IPC_STAT, then IPC_SET. */
export function shmSetPerm(shmid: number, perm: ShmPerm): void {
  const ds = new Uint8Array(SHMID_DS_SIZE);
  syscall("shmctl", shmid, IPC.STAT, addressOf(ds));
  const v = new DataView(ds.buffer);
  v.setUint32(4, perm.uid, true); // shm_perm.uid
  v.setUint32(8, perm.gid, true); // shm_perm.gid
  v.setUint16(20, perm.mode, true); // shm_perm.mode
  syscall("shmctl", shmid, IPC.SET, addressOf(ds));
}
