/** Tasks: clone flags (process creation, threads, namespaces) and task flags. */

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

/** What pthread_create passes: a thread sharing everything with its process. */
export const CLONE_THREAD_FLAGS = CLONE.VM | CLONE.FS | CLONE.FILES | CLONE.SIGHAND | CLONE.THREAD |
  CLONE.SYSVSEM;

/** Task flags (`flags`, field 9 of /proc/PID/stat). */
export const PF = { KTHREAD: 0x00200000 } as const;

/** `rseq` flags: a restore drops the registration a new process inherits from the stub. */
export const RSEQ_FLAG = { UNREGISTER: 1 } as const;
