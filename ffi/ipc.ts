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
 * Commands and flags for reading and making System V message queues and semaphore sets:
 * `*_STAT_ANY` take an index (0 up to what `*_INFO` returns) and return the object's id;
 * `MSG_COPY` reads message number `msgtyp` without taking it (with `IPC_NOWAIT`).
 */
export const SYSV = {
  MSG_STAT_ANY: 13,
  SHM_STAT_ANY: 15,
  SEM_STAT_ANY: 20,
  GETALL: 13,
  SETALL: 17,
  IPC_NOWAIT: 0o4000,
  MSG_COPY: 0o40000,
} as const;

/** `struct msqid64_ds` and `struct semid64_ds` (x86_64), with the offsets the tool reads. */
export const SYSV_DS = {
  size: 120,
  /** `ipc64_perm`: key (i32), uid, gid, cuid, cgid (u32), mode (u16). */
  key: 0,
  uid: 4,
  gid: 8,
  cuid: 12,
  cgid: 16,
  mode: 20,
  /** msqid64_ds: bytes queued, messages queued, the queue's capacity (u64). */
  msgCbytes: 72,
  msgQnum: 80,
  msgQbytes: 88,
  /** semid64_ds: semaphores in the set (u64). */
  semNsems: 80,
  /** shmid64_ds: the segment's size and its number of attaches (u64). */
  shmSegsz: 48,
  shmNattch: 88,
} as const;

/**
 * `shmat` flags (`RDONLY`, `EXEC`), and the mode bits /proc/sysvipc/shm and `SHM_STAT_ANY` show:
 * `DEST` for a segment marked for removal, `LOCKED` for one locked in memory (SHM_LOCK).
 */
export const SHM = { RDONLY: 0o10000, EXEC: 0o100000, DEST: 0o1000, LOCKED: 0o2000 } as const;

/**
 * `struct mq_attr` of mq_getsetattr and mq_open (x86_64): the queue's capacity in messages, the
 * largest message, the messages queued (longs); 64 bytes with the reserved words.
 */
export const MQ_ATTR = { size: 64, maxmsg: 8, msgsize: 16, curmsgs: 24 } as const;

/** The statfs type of the mqueue file system, which a POSIX message queue's descriptor is open on. */
export const MQUEUE_MAGIC = 0x19800202;

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
