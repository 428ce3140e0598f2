/**
 * Tasks: clone flags (process creation, threads, namespaces), task flags, and the scheduler's
 * per-thread settings (policy and priorities with `struct sched_attr`, nice, CPU affinity), which
 * the tool reads and sets on any thread by its tid.
 */
import { addressOf } from "./libc.ts";
import { close, fstat, ioctl, open, syscall } from "./syscalls.ts";
import { O } from "./fcntl.ts";

/** clone(2)/clone3 flags. */
export const CLONE = {
  VM: 0x100n,
  FS: 0x200n,
  FILES: 0x400n,
  SIGHAND: 0x800n,
  PIDFD: 0x1000n,
  PTRACE: 0x2000n,
  VFORK: 0x4000n,
  PARENT: 0x8000n,
  THREAD: 0x10000n,
  NEWNS: 0x20000n,
  SYSVSEM: 0x40000n,
  SETTLS: 0x80000n,
  PARENT_SETTID: 0x100000n,
  CHILD_CLEARTID: 0x200000n,
  NEWCGROUP: 0x2000000n,
  NEWUTS: 0x4000000n,
  NEWIPC: 0x8000000n,
  NEWUSER: 0x10000000n,
  NEWPID: 0x20000000n,
  NEWNET: 0x40000000n,
  NEWTIME: 0x80n,
} as const;

/** ioctl_ns(2): the namespace a user or pid namespace was made in, as a new descriptor. */
export const NS_GET_PARENT = 0xb702n;

/**
 * The inode of the namespace the user or pid namespace at `path` (/proc/PID/ns/user) was made
 * in (NS_GET_PARENT).
 */
export function parentNamespaceInode(path: string): bigint {
  const fd = open(path, O.RDONLY | O.CLOEXEC);
  try {
    const parent = ioctl(fd, NS_GET_PARENT, new Uint8Array(8), "ioctl(NS_GET_PARENT)");
    try {
      return fstat(parent).ino;
    } finally {
      close(parent);
    }
  } finally {
    close(fd);
  }
}

/** What pthread_create passes: a thread sharing everything with its process. */
export const CLONE_THREAD_FLAGS = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD |
  CLONE.SYSVSEM;

/** Task flags (`flags`, field 9 of /proc/PID/stat). */
export const PF = { KTHREAD: 0x00200000 } as const;

/** `rseq` flags: a restore drops the registration a new process inherits from the stub. */
export const RSEQ_FLAG = { UNREGISTER: 1 } as const;

/** Scheduling policies (`sched_attr.sched_policy`). */
export const SCHED = { OTHER: 0, FIFO: 1, RR: 2, BATCH: 3, IDLE: 5, DEADLINE: 6 } as const;

/** `sched_attr.sched_flags`. */
export const SCHED_FLAG = {
  RESET_ON_FORK: 0x01,
  RECLAIM: 0x02,
  DL_OVERRUN: 0x04,
  KEEP_POLICY: 0x08,
  KEEP_PARAMS: 0x10,
  UTIL_CLAMP_MIN: 0x20,
  UTIL_CLAMP_MAX: 0x40,
} as const;

/** `SCHED_ATTR_SIZE_VER1`: `struct sched_attr` with the utilization clamps. */
export const SCHED_ATTR_SIZE = 56;

/** `struct sched_attr`, as sched_getattr(2) fills it and sched_setattr(2) takes it. */
export interface SchedAttr {
  /** SCHED_* policy. */
  policy: number;
  /** SCHED_FLAG_* (RESET_ON_FORK, and for SCHED_DEADLINE its own). */
  flags: number;
  /** Nice value of a fair policy. */
  nice: number;
  /** Static priority of a real-time policy (1..99), 0 otherwise. */
  priority: number;
  /** SCHED_DEADLINE runtime; for fair policies the time slice the thread asks for (ns). */
  runtime: bigint;
  /** SCHED_DEADLINE deadline (ns). */
  deadline: bigint;
  /** SCHED_DEADLINE period (ns). */
  period: bigint;
  /** Utilization clamp, minimum (0..1024). */
  utilMin: number;
  /** Utilization clamp, maximum (0..1024). */
  utilMax: number;
}

/** sched_getattr(2) of thread `tid`. */
export function schedGetattr(tid: number): SchedAttr {
  const buf = new Uint8Array(SCHED_ATTR_SIZE);
  syscall("sched_getattr", tid, addressOf(buf), SCHED_ATTR_SIZE, 0);
  const v = new DataView(buf.buffer);
  return {
    policy: v.getUint32(4, true),
    flags: Number(v.getBigUint64(8, true)),
    nice: v.getInt32(16, true),
    priority: v.getUint32(20, true),
    runtime: v.getBigUint64(24, true),
    deadline: v.getBigUint64(32, true),
    period: v.getBigUint64(40, true),
    utilMin: v.getUint32(48, true),
    utilMax: v.getUint32(52, true),
  };
}

/** sched_setattr(2) of thread `tid`. */
export function schedSetattr(tid: number, a: SchedAttr): void {
  const buf = new Uint8Array(SCHED_ATTR_SIZE);
  const v = new DataView(buf.buffer);
  v.setUint32(0, SCHED_ATTR_SIZE, true);
  v.setUint32(4, a.policy, true);
  v.setBigUint64(8, BigInt(a.flags), true);
  v.setInt32(16, a.nice, true);
  v.setUint32(20, a.priority, true);
  v.setBigUint64(24, a.runtime, true);
  v.setBigUint64(32, a.deadline, true);
  v.setBigUint64(40, a.period, true);
  v.setUint32(48, a.utilMin, true);
  v.setUint32(52, a.utilMax, true);
  syscall("sched_setattr", tid, addressOf(buf), 0);
}

/** `PRIO_PROCESS` of getpriority/setpriority: the "process" is one thread, by tid. */
const PRIO_PROCESS = 0;

/** The nice value of thread `tid` (its static priority, whatever its policy). */
export function getNice(tid: number): number {
  // The raw syscall answers 20 - nice, so that no answer looks like an error.
  return 20 - Number(syscall("getpriority", PRIO_PROCESS, tid));
}

/** Sets the nice value of thread `tid` (kept underneath a real-time policy too). */
export function setNice(tid: number, nice: number): void {
  syscall("setpriority", PRIO_PROCESS, tid, nice);
}

/** Bytes of CPU mask the affinity calls use: room for 8192 CPUs. */
const CPU_MASK_BYTES = 1024;

/** The CPUs thread `tid` may run on (sched_getaffinity), in ascending order. */
export function getAffinity(tid: number): number[] {
  const mask = new Uint8Array(CPU_MASK_BYTES);
  const size = Number(syscall("sched_getaffinity", tid, CPU_MASK_BYTES, addressOf(mask)));
  const cpus: number[] = [];
  for (let i = 0; i < size * 8; i++) if (mask[i >> 3] & (1 << (i & 7))) cpus.push(i);
  return cpus;
}

/** Lets thread `tid` run on `cpus` only (sched_setaffinity). */
export function setAffinity(tid: number, cpus: number[]): void {
  const mask = new Uint8Array(CPU_MASK_BYTES);
  for (const cpu of cpus) mask[cpu >> 3] |= 1 << (cpu & 7);
  syscall("sched_setaffinity", tid, CPU_MASK_BYTES, addressOf(mask));
}
