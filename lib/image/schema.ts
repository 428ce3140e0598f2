/**
 * The entries of a process image (`process.cbor`), as the dumper writes them and the restorer
 * reads them. docs/IMAGE.md describes them for people; this file is the truth for code.
 */
import type { PageExtent } from "./mod.ts";

/** Name of the metadata file holding the root process's entry. */
export const PROCESS_META = "process";

/** Name of the metadata file of another process of the tree. */
export function processMetaName(pid: number): string {
  return `process-${pid}`;
}

/** One range of page data: `length` bytes at `offset` inside extent number `extent`. */
export interface PageRun {
  /** Address the bytes belong at (for memory objects: byte offset in the object). */
  start: bigint;
  /** Bytes in the run. */
  length: number;
  /** Index into `ProcessEntry.extents`. */
  extent: number;
  /** Byte offset inside that extent. */
  offset: number;
  /**
   * Incremental images only: CRC-32 of each 4 KiB block of the run (the last one may be
   * shorter), as little-endian u32s, so the next incremental dump finds unchanged pages
   * without reading them from this image.
   */
  checksums?: Uint8Array;
}

/** What a mapping is, as the restorer must recreate it. */
export type MappingSource =
  | { type: "anonymous" }
  /** A file reopened by path; size and mtime must not have changed. */
  | { type: "file"; path: string; size: number; mtimeMs: number; inode: bigint; dev: string }
  /** Shared anonymous memory (`/dev/zero (deleted)`, System V shm), one object per inode. */
  | { type: "shmem"; object: number }
  /** A memfd or a deleted file whose contents are stored in the image. */
  | { type: "stored-file"; object: number }
  /**
   * The ring of a Linux AIO context (`io_setup`, `/[aio] (deleted)`): made again with io_setup
   * for `events` (the ring's `nr`, its capacity) and moved to its address, which is the context
   * id the program holds.
   */
  | { type: "aio"; events: number };

/** One virtual memory area. */
export interface MappingEntry {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
  /** PROT_READ 1 | PROT_WRITE 2 | PROT_EXEC 4. */
  prot: number;
  /** MAP_SHARED (else MAP_PRIVATE). */
  shared: boolean;
  /** File offset (or offset in the shared object). */
  offset: bigint;
  /** heap, stack, anonymous, file … as the inspection SDK names it. */
  kind: string;
  /** The name /proc/PID/maps shows, for display. */
  name: string | null;
  /** Where the contents come from. */
  source: MappingSource;
  /** MAP_GROWSDOWN (VmFlags `gd`): the main stack, or another mapping made so. */
  growsDown: boolean;
  /**
   * The VmFlags a restore gives again, as smaps names them: madvise() advice (`sr`, `rr`, `dc`,
   * `wf`, `dd`, `hg`, `nh`, `mg`), locks (`lo`, `lf`), mmap() flags (`nr` MAP_NORESERVE, `ht`
   * MAP_HUGETLB, `dp` MAP_DROPPABLE), `mw` on a shared mapping that is not writable but may be
   * made so, and `sl` (mseal). lib/memory/advice.ts has the table of every flag.
   */
  advice?: string[];
  /** The page size when it is not 4096: a hugetlb mapping's (KernelPageSize). */
  pageSize?: number;
  /** Guard pages (MADV_GUARD_INSTALL) inside the mapping, as address ranges: installed again. */
  guards?: { start: bigint; end: bigint }[];
  /** Page data of private pages (anonymous or copied-on-write). */
  pages: PageRun[];
  /**
   * Private anonymous memory it shares copy-on-write with its parent process (forked, neither has
   * written the pages since): the page ranges, whose contents are in the parent's entry, not in
   * `pages`. The restore forks the process from its parent once the parent's memory is in and
   * keeps this mapping as inherited (lib/memory/cow.ts). Absent: none (and in older images).
   */
  sharedWithParent?: { start: bigint; end: bigint }[];
}

/** Contents of a memory object that cannot be reopened: shared anonymous memory, memfd, a
 * deleted file. Referred to by number from mappings and descriptors. */
export interface MemoryObjectEntry {
  /** Number by which mappings and files refer to it. */
  id: number;
  /** Its identity across the processes of one image (device and inode): the same object
   * in two processes is made once and shared at restore. */
  key?: string;
  /** What the object is. */
  kind: "shmem" | "sysv-shm" | "memfd" | "deleted-file";
  /** memfd name, or the deleted file's former path. */
  name: string;
  /** Size in bytes. */
  size: number;
  /** st_mode permission bits. */
  mode: number;
  /** memfd seals (F_GET_SEALS), 0 otherwise. */
  seals?: number;
  /** Owner of a memfd or deleted file (absent in older images: root's). */
  uid?: number;
  /** Group of a memfd or deleted file. */
  gid?: number;
  /** A deleted file's access and modification times, ns since the epoch (its ctime is new). */
  atimeNs?: bigint;
  /** See `atimeNs`. */
  mtimeNs?: bigint;
  /** Shared hugetlb memory: its huge page size in bytes. */
  hugePageSize?: number;
  /** A System V segment's identity, owner and removal mark (IPC_RMID). */
  sysv?: { key: number; shmid: number; uid: number; gid: number; removed: boolean };
  /** Contents, at byte offsets within the object. */
  pages: PageRun[];
}

/** The x86 special mappings; restored by moving this kernel's copies to the same addresses. */
export interface SpecialMappings {
  /** The vdso, with a checksum of its code to compare with the restoring kernel's. */
  vdso?: { start: bigint; end: bigint; checksum: number };
  /** [vvar]. */
  vvar?: { start: bigint; end: bigint };
  /** [vvar_vclock]. */
  vvarVclock?: { start: bigint; end: bigint };
}

/** A child that exited and that its parent had not waited for. */
export interface ZombieEntry {
  /** Its pid, made again. */
  pid: number;
  /** Its name (comm). */
  comm: string;
  /** Its exit status as wait() reports it: code << 8, or the signal that ended it. */
  status: number;
  /** Process group, which it may have led. */
  pgid: number;
  /** Session, which it may have led. */
  sid: number;
  /**
   * The thread of the parent that forked it (and whose child it is: `__WNOTHREAD` waits see it
   * there only), when not the main thread; absent for the main thread and in older images.
   */
  thread?: number;
}

/** A signal waiting to be delivered, as `PTRACE_PEEKSIGINFO` gave it. */
export interface PendingSignal {
  /** Signal number. */
  signo: number;
  /** The 128-byte siginfo_t. */
  siginfo: Uint8Array;
}

/**
 * User and group ids, supplementary groups and capability sets: those of one thread, or for
 * `ProcessEntry.creds` those of the main thread.
 */
export interface Credentials {
  /** Real, effective, saved and filesystem user ids. */
  uids: number[];
  /** Real, effective, saved and filesystem group ids. */
  gids: number[];
  /** Supplementary groups. */
  groups: number[];
  /** Inheritable capabilities (bit n: capability n). */
  capInh: bigint;
  /** Permitted capabilities. */
  capPrm: bigint;
  /** Effective capabilities. */
  capEff: bigint;
  /** The capability bounding set. */
  capBnd: bigint;
  /** Ambient capabilities. */
  capAmb: bigint;
}

/** How a thread is scheduled: CPU policy and priorities, CPU affinity, I/O priority, slack. */
export interface SchedulingEntry {
  /** SCHED_OTHER 0, FIFO 1, RR 2, BATCH 3, IDLE 5, DEADLINE 6. */
  policy: number;
  /** SCHED_FLAG_* as sched_getattr reports them (RESET_ON_FORK 1; deadline flags). */
  flags: number;
  /** Its nice value (getpriority), kept underneath a real-time policy too. */
  nice: number;
  /** Real-time priority (1..99), 0 for other policies. */
  rtPriority: number;
  /**
   * The kernel's priority as /proc/PID/task/TID/stat shows it (field 18): under SCHED_IDLE it
   * keeps the nice value sched_setattr was given (20 + nice) while getpriority says otherwise.
   */
  priority: number;
  /** SCHED_DEADLINE runtime, or the time slice a fair thread asks for (ns). */
  runtime: bigint;
  /** SCHED_DEADLINE deadline (ns). */
  deadline: bigint;
  /** SCHED_DEADLINE period (ns). */
  period: bigint;
  /** Utilization clamps (0..1024; both 0 where the kernel has none). */
  utilMin: number;
  /** Utilization clamp, maximum. */
  utilMax: number;
  /** The CPUs it may run on (sched_getaffinity). */
  cpus: number[];
  /** I/O priority: class << 13 | level (ioprio_get; 0: none set). */
  ioprio: number;
  /** Timer slack in ns (PR_GET_TIMERSLACK; 0 under a real-time policy). */
  timerSlackNs: number;
}

/** One thread. */
export interface ThreadEntry {
  /** Thread id (the pid for the main thread). */
  tid: number;
  /**
   * The groups the thread is in apart from its process's (v1 `tasks`, v2 threaded groups), one
   * a hierarchy; absent when it is in all of its process's (and in older images).
   */
  cgroups?: CgroupMembership[];
  /**
   * In a process of a nested pid namespace (`ProcessEntry.nestedPid`): its tid in each nested
   * level, outermost first (the main thread's are its process's pids). Absent otherwise.
   */
  nestedTids?: number[];
  /** Thread name (comm). */
  name: string;
  /** user_regs_struct, field by field. */
  regs: Record<string, bigint>;
  /** The NT_X86_XSTATE register set (FPU, SSE, AVX …). */
  xstate: Uint8Array;
  /** Blocked signals. */
  sigmask: bigint;
  /** Signals pending for this thread only. */
  pending: PendingSignal[];
  /** The alternate signal stack (`stack_t`). */
  sigaltstack: { sp: bigint; flags: number; size: bigint };
  /** The address set_tid_address gave (cleared and woken at exit). */
  clearChildTid: bigint;
  /** The robust futex list head. */
  robustList: { head: bigint; len: bigint };
  /** The rseq registration (pointer 0: none). */
  rseq: { abiPointer: bigint; length: number; flags: number; signature: number };
  /** For a thread stopped in clock_nanosleep: the time it still had to sleep (ns), if known. */
  sleepRemainingNs?: bigint;
  /** no_new_privs was set (`NoNewPrivs: 1`); absent when not. Set again at restore. */
  noNewPrivs?: boolean;
  /**
   * Seccomp confinement; absent when none. `mode` 1 is strict, 2 filter; `filters` are indexes
   * into `ProcessEntry.seccompFilters`, the oldest first (the order they are installed again,
   * last of all the thread's restore steps).
   */
  seccomp?: { mode: number; filters: number[] };
  /**
   * Its own credentials (a raw setresuid or capset changes its caller's only); absent in older
   * images, where the process's `creds` serve every thread.
   */
  creds?: Credentials;
  /** Its securebits (PR_GET_SECUREBITS); absent in older images. */
  securebits?: number;
  /** How it is scheduled; absent in older images. */
  scheduling?: SchedulingEntry;
}

/** One seccomp filter, stored once per process however many threads carry it. */
export interface SeccompFilterEntry {
  /** The BPF program: `struct sock_filter` array, 8 bytes per instruction. */
  bpf: Uint8Array;
  /** SECCOMP_FILTER_FLAG_* it was installed with, as far as the kernel tells (LOG). */
  flags: number;
}

/** One signal's disposition (`struct kernel_sigaction`). */
export interface SigactionEntry {
  /** Signal number. */
  signo: number;
  /** Handler address, or SIG_IGN (1). */
  handler: bigint;
  /** SA_* flags. */
  flags: bigint;
  /** The sa_restorer trampoline. */
  restorer: bigint;
  /** Signals blocked while the handler runs. */
  mask: bigint;
}

/** An interval timer (`struct itimerval`) in microseconds. */
export interface ItimerEntry {
  /** ITIMER_REAL 0, ITIMER_VIRTUAL 1, ITIMER_PROF 2. */
  which: number;
  /** Reload interval. */
  intervalUs: bigint;
  /** Time left until it fires. */
  valueUs: bigint;
}

/** A POSIX timer (`timer_create`). */
export interface PosixTimerEntry {
  /** The timer id the program holds. */
  id: number;
  /** Clock it counts on. */
  clockid: number;
  /** Signal it sends. */
  signo: number;
  /** sigev_value. */
  sigval: bigint;
  /** sigev_notify: SIGEV_SIGNAL 0, SIGEV_NONE 1, with SIGEV_THREAD_ID 4 for one thread. */
  notify: number;
  /** The thread (or process) it notifies. */
  targetTid: number;
  /** Reload interval. */
  intervalNs: bigint;
  /** Time left until it fires (0: disarmed). */
  valueNs: bigint;
}

/** The mm fields `PR_SET_MM_MAP` takes. */
export interface MmEntry {
  /** Text segment start (start_code). */
  startCode: bigint;
  /** Text segment end. */
  endCode: bigint;
  /** Data segment start. */
  startData: bigint;
  /** Data segment end. */
  endData: bigint;
  /** Heap start. */
  startBrk: bigint;
  /** Current program break (brk(0) at dump). */
  brk: bigint;
  /** Main stack start. */
  startStack: bigint;
  /** argv area start. */
  argStart: bigint;
  /** argv area end. */
  argEnd: bigint;
  /** environ area start. */
  envStart: bigint;
  /** environ area end. */
  envEnd: bigint;
  /** /proc/PID/auxv: (type, value) pairs, flattened. */
  auxv: bigint[];
}

/** An open file description, stored once and referred to by every fd that shares it. */
export interface FileEntry {
  /** `fileId` of the inspection SDK. */
  id: number;
  /** Handler kind: "regular", "pipe", "eventfd" … (see lib/files/). */
  kind: string;
  /** open(2) flags. */
  flags: number;
  /**
   * Who gets its I/O signals (F_GETOWN_EX): `type` F_OWNER_TID 0, F_OWNER_PID 1, F_OWNER_PGRP 2,
   * `pid` the thread, process or group as the process saw it (0: none, or one that is gone).
   * Absent when never set (type 0, pid 0), for files that have none (O_PATH) and in older images.
   */
  owner?: { type: number; pid: number };
  /** The signal it sends for I/O and lease breaks (F_SETSIG); absent when 0 (SIGIO). */
  signal?: number;
  /** The kind's own state. */
  [key: string]: unknown;
}

/** One descriptor number pointing at an open file description. */
export interface FdEntry {
  /** The descriptor number. */
  fd: number;
  /** The `FileEntry.id` it points at. */
  file: number;
  /** FD_CLOEXEC. */
  closeOnExec: boolean;
}

/** The controlling terminal of a process, for restoring it as a shell job. */
export interface TerminalEntry {
  /** Its device number: `tty_nr` of /proc/PID/stat. */
  dev: number;
  /** Its path (`/dev/pts/N`) when a descriptor of the process is open on it, else null. */
  path: string | null;
  /** The process was in the terminal's foreground process group (`tpgid` == its pgid). */
  foreground: boolean;
  /**
   * The terminal's modes when dumped (read from `path`), set again on the restoring terminal while
   * a foreground shell job has it; absent when no descriptor was open on it (and in older images).
   */
  modes?: TerminalModes;
  /** Its window size when dumped (for display: a restored job gets the new terminal's size). */
  winsize?: WindowSize;
}

/** A terminal's modes: the kernel's `struct termios` as TCGETS reads it. */
export interface TerminalModes {
  /** The 36 bytes of `struct termios` (x86_64): what the restore sets with TCSETSW. */
  raw: Uint8Array;
  /** `c_iflag`: input modes (ICRNL, IXON …). */
  iflag: number;
  /** `c_oflag`: output modes (OPOST, ONLCR …). */
  oflag: number;
  /** `c_cflag`: control modes (CS8, CREAD …). */
  cflag: number;
  /** `c_lflag`: local modes (ISIG, ICANON, ECHO …). */
  lflag: number;
  /** `c_line`: the line discipline. */
  line: number;
  /** `c_cc`: the 19 control characters (VINTR, VQUIT … VMIN at 6, VTIME at 5). */
  cc: number[];
}

/** A terminal's window size (`struct winsize`, TIOCGWINSZ). */
export interface WindowSize {
  /** Rows. */
  rows: number;
  /** Columns. */
  cols: number;
  /** Width in pixels, 0 when unknown. */
  xpixel: number;
  /** Height in pixels, 0 when unknown. */
  ypixel: number;
}

/** A namespace of a process: its name in /proc/PID/ns and its inode number. */
export interface NamespaceEntry {
  /** `mnt`, `net`, `pid`, `pid_for_children`, `user`, `uts`, `ipc`, `cgroup`, `time` … */
  name: string;
  /** The inode of /proc/PID/ns/NAME: equal for processes in the same namespace. */
  inode: bigint;
}

/** A resource limit; `RLIM_INFINITY` is 2^64-1. */
export interface RlimitEntry {
  /** RLIMIT_* number. */
  resource: number;
  /** Soft limit. */
  soft: bigint;
  /** Hard limit. */
  hard: bigint;
}

/** A process's group in one cgroup hierarchy, as /proc/PID/cgroup names it. */
export interface CgroupMembership {
  /** The hierarchy's controllers (`pids`, `cpu,cpuacct`, `name=systemd`); "" for cgroup v2. */
  hierarchy: string;
  /** The group's path in it (`/`, `/mygroup`). */
  path: string;
  /**
   * The dumping tool was in this group too: the environment's, not the tree's. The restored
   * process stays in the restoring tool's group of the hierarchy instead.
   */
  tool?: boolean;
}

/** A group the tree lived in and the dumping tool did not, with its limits. */
export interface CgroupEntry extends CgroupMembership {
  /**
   * Its settings, file → content as read: the limits and weights of its controllers it has
   * (`pids.max`, `memory.max`, `cpu.cfs_quota_us` …, docs/IMAGE.md lists them).
   */
  settings: Record<string, string>;
  /**
   * It was frozen itself (v1 `freezer.self_freezing`, v2 `cgroup.freeze`): the restore freezes
   * it again once the tree is back in it, before the tree runs. Absent when not (and in older
   * images).
   */
  frozen?: true;
}

/** A file of a tmpfs a container mounted, made again in the fresh tmpfs. */
export interface TmpfsFileEntry {
  /** Its path below the tmpfs's root. */
  path: string;
  /** `dir`, `file`, `symlink`, `link` (a hard link to `target`), `char`, `block` or `fifo`. */
  type: "dir" | "file" | "symlink" | "link" | "char" | "block" | "fifo";
  /** Its permission bits. */
  mode: number;
  /** Owner. */
  uid: number;
  /** Owner's group. */
  gid: number;
  /** Its modification time, ms since the epoch. */
  mtimeMs?: number;
  /** A regular file's bytes. */
  data?: Uint8Array;
  /** A symbolic link's target, or the path (below the tmpfs) a hard link shares its inode with. */
  target?: string;
  /** A device node's device number (st_rdev). */
  rdev?: number;
}

/** A mount of a container, made again at restore. */
export interface MountEntry {
  /** Where it is mounted, as the container sees it. */
  mountPoint: string;
  /** Its file system type. */
  fsType: string;
  /** Its source (`proc`). */
  source: string;
  /** Its per-mount options, as mountinfo shows them (`rw,nosuid,nodev,noexec,relatime`). */
  options: string;
  /** Its superblock options, as mountinfo shows them (`rw`, `rw,hidepid=2`). */
  superOptions: string;
  /** The directory of its file system it shows, when not the root (a bind mount's). */
  root?: string;
  /**
   * A bind mount: the path it is bound from, as the container sees it (a mount of the container
   * made before it), or with `bindHost` as the tool sees it (a file system of the host).
   */
  bindFrom?: string;
  /** `bindFrom` is a path of the tool's. */
  bindHost?: boolean;
  /** A fresh tmpfs's files. */
  files?: TmpfsFileEntry[];
  /**
   * A proc showing a pid namespace nested below the mounter's: the dump-level pid of that
   * namespace's init, which mounts it (and the mounts listed after it) at restore.
   */
  pidNamespace?: number;
}

/** One range of a user namespace's uid or gid map, as /proc/PID/uid_map lists it. */
export interface IdRange {
  /** The first id of the range inside the namespace. */
  inside: number;
  /** The id it is outside (in the dumping tool's user namespace). */
  outside: number;
  /** How many ids the range holds. */
  count: number;
}

/** A user namespace: its id maps and whether its processes may call setgroups. */
export interface UserEntry {
  /** Its uid map. */
  uidMap: IdRange[];
  /** Its gid map. */
  gidMap: IdRange[];
  /** /proc/PID/setgroups: `deny` (as `unshare --map-root-user` writes) forbids setgroups inside. */
  setgroups: "allow" | "deny";
}

/** The names of a UTS namespace. */
export interface UtsEntry {
  /** Its host name (sethostname). */
  hostname: string;
  /** Its NIS domain name (setdomainname). */
  domainname: string;
}

/** The owner and permissions of a System V IPC object (`ipc64_perm`), and its identity. */
export interface SysvObjectEntry {
  /** Its id, made again (through `msg_next_id`/`sem_next_id`). */
  id: number;
  /** Its key (0: IPC_PRIVATE). */
  key: number;
  /** Owner. */
  uid: number;
  /** Owner's group. */
  gid: number;
  /** Permission bits. */
  mode: number;
}

/** A System V message queue of a container's IPC namespace, with its messages. */
export interface MsgQueueEntry extends SysvObjectEntry {
  /** Its capacity in bytes (`msg_qbytes`). */
  qbytes: number;
  /** Its messages, oldest first: type and text. */
  messages: { type: bigint; data: Uint8Array }[];
}

/** A System V semaphore set of a container's IPC namespace. */
export interface SemSetEntry extends SysvObjectEntry {
  /** The value of each semaphore. */
  values: number[];
}

/** A System V shared memory segment of a container's IPC namespace. */
export interface ShmSegmentEntry extends SysvObjectEntry {
  /** Its size in bytes. */
  size: number;
  /** Marked for removal (IPC_RMID): it goes with the last of its attaches. */
  removed: boolean;
  /**
   * Its contents up to its last non-zero byte, when no process of the dump attaches it; absent
   * for an attached one, whose contents are the attaching processes' memory object `sysv:ID`.
   */
  data?: Uint8Array;
}

/** A POSIX message queue of a container's IPC namespace, with its messages. */
export interface MqueueEntry {
  /** Its name, without the leading slash. */
  name: string;
  /** Owner. */
  uid: number;
  /** Owner's group. */
  gid: number;
  /** Permission bits. */
  mode: number;
  /** Its capacity in messages (`mq_maxmsg`). */
  maxmsg: number;
  /** Its largest message in bytes (`mq_msgsize`). */
  msgsize: number;
  /** Its messages in the order a receiver takes them: highest priority first, then oldest. */
  messages: { priority: number; data: Uint8Array }[];
}

/** The POSIX message queue limits of an IPC namespace (/proc/sys/fs/mqueue). */
export interface MqueueLimitsEntry {
  /** `msg_max`: the largest capacity a queue may be given without CAP_SYS_RESOURCE. */
  msgMax: number;
  /** `msgsize_max`: the largest message size a queue may be given. */
  msgsizeMax: number;
  /** `msg_default`: the capacity of a queue made without attributes. */
  msgDefault: number;
  /** `msgsize_default`: the message size of a queue made without attributes. */
  msgsizeDefault: number;
  /** `queues_max`: how many queues the namespace may hold. */
  queuesMax: number;
}

/** A container's IPC namespace: the objects it holds. */
export interface IpcEntry {
  /** Its System V message queues. */
  msg: MsgQueueEntry[];
  /** Its System V semaphore sets. */
  sem: SemSetEntry[];
  /** Its System V shared memory segments (absent: none, and in older images). */
  shm?: ShmSegmentEntry[];
  /** Its POSIX message queues (absent: none, and in older images). */
  mqueues?: MqueueEntry[];
  /** With `mqueues`: the namespace's limits, given before the queues are made. */
  mqueueLimits?: MqueueLimitsEntry;
}

/** A container's time namespace: its clock offsets, and what its clocks read at the dump. */
export interface TimeEntry {
  /** What it adds to CLOCK_MONOTONIC, in ns (/proc/PID/timens_offsets). */
  monotonic: bigint;
  /** What it adds to CLOCK_BOOTTIME, in ns. */
  boottime: bigint;
  /** The boot of the dumping machine (/proc/sys/kernel/random/boot_id). */
  bootId: string;
  /** Its CLOCK_MONOTONIC and CLOCK_BOOTTIME as the container read them at the dump, in ns. */
  clocks: { monotonic: bigint; boottime: bigint };
}

/** An address of a network device, as `ip -j addr` shows it. */
export interface NetAddressEntry {
  /** `inet` or `inet6`. */
  family: string;
  /** The address. */
  local: string;
  /** Its prefix length. */
  prefixlen: number;
  /** Its scope (`global`, `link`, `host`). */
  scope: string;
  /** Its broadcast address (IPv4), when it has one. */
  broadcast?: string;
  /** Its label (IPv4), when it is not the device's name. */
  label?: string;
}

/** A route a network namespace was given (not one the kernel makes itself), as `ip -j route`. */
export interface NetRouteEntry {
  /** `inet` or `inet6`. */
  family: string;
  /** Its destination (`default`, `10.0.0.0/8`). */
  dst: string;
  /** Its type when not unicast (`blackhole`, `unreachable` …). */
  type?: string;
  /** Its gateway. */
  gateway?: string;
  /** Its device. */
  dev?: string;
  /** Its table when not main. */
  table?: string;
  /** Its metric. */
  metric?: number;
  /** Who made it when not boot (`static`, `dhcp` …). */
  protocol?: string;
  /** Its scope when not universe. */
  scope?: string;
  /** Its preferred source address. */
  prefsrc?: string;
}

/** The end of a veth pair outside the container, in the dumping tool's network namespace. */
export interface VethPeerEntry {
  /** Its name. */
  name: string;
  /** Its MTU. */
  mtu: number;
  /** Its hardware address. */
  mac: string;
  /** Whether it was up. */
  up: boolean;
  /** The bridge it was a port of, reconnected to at restore (which must exist). */
  master?: string;
  /** Its addresses. */
  addresses: NetAddressEntry[];
  /** The routes through it the tool's namespace had been given. */
  routes: NetRouteEntry[];
}

/** A network device of a container's net namespace: its loopback or a veth. */
export interface NetLinkEntry {
  /** Its name. */
  name: string;
  /** `loopback` or `veth`. */
  kind: string;
  /** Its MTU. */
  mtu: number;
  /** Its hardware address. */
  mac: string;
  /** Whether it was up. */
  up: boolean;
  /** Its addresses. */
  addresses: NetAddressEntry[];
  /** A veth's other end, outside the container. */
  peer?: VethPeerEntry;
}

/** A container's network namespace. */
export interface NetEntry {
  /** Its devices. */
  links: NetLinkEntry[];
  /** The routes it was given. */
  routes: NetRouteEntry[];
  /** Its sysctls under net.ipv4.conf and net.ipv6.conf: path below /proc/sys/net, and value. */
  sysctls: { path: string; value: string }[];
  /** Its firewall (absent: none, and in older images). */
  firewall?: FirewallEntry;
}

/** The firewall of a container's net namespace. */
export interface FirewallEntry {
  /** Its whole ruleset as `nft list ruleset` prints it, counters included. */
  ruleset: string;
  /** `iptables-save -c` of its IPv4 tables, which `iptables-restore -c` makes (not nft). */
  iptables?: string;
  /** `ip6tables-save -c` of its IPv6 tables, which `ip6tables-restore -c` makes. */
  ip6tables?: string;
}

/**
 * The namespaces of a container (a dump whose root lived in other namespaces than the tool),
 * which the restore makes anew, the tree inside them.
 */
export interface NamespacesEntry {
  /**
   * The kinds made anew: `pid` (the root is pid 1 of a fresh pid namespace, every pid of the
   * image is the one inside), `mnt` (a copy of the restoring tool's mounts, private, with
   * `mounts` on it), `uts` (with `uts`), `ipc` (with the objects of `ipc`), `time` (with
   * `time`), `net` (with `net`), `user` (with `user`: made first, owning every other one; the
   * credentials of every process and thread are then the ids it sees inside), `cgroup` (rooted at
   * the groups the root is put back in).
   */
  kinds: ("pid" | "mnt" | "uts" | "ipc" | "time" | "net" | "user" | "cgroup")[];
  /** With `user`, or `user` joined: its id maps. */
  user?: UserEntry;
  /** With `mnt`: the mounts the container had made over a copy of the tool's. */
  mounts?: MountEntry[];
  /** With `uts`: its names. */
  uts?: UtsEntry;
  /** With `ipc`: its System V objects and POSIX message queues (absent: none). */
  ipc?: IpcEntry;
  /** With `time`: its clock offsets. */
  time?: TimeEntry;
  /** With `net`: its devices, addresses, routes and sysctls. */
  net?: NetEntry;
  /** Kinds left out at dump (`--external net`): the restore joins a namespace handed in. */
  joined?: ("net" | "user")[];
}

/** Everything needed to bring one process back. */
export interface ProcessEntry {
  /** Process id, restored as it was. */
  pid: number;
  /** Parent at dump time (for display: the restored process is reparented). */
  ppid: number;
  /** It was stopped (SIGSTOP, ^Z) when dumped: it comes back stopped. */
  stopped?: boolean;
  /**
   * The signal that stopped it (SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU), as its parent's wait reports
   * it; absent when not stopped and in older images (SIGSTOP then).
   */
  stopSignal?: number;
  /** The signal it gets when its parent dies (PR_SET_PDEATHSIG), 0 for none. */
  pdeathsig?: number;
  /** Session and process group ids: a session or group leader leads them again. */
  sid: number;
  /** Process group id. */
  pgid: number;
  /** Its controlling terminal; absent when it had none (and in images of older versions). */
  tty?: TerminalEntry;
  /** Children that had exited and were not waited for yet: made again, to be waited for. */
  zombies?: ZombieEntry[];
  /** Process name. */
  comm: string;
  /** Arguments (they live in the process's memory; kept for display). */
  cmdline: string[];
  /** The executable, restored as /proc/PID/exe. */
  exe: { path: string; size: number; mtimeMs: number } | null;
  /** Working directory (ending in " (deleted)" when it had been removed). */
  cwd: string;
  /**
   * The working directory had been removed (rmdir): its permission bits and owner, made again
   * as an empty removed directory of the same path. Absent otherwise and in older images.
   */
  removedCwd?: { mode: number; uid: number; gid: number };
  /** Root directory. */
  root: string;
  /** File creation mask. */
  umask: number;
  /** personality(2) flags. */
  personality: number;
  /** Credentials and capabilities of the main thread (each thread has its own: `ThreadEntry`). */
  creds: Credentials;
  /**
   * The namespaces it was in, by name (`mnt`, `net`, `pid` …) with the inode of /proc/PID/ns/NAME:
   * for inspection and comparison; a restore does not make them again. Absent in older images.
   */
  namespaceInodes?: NamespaceEntry[];
  /** /proc/PID/oom_score_adj (-1000..1000); absent in older images. */
  oomScoreAdj?: number;
  /**
   * The audit login uid (4294967295: unset) and session id of /proc/PID/loginuid and sessionid;
   * absent in older images.
   */
  audit?: { loginuid: number; sessionid: number };
  /** PR_GET_THP_DISABLE: 0, or 1 with the flags it was set with; absent in older images. */
  thpDisable?: number;
  /** It is a child subreaper (PR_SET_CHILD_SUBREAPER); absent in older images. */
  childSubreaper?: boolean;
  /** Its membarrier registrations (MEMBARRIER_CMD_GET_REGISTRATIONS); absent in older images. */
  membarrier?: number;
  /** PR_GET_DUMPABLE: 0, 1, or 2 (suid_dumpable); absent in older images. */
  dumpable?: number;
  /** Resource limits. */
  rlimits: RlimitEntry[];
  /** Memory layout fields of the mm. */
  mm: MmEntry;
  /** Signal dispositions other than the default. */
  sigactions: SigactionEntry[];
  /** Signals pending for the whole process. */
  sharedPending: PendingSignal[];
  /** Armed interval timers. */
  itimers: ItimerEntry[];
  /** POSIX timers (absent in images of older versions of the tool). */
  posixTimers?: PosixTimerEntry[];
  /** Every thread. */
  threads: ThreadEntry[];
  /** The seccomp filters its threads refer to (`ThreadEntry.seccomp`); absent when none. */
  seccompFilters?: SeccompFilterEntry[];
  /** Every mapping but the special ones. */
  mappings: MappingEntry[];
  /** vdso and vvar addresses. */
  special: SpecialMappings;
  /** Memory objects stored once (shared memory, memfd, deleted files). */
  objects: MemoryObjectEntry[];
  /** Open files, each once. */
  files: FileEntry[];
  /** Descriptor numbers. */
  fds: FdEntry[];
  /**
   * It shares its descriptor table with this process of the image (clone with CLONE_FILES):
   * its parent, or a sibling (then it is made with CLONE_PARENT). Its `files` and `fds` are that
   * process's; the restore makes it with CLONE_FILES and restores the table once. Absent: a
   * table of its own (and in older images).
   */
  sharesFilesWith?: number;
  /**
   * It shares its fs context (cwd, root, umask) with this process of the image (CLONE_FS),
   * which is the same one as `sharesFilesWith` when both are present.
   */
  sharesFsWith?: number;
  /** Where page data lives: each extent is one checksummed run of a page file. */
  extents: PageExtent[];
  /**
   * Its pid namespace when it is nested below the dump's (the one `pid` belongs to): the
   * dump-level pid of that namespace's init (its own for an init, pid 1 there) and its pid in
   * each nested level, outermost first (the last is the one it sees; 1 for an init). Absent at
   * the dump's level (and in older images).
   */
  nestedPid?: NestedPidEntry;
  /**
   * It made a pid namespace for its children other than its own (unshare --pid, or setns): the
   * dump-level pid of that namespace's init, which is in the image. Absent when its children go
   * into its own (and in older images).
   */
  childPidNamespace?: number;
  /**
   * It made a mount namespace of its own, a copy of its parent's (`unshare --pid --fork
   * --mount-proc`, or clone with CLONE_NEWNS), in which its descendants live: the mounts it and
   * they added on the copy, in mountinfo order. Absent when it lives in its parent's.
   */
  mountNamespace?: { mounts: MountEntry[] };
  /**
   * Root process only: the other processes of the dumped tree, each after its parent; each has
   * its own entry in `process-PID.cbor`.
   */
  tree?: { pid: number; ppid: number }[];
  /** Its group in every cgroup hierarchy (every thread is in its process's); absent in older images. */
  cgroups?: CgroupMembership[];
  /**
   * Root process only: the cgroups processes of the tree lived in that the dumping tool did not,
   * made again with their limits when missing; absent when none (and in older images).
   */
  cgroupGroups?: CgroupEntry[];
  /**
   * Root process only, of a container: the namespaces made anew around the tree. Absent for a
   * tree that lived in the tool's namespaces (and in older images).
   */
  namespaces?: NamespacesEntry;
  /**
   * Root process only, when the dump held TCP connections: the netfilter lock that drops their
   * packets until the restore has made them again (lib/network/lock.ts). Absent in images of
   * older versions and of dumps that locked nothing.
   */
  networkLock?: NetworkLockEntry;
}

/** Where a process of a pid namespace nested below the dump's lives (`ProcessEntry.nestedPid`). */
export interface NestedPidEntry {
  /** The dump-level pid of the init (pid 1) of the innermost namespace it lives in. */
  init: number;
  /** Its pid in each nested level, outermost first; the last is the one it sees. */
  pids: number[];
}

/** The network lock of an image: what the restore (or `unlock`) removes. */
export interface NetworkLockEntry {
  /** How it was made: an nft table `inet NAME`, or an iptables/ip6tables chain NAME. */
  method: "nftables" | "iptables";
  /** The table's or chain's name, `tardigrade-` and 16 hex digits. */
  name: string;
  /** The connections it drops the packets of, both ways, as `{local, peer}` addresses. */
  connections: { local: string; peer: string }[];
}
