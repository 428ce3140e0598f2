/** Typed wrappers over libc and raw syscalls; each throws `SyscallError` on failure. */
import { addressOf, cstring, errno, libc, unwrap } from "./libc.ts";
import { AT_FDCWD, FADV, O } from "./fcntl.ts";
import { S_IF } from "./stat.ts";
import { Errno, SyscallError } from "./errno.ts";
import { encodeIovecs } from "./structs.ts";

/** x86_64 syscall numbers used by tardigrade, both for local calls and injected ones. */
export const SYS = {
  read: 0,
  write: 1,
  open: 2,
  close: 3,
  fstat: 5,
  poll: 7,
  lseek: 8,
  mmap: 9,
  mprotect: 10,
  munmap: 11,
  brk: 12,
  rt_sigaction: 13,
  rt_sigprocmask: 14,
  ioctl: 16,
  pread64: 17,
  statfs: 137,
  pipe: 22,
  mremap: 25,
  madvise: 28,
  shmget: 29,
  shmat: 30,
  shmctl: 31,
  shmdt: 67,
  dup: 32,
  dup2: 33,
  nanosleep: 35,
  sched_yield: 24,
  getitimer: 36,
  setitimer: 38,
  getpid: 39,
  socket: 41,
  setsockopt: 54,
  clone: 56,
  fork: 57,
  exit: 60,
  wait4: 61,
  kill: 62,
  uname: 63,
  semget: 64,
  semctl: 66,
  msgget: 68,
  msgsnd: 69,
  msgrcv: 70,
  msgctl: 71,
  mq_open: 240,
  mq_timedsend: 242,
  mq_timedreceive: 243,
  mq_getsetattr: 245,
  fcntl: 72,
  flock: 73,
  fdatasync: 75,
  ftruncate: 77,
  chdir: 80,
  fchdir: 81,
  mkdir: 83,
  link: 86,
  symlink: 88,
  rmdir: 84,
  unlink: 87,
  linkat: 265,
  renameat2: 316,
  fchmod: 91,
  fchown: 93,
  umask: 95,
  getrlimit: 97,
  setuid: 105,
  setpgid: 109,
  setsid: 112,
  getpgid: 121,
  getsid: 124,
  setgid: 106,
  setgroups: 116,
  setresuid: 117,
  setresgid: 119,
  setfsuid: 122,
  setfsgid: 123,
  capget: 125,
  capset: 126,
  rt_sigpending: 127,
  rt_sigtimedwait: 128,
  rt_sigqueueinfo: 129,
  sigaltstack: 131,
  mknod: 133,
  pivot_root: 155,
  umount2: 166,
  personality: 135,
  getpriority: 140,
  setpriority: 141,
  prctl: 157,
  arch_prctl: 158,
  chroot: 161,
  mount: 165,
  sethostname: 170,
  setdomainname: 171,
  gettid: 186,
  tkill: 200,
  futex: 202,
  sched_setaffinity: 203,
  sched_getaffinity: 204,
  set_tid_address: 218,
  restart_syscall: 219,
  timer_create: 222,
  timer_settime: 223,
  timer_gettime: 224,
  timer_delete: 226,
  clock_nanosleep: 230,
  epoll_wait: 232,
  exit_group: 231,
  epoll_ctl: 233,
  tgkill: 234,
  ioprio_set: 251,
  ioprio_get: 252,
  inotify_add_watch: 254,
  inotify_rm_watch: 255,
  openat: 257,
  getdents64: 217,
  set_robust_list: 273,
  get_robust_list: 274,
  unshare: 272,
  setns: 308,
  clock_gettime: 228,
  tee: 276,
  signalfd4: 289,
  timerfd_create: 283,
  eventfd2: 290,
  epoll_create1: 291,
  dup3: 292,
  pipe2: 293,
  inotify_init1: 294,
  rt_tgsigqueueinfo: 297,
  timerfd_settime: 286,
  timerfd_gettime: 287,
  utimensat: 280,
  fanotify_init: 300,
  fanotify_mark: 301,
  prlimit64: 302,
  name_to_handle_at: 303,
  open_by_handle_at: 304,
  kcmp: 312,
  sched_setattr: 314,
  sched_getattr: 315,
  seccomp: 317,
  memfd_create: 319,
  mlock2: 325,
  userfaultfd: 323,
  membarrier: 324,
  rseq: 334,
  pidfd_send_signal: 424,
  pidfd_open: 434,
  fsopen: 430,
  fsconfig: 431,
  fsmount: 432,
  clone3: 435,
  close_range: 436,
  pidfd_getfd: 438,
  cachestat: 451,
  mseal: 462,
  io_setup: 206,
  io_destroy: 207,
  // Socket calls, in the tool and injected.
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  sendmsg: 46,
  recvmsg: 47,
  shutdown: 48,
  bind: 49,
  listen: 50,
  getsockname: 51,
  getpeername: 52,
  socketpair: 53,
  getsockopt: 55,
} as const;

/** Calls a raw syscall locally; returns the result, throws `SyscallError` on failure. */
export function syscall(name: keyof typeof SYS, ...args: (bigint | number)[]): bigint {
  // Argument by argument, without arrays: kcmp alone is called 100,000s of times at scale.
  const a = (i: number) => i < args.length ? BigInt(args[i]) : 0n;
  return unwrap(libc.syscall(BigInt(SYS[name]), a(0), a(1), a(2), a(3), a(4), a(5)), name, args);
}

/** kcmp types. */
export const KCMP = { FILE: 0, VM: 1, FILES: 2, FS: 3, SIGHAND: 4, IO: 5, SYSVSEM: 6 } as const;

/**
 * Orders two kernel objects of two processes: 0 equal, 1 less, 2 greater, 3 not ordered.
 * `KCMP.FILE` compares the open files behind two descriptors.
 */
export function kcmp(pid1: number, pid2: number, type: number, idx1 = 0, idx2 = 0): number {
  // Called directly, the arguments listed only for an error: a big comparison makes 100,000s.
  const r = libc.syscall(
    KCMP_NR,
    BigInt(pid1),
    BigInt(pid2),
    BigInt(type),
    BigInt(idx1),
    BigInt(idx2),
    0n,
  );
  if (r === -1n) throw new SyscallError("kcmp", [pid1, pid2, type, idx1, idx2], errno());
  return Number(r);
}

const KCMP_NR = BigInt(SYS.kcmp);

/** A pidfd for a process. */
export function pidfdOpen(pid: number, flags = 0): number {
  return Number(syscall("pidfd_open", pid, flags));
}

/** Duplicates a descriptor of another process (through its pidfd) into this one. */
export function pidfdGetfd(pidfd: number, targetFd: number): number {
  return Number(syscall("pidfd_getfd", pidfd, targetFd, 0));
}

/** Sends a signal to one thread of a process. */
export function tgkill(tgid: number, tid: number, sig: number): void {
  syscall("tgkill", tgid, tid, sig);
}

/** Opens a file through libc, giving a raw descriptor (for ioctl, pread, pidfd …). */
export function open(path: string, flags: number, mode = 0): number {
  return unwrap(libc.open(cstring(path), flags | O.CLOEXEC, mode), "open", [path]);
}

/**
 * Gives the open file `fd` of the tool (an O_TMPFILE one) the name `path`: linkat(2) through
 * /proc/self/fd, following it. Throws a `SyscallError` (EEXIST when `path` is taken).
 */
export function linkOpenFile(fd: number, path: string): void {
  const from = cstring(`/proc/self/fd/${fd}`);
  const to = cstring(path);
  const AT_SYMLINK_FOLLOW = 0x400;
  syscall("linkat", AT_FDCWD, addressOf(from), AT_FDCWD, addressOf(to), AT_SYMLINK_FOLLOW);
}

/**
 * renameat2(2) with RENAME_NOREPLACE: renames `from` to `to` unless `to` exists; whether it did.
 * Throws a `SyscallError` for any other failure.
 */
export function renameNoReplace(from: string, to: string): boolean {
  const a = cstring(from);
  const b = cstring(to);
  const RENAME_NOREPLACE = 1;
  try {
    syscall("renameat2", AT_FDCWD, addressOf(a), AT_FDCWD, addressOf(b), RENAME_NOREPLACE);
    return true;
  } catch (err) {
    if (err instanceof SyscallError && err.errno === Errno.EEXIST) return false;
    throw err;
  }
}

/** mknod(2) of a FIFO at `path` with permission bits `mode` (less the umask). */
export function mkfifo(path: string, mode: number): void {
  const p = cstring(path);
  syscall("mknod", addressOf(p), S_IF.IFO | mode, 0);
}

/** The fields of `struct stat` tardigrade uses. */
export interface Stat {
  dev: bigint;
  ino: bigint;
  mode: number;
  uid: number;
  gid: number;
  rdev: bigint;
  size: number;
  /** Last access, ns since the epoch. */
  atimeNs: bigint;
  /** Last modification, ns since the epoch. */
  mtimeNs: bigint;
}

/** fstat(2) of a raw descriptor (`struct stat` is 144 bytes on x86_64). */
export function fstat(fd: number): Stat {
  const buf = new Uint8Array(STAT_SIZE);
  syscall("fstat", fd, addressOf(buf));
  return decodeStat(buf);
}

/** The size of `struct stat` (x86_64). */
export const STAT_SIZE = 144;

/** A `struct stat` as fstat(2) wrote it (here or, injected, in another process). */
export function decodeStat(buf: Uint8Array): Stat {
  const dv = new DataView(buf.buffer, buf.byteOffset, buf.length);
  return {
    dev: dv.getBigUint64(0, true),
    ino: dv.getBigUint64(8, true),
    mode: dv.getUint32(24, true),
    uid: dv.getUint32(28, true),
    gid: dv.getUint32(32, true),
    rdev: dv.getBigUint64(40, true),
    size: Number(dv.getBigInt64(48, true)),
    atimeNs: dv.getBigInt64(72, true) * 1_000_000_000n + dv.getBigInt64(80, true),
    mtimeNs: dv.getBigInt64(88, true) * 1_000_000_000n + dv.getBigInt64(96, true),
  };
}

/** The file system type (statfs(2) `f_type`) of `path` (through /proc's links: an open file's). */
export function fsMagic(path: string): number {
  const buf = new Uint8Array(120); // struct statfs (x86_64), f_type first
  syscall("statfs", addressOf(cstring(path)), addressOf(buf));
  return Number(new DataView(buf.buffer).getBigInt64(0, true));
}

/** stat(2) of a path (following a symlink, or /proc's magic links to open files). */
export function stat(path: string): Stat {
  const fd = open(path, O.PATH);
  try {
    return fstat(fd);
  } finally {
    close(fd);
  }
}

/** utimensat(2): sets the access and modification times (ns since the epoch) of `path`. */
export function setFileTimes(path: string, atimeNs: bigint, mtimeNs: bigint): void {
  const ts = new BigInt64Array(4);
  for (const [i, ns] of [atimeNs, mtimeNs].entries()) {
    const rem = ((ns % 1_000_000_000n) + 1_000_000_000n) % 1_000_000_000n; // before 1970 too
    ts[2 * i] = (ns - rem) / 1_000_000_000n;
    ts[2 * i + 1] = rem;
  }
  const p = cstring(path);
  syscall("utimensat", AT_FDCWD, addressOf(p), addressOf(ts), 0);
}

/** Closes a raw descriptor. */
export function close(fd: number): void {
  unwrap(libc.close(fd), "close", [fd]);
}

type PositionalIo = (
  fd: number,
  buf: Uint8Array<ArrayBuffer>,
  count: bigint,
  offset: bigint,
) => Promise<number | bigint>;

/** One pread/pwrite on another thread; on failure it is asked again here, where errno is read
 * (errno belongs to the thread that failed), to throw the right error. */
async function onAnotherThread(
  io: PositionalIo,
  again: (fd: number, buf: Uint8Array, offset: bigint | number) => number,
  fd: number,
  buf: Uint8Array,
  offset: bigint | number,
): Promise<number> {
  const n = Number(
    await io(fd, buf as Uint8Array<ArrayBuffer>, BigInt(buf.length), BigInt(offset)),
  );
  return n >= 0 ? n : again(fd, buf, offset);
}

/**
 * `pread` on another thread, so the caller works on meanwhile (the restore writes one extent
 * into the process while the next is read). `buf` must be left alone until it resolves.
 */
export function preadAsync(fd: number, buf: Uint8Array, offset: bigint | number): Promise<number> {
  return onAnotherThread(libc.pread_nonblocking, pread, fd, buf, offset);
}

/**
 * `pwrite` on another thread, so the caller works on meanwhile (the dump copies the next pages
 * while the last are written). `buf` must be left alone until it resolves.
 */
export function pwriteAsync(fd: number, buf: Uint8Array, offset: bigint | number): Promise<number> {
  return onAnotherThread(libc.pwrite_nonblocking, pwrite, fd, buf, offset);
}

/**
 * Asks the kernel to read all of file `fd` into the page cache (POSIX_FADV_WILLNEED), from one of
 * Deno's blocking threads; resolves once the reads are submitted. Advice: a failure is ignored.
 */
export async function readAheadAsync(fd: number): Promise<void> {
  await libc.posix_fadvise_nonblocking(fd, 0n, 0n, FADV.WILLNEED);
}

/** Reads at an offset; returns the byte count (0 at end of file). */
export function pread(fd: number, buf: Uint8Array, offset: bigint | number): number {
  return Number(
    unwrap(
      libc.pread(fd, buf as Uint8Array<ArrayBuffer>, BigInt(buf.length), BigInt(offset)),
      "pread",
      [fd, offset],
    ),
  );
}

/**
 * How many pages of `length` bytes at `offset` of file `fd` are in the page cache (cachestat,
 * Linux 6.5); undefined where the kernel cannot tell.
 */
export function cachedPages(fd: number, offset: number, length: number): number | undefined {
  const range = new BigUint64Array([BigInt(offset), BigInt(length)]);
  const stat = new BigUint64Array(5); // nr_cache, nr_dirty, nr_writeback, nr_evicted, …
  try {
    syscall("cachestat", fd, addressOf(range), addressOf(stat), 0);
  } catch {
    return undefined;
  }
  return Number(stat[0]);
}

/** Writes at an offset; returns the byte count. */
export function pwrite(fd: number, buf: Uint8Array, offset: bigint | number): number {
  return Number(
    unwrap(
      libc.pwrite(fd, buf as Uint8Array<ArrayBuffer>, BigInt(buf.length), BigInt(offset)),
      "pwrite",
      [fd, offset],
    ),
  );
}

/** ioctl with a struct argument. */
export function ioctl(fd: number, request: bigint, arg: Uint8Array, name = "ioctl"): number {
  return unwrap(libc.ioctl(fd, request, arg as Uint8Array<ArrayBuffer>), name, [fd, request]);
}

/** One piece of a scatter/gather copy: `len` bytes at `remote` in the other process. */
export interface RemoteRange {
  remote: bigint;
  len: number;
}

function vmCopy(
  which: "process_vm_readv" | "process_vm_writev",
  pid: number,
  local: Uint8Array,
  ranges: readonly RemoteRange[],
): number {
  const liov = encodeIovecs([{ base: addressOf(local), len: local.length }]);
  const riov = encodeIovecs(ranges.map((r) => ({ base: r.remote, len: r.len })));
  const fn = libc[which];
  return Number(
    unwrap(fn(pid, liov, 1n, riov, BigInt(ranges.length), 0n), which, [
      pid,
      ranges[0]?.remote ?? 0n,
    ]),
  );
}

/**
 * Copies from another process's memory into `local`, gathering `ranges` in order. Returns the
 * bytes copied, which stops short at the first range that is not mapped.
 */
export function processVmRead(
  pid: number,
  local: Uint8Array,
  ranges: readonly RemoteRange[],
): number {
  return vmCopy("process_vm_readv", pid, local, ranges);
}

/** Copies `local` into another process's memory, scattering it over `ranges`. */
export function processVmWrite(
  pid: number,
  local: Uint8Array,
  ranges: readonly RemoteRange[],
): number {
  return vmCopy("process_vm_writev", pid, local, ranges);
}

/** Sends a signal to a process. */
export function kill(pid: number, sig: number): void {
  unwrap(libc.kill(pid, sig), "kill", [pid, sig]);
}

/** read(2); returns the byte count (0 at end of file). */
export function read(fd: number, buf: Uint8Array): number {
  const b = buf as Uint8Array<ArrayBuffer>;
  return Number(unwrap(libc.read(fd, b, BigInt(b.length)), "read", [fd]));
}

/** write(2); returns the byte count written. */
export function write(fd: number, buf: Uint8Array): number {
  const b = buf as Uint8Array<ArrayBuffer>;
  return Number(unwrap(libc.write(fd, b, BigInt(b.length)), "write", [fd]));
}

/** Writes all of `data` to `fd`. */
export function writeAll(fd: number, data: Uint8Array): void {
  for (let off = 0; off < data.length;) off += write(fd, data.subarray(off));
}

/**
 * poll(2) of several descriptors for `events`, waiting up to `timeoutMs` (-1: until one is
 * ready); the revents of each, all 0 when the wait ran out or a signal interrupted it.
 */
export function pollFds(fds: readonly number[], events: number, timeoutMs: number): number[] {
  const pfds = new Uint8Array(8 * fds.length);
  const v = new DataView(pfds.buffer);
  fds.forEach((fd, i) => {
    v.setInt32(8 * i, fd, true);
    v.setInt16(8 * i + 4, events, true);
  });
  const n = BigInt(fds.length);
  const r = Number(
    libc.syscall(BigInt(SYS.poll), addressOf(pfds), n, BigInt(timeoutMs), 0n, 0n, 0n),
  );
  if (r === -1 && errno() !== Errno.EINTR) throw new SyscallError("poll", [fds], errno());
  return fds.map((_, i) => r > 0 ? v.getUint16(8 * i + 6, true) : 0);
}

/** pipe2(2): a new pipe's read and write ends. */
export function pipe2(flags: number): [number, number] {
  const ends = new Int32Array(2);
  unwrap(libc.pipe2(new Uint8Array(ends.buffer), flags), "pipe2", [flags]);
  return [ends[0], ends[1]];
}

/** tee(2): copies up to `len` bytes from one pipe to another without consuming them. */
export function tee(from: number, to: number, len: number, flags: number): number {
  return Number(unwrap(libc.tee(from, to, BigInt(len), flags), "tee", [from, to, len]));
}

/** fcntl(2) with a struct argument (`struct flock`, `struct f_owner_ex` …), filled in place. */
export function fcntlStruct(fd: number, cmd: number, arg: Uint8Array): number {
  return Number(syscall("fcntl", fd, cmd, addressOf(arg)));
}

/**
 * open_by_handle_at(2) relative to the mount of `mountFd`, with a `struct file_handle` (its
 * size, type and bytes); the new fd, or null when the handle is stale or refused.
 */
export function openByHandle(
  mountFd: number,
  handle: FileHandle,
  flags: number,
): number | null {
  const fh = encodeFileHandle(handle);
  try {
    return Number(syscall("open_by_handle_at", mountFd, addressOf(fh), flags | O.CLOEXEC));
  } catch (err) {
    if (err instanceof SyscallError) return null;
    throw err;
  }
}

/** The robust futex list of thread `tid` (get_robust_list). */
export function getRobustList(tid: number): { head: bigint; len: bigint } {
  const head = new BigUint64Array(1);
  const len = new BigUint64Array(1);
  syscall("get_robust_list", tid, addressOf(head), addressOf(len));
  return { head: head[0], len: len[0] };
}

/** A file handle (name_to_handle_at): its type and opaque bytes. */
export interface FileHandle {
  type: number;
  bytes: Uint8Array;
}

/** `struct file_handle` of `handle`: handle_bytes, handle_type, then the bytes. */
export function encodeFileHandle(handle: FileHandle): Uint8Array {
  const fh = new Uint8Array(8 + handle.bytes.length);
  const v = new DataView(fh.buffer);
  v.setUint32(0, handle.bytes.length, true);
  v.setInt32(4, handle.type, true);
  fh.set(handle.bytes, 8);
  return fh;
}

/** MAX_HANDLE_SZ of <linux/exportfs.h>. */
const MAX_HANDLE_SZ = 128;
/** AT_SYMLINK_FOLLOW: a /proc/PID/fd link names the open file, a deleted one too. */
const AT_SYMLINK_FOLLOW = 0x400;

/** name_to_handle_at(2) of `path`, its last link followed: the file's handle. */
export function fileHandleOf(path: string): FileHandle {
  const fh = new Uint8Array(8 + MAX_HANDLE_SZ);
  new DataView(fh.buffer).setUint32(0, MAX_HANDLE_SZ, true);
  const mountId = new Int32Array(1);
  const name = cstring(path);
  syscall(
    "name_to_handle_at",
    AT_FDCWD,
    addressOf(name),
    addressOf(fh),
    addressOf(mountId),
    AT_SYMLINK_FOLLOW,
  );
  const v = new DataView(fh.buffer);
  const size = v.getUint32(0, true);
  return { type: v.getInt32(4, true), bytes: fh.slice(8, 8 + size) };
}
