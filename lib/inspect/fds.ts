/** The open file descriptors of a process, with kind, fdinfo and an id per shared open file. */
import {
  Errno,
  fsMagic,
  KCMP,
  kcmp,
  major,
  MQUEUE_MAGIC,
  O,
  S_IF,
  SyscallError,
} from "../../ffi/mod.ts";
import { AccessDenied, NoSuchProcess, Unsupported } from "../errors.ts";
import { hexMask, parseKeyValues, procError, procExists, procPath } from "./procfs.ts";

/** What a descriptor refers to. */
export type FdKind =
  | "file"
  | "mqueue"
  | "directory"
  | "pipe"
  | "fifo"
  | "socket"
  | "eventfd"
  | "epoll"
  | "signalfd"
  | "timerfd"
  | "inotify"
  | "fanotify"
  | "memfd"
  | "tty"
  | "device"
  | "symlink"
  | "pidfd"
  | "userfaultfd"
  | "other";

/** fdinfo of an eventfd. */
export interface EventfdInfo {
  /** The counter value. */
  count: bigint;
  /** The eventfd id the kernel gives it. */
  id?: number;
  /** Created with EFD_SEMAPHORE. */
  semaphore?: boolean;
}

/** One descriptor an epoll instance watches (a `tfd:` line of its fdinfo). */
export interface EpollTarget {
  /** The watched descriptor number (in the process that added it). */
  tfd: number;
  /** The epoll event mask (EPOLLIN …). */
  events: number;
  /** The user data registered with the watch. */
  data: bigint;
  /** File position of the watched file. */
  pos: bigint;
  /** Inode of the watched file. */
  ino: bigint;
  /** Device of the watched file (kernel encoding). */
  sdev: number;
}

/** fdinfo of an epoll instance. */
export interface EpollInfo {
  /** The watched descriptors. */
  targets: EpollTarget[];
}

/** fdinfo of a signalfd. */
export interface SignalfdInfo {
  /** The signals it reads (bit n-1 is signal n). */
  sigmask: bigint;
}

/** A `(seconds, nanoseconds)` pair of timerfd fdinfo. */
export interface TimeSpec {
  /** Seconds. */
  sec: bigint;
  /** Nanoseconds. */
  nsec: bigint;
}

/** fdinfo of a timerfd. `value` is the time left until the next expiry. */
export interface TimerfdInfo {
  /** The clock (CLOCK_REALTIME 0, CLOCK_MONOTONIC 1 …). */
  clockid: number;
  /** Expirations not yet read. */
  ticks: bigint;
  /** Flags of the last timerfd_settime (TFD_TIMER_ABSTIME …). */
  settimeFlags: number;
  /** Time left until the next expiry. */
  value: TimeSpec;
  /** The period (zero for a one-shot timer). */
  interval: TimeSpec;
}

/** One watch of an inotify instance (an `inotify wd:` line). */
export interface InotifyWatch {
  /** The watch descriptor. */
  wd: number;
  /** Inode of the watched file. */
  ino: bigint;
  /** Device of the watched file (kernel encoding). */
  sdev: number;
  /** The events watched. */
  mask: number;
  /** The ignored events. */
  ignoredMask: number;
  /** The file handle of the watched inode as hex, with its type. */
  fhandle?: { type: number; handle: string };
}

/** fdinfo of an inotify instance. */
export interface InotifyInfo {
  /** The watches. */
  watches: InotifyWatch[];
}

/** One mark of a fanotify group (a `fanotify ino:`, `fanotify mnt_id:` or `fanotify sdev:` line). */
export interface FanotifyMark {
  /** What is marked: one inode, every file of one mount, or of one filesystem. */
  type: "inode" | "mount" | "filesystem";
  /** The marked inode (inode marks). */
  ino?: bigint;
  /** Kernel dev_t of the marked inode's or filesystem's superblock (inode and filesystem marks). */
  sdev?: number;
  /** The marked mount's id, as in /proc/PID/mountinfo (mount marks). */
  mntId?: number;
  /** FAN_MARK_* flags of the mark the kernel reports (IGNORED_SURV_MODIFY, EVICTABLE, IGNORE). */
  mflags: number;
  /** The events marked. */
  mask: number;
  /** The events ignored. */
  ignoredMask: number;
  /** The file handle of the marked inode as hex, with its type (inode marks). */
  fhandle?: { type: number; handle: string };
}

/** fdinfo of a fanotify group. */
export interface FanotifyInfo {
  /** fanotify_init(2) flags (FAN_CLASS_*, FAN_REPORT_*, FAN_CLOEXEC, FAN_NONBLOCK …). */
  flags: number;
  /** open(2) flags of the event descriptors the group hands out. */
  eventFlags: number;
  /** The marks, as the kernel lists them (the newest first). */
  marks: FanotifyMark[];
}

/** fdinfo of a pidfd. */
export interface PidfdInfo {
  /** The pid in the reader's namespace; -1 once the process is gone. */
  pid: number;
  /** The pid in each nested pid namespace, outermost first. */
  nspid: number[];
}

/** The kind's own fdinfo lines, parsed. */
export type FdInfo =
  | EventfdInfo
  | EpollInfo
  | SignalfdInfo
  | TimerfdInfo
  | InotifyInfo
  | FanotifyInfo
  | PidfdInfo
  | Record<string, string>;

/** One open descriptor of a process. */
export interface Fd {
  /** The process holding it. */
  pid: number;
  /** The descriptor number. */
  fd: number;
  /** What the descriptor refers to. */
  kind: FdKind;
  /** readlink of /proc/PID/fd/N: a path, `pipe:[123]`, `anon_inode:[eventfd]` … */
  target: string;
  /** open(2) flags from fdinfo (access mode, O_APPEND, O_NONBLOCK, O_CLOEXEC …). */
  flags: number;
  /** File position. */
  position: bigint;
  /** st_mode of the open file (0 type bits for anonymous inodes). */
  mode: number;
  /** O_CLOEXEC is set. */
  closeOnExec: boolean;
  /** Mount id (matches /proc/PID/mountinfo). */
  mntId: number;
  /** st_ino of the open file. */
  inode: bigint;
  /** st_dev of the open file. */
  dev: bigint;
  /** st_rdev of a device file. */
  rdev: bigint;
  /** The kind's own fdinfo (eventfd count, epoll targets …); other lines as strings. */
  info: FdInfo;
  /**
   * Equal for descriptors that share one open file description (dup, fork, SCM_RIGHTS), also
   * across the processes given to the same `FileTable`; different for an independent open.
   */
  fileId: number;
}

/** Whether a device major number is a terminal's. */
export function isTtyMajor(m: number): boolean {
  return m === 4 || m === 5 || (m >= 136 && m <= 143);
}

const ANON_KINDS: Record<string, FdKind> = {
  "[eventfd]": "eventfd",
  "[eventpoll]": "epoll",
  "[signalfd]": "signalfd",
  "[timerfd]": "timerfd",
  "inotify": "inotify",
  "[fanotify]": "fanotify",
  "[pidfd]": "pidfd",
  "[userfaultfd]": "userfaultfd",
};

/** Names a descriptor's kind from its link target and st_mode / st_rdev. */
export function fdKind(target: string, mode: number, rdev: number): FdKind {
  if (target.startsWith("pipe:[")) return "pipe";
  if (target.startsWith("socket:[")) return "socket";
  if (target.startsWith("anon_inode:")) return ANON_KINDS[target.slice(11)] ?? "other";
  if (target.startsWith("pidfd:")) return "pidfd";
  switch (mode & S_IF.MT) {
    case S_IF.REG:
      return target.startsWith("/memfd:") ? "memfd" : "file";
    case S_IF.DIR:
      return "directory";
    case S_IF.LNK:
      return "symlink"; // an O_PATH | O_NOFOLLOW descriptor of the link itself
    case S_IF.IFO:
      return "fifo";
    case S_IF.SOCK:
      return "socket";
    case S_IF.CHR:
      return isTtyMajor(major(rdev)) ? "tty" : "device";
    case S_IF.BLK:
      return "device";
  }
  return "other";
}

/**
 * Whether descriptor `link` (its target `target`, its st_mode `mode`) is a POSIX message queue's:
 * a file at the root of the mqueue file system (`/NAME`), asked of its file system only then.
 */
function isMqueue(target: string, mode: number, link: string): boolean {
  if ((mode & S_IF.MT) !== S_IF.REG || !/^\/[^/]+$/.test(target)) return false;
  try {
    return fsMagic(link) === MQUEUE_MAGIC;
  } catch {
    return false; // closed meanwhile: the caller finds out
  }
}

const COMMON_KEYS = new Set(["pos", "flags", "mnt_id", "ino"]);

function timeSpec(s: string | undefined): TimeSpec {
  const m = /\((\d+),\s*(\d+)\)/.exec(s ?? "");
  return m ? { sec: BigInt(m[1]), nsec: BigInt(m[2]) } : { sec: 0n, nsec: 0n };
}

/** The `key:value` fields of one fdinfo line after its prefix (`wd:1 ino:2 …`). */
function lineFields(rest: string): Record<string, string> {
  return Object.fromEntries(
    rest.trim().split(/\s+/).map((p) => {
      const c = p.indexOf(":");
      return [p.slice(0, c), p.slice(c + 1)];
    }),
  );
}

const hexField = (v: string | undefined) => parseInt(v ?? "0", 16);

/** The marks of a fanotify group's fdinfo. */
function fanotifyMarks(text: string): FanotifyMark[] {
  const marks: FanotifyMark[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("fanotify ") || line.startsWith("fanotify flags:")) continue;
    const f = lineFields(line.slice(9));
    const common = {
      mflags: hexField(f.mflags),
      mask: hexField(f.mask),
      ignoredMask: hexField(f.ignored_mask),
    };
    if (f.ino !== undefined) {
      marks.push({
        type: "inode",
        ino: BigInt(`0x${f.ino}`),
        sdev: hexField(f.sdev),
        ...common,
        fhandle: f.f_handle ? { type: Number(f["fhandle-type"]), handle: f.f_handle } : undefined,
      });
    } else if (f.mnt_id !== undefined) {
      marks.push({ type: "mount", mntId: hexField(f.mnt_id), ...common });
    } else if (f.sdev !== undefined) {
      marks.push({ type: "filesystem", sdev: hexField(f.sdev), ...common });
    }
  }
  return marks;
}

/** Parses the kind-specific part of an fdinfo file. */
export function parseFdInfo(kind: FdKind, text: string): FdInfo {
  const kv = parseKeyValues(text);
  switch (kind) {
    case "eventfd":
      return {
        count: hexMask(kv.get("eventfd-count")),
        id: kv.has("eventfd-id") ? Number(kv.get("eventfd-id")) : undefined,
        semaphore: kv.has("eventfd-semaphore") ? kv.get("eventfd-semaphore") === "1" : undefined,
      };
    case "epoll": {
      const targets: EpollTarget[] = [];
      const re =
        /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:(\d+)\s+ino:([0-9a-f]+)\s+sdev:([0-9a-f]+)/gm;
      for (const m of text.matchAll(re)) {
        targets.push({
          tfd: Number(m[1]),
          events: parseInt(m[2], 16),
          data: BigInt(`0x${m[3]}`),
          pos: BigInt(m[4]),
          ino: BigInt(`0x${m[5]}`),
          sdev: parseInt(m[6], 16),
        });
      }
      return { targets };
    }
    case "signalfd":
      return { sigmask: hexMask(kv.get("sigmask")) };
    case "timerfd":
      return {
        clockid: Number(kv.get("clockid") ?? 0),
        ticks: BigInt(kv.get("ticks") ?? 0),
        settimeFlags: parseInt(kv.get("settime flags") ?? "0", 8),
        value: timeSpec(kv.get("it_value")),
        interval: timeSpec(kv.get("it_interval")),
      };
    case "inotify": {
      const watches: InotifyWatch[] = [];
      for (const line of text.split("\n")) {
        if (!line.startsWith("inotify wd:")) continue;
        const f = lineFields(line.slice(8));
        watches.push({
          wd: Number(f.wd),
          ino: BigInt(`0x${f.ino}`),
          sdev: parseInt(f.sdev, 16),
          mask: parseInt(f.mask, 16),
          ignoredMask: parseInt(f.ignored_mask ?? "0", 16),
          fhandle: f.f_handle ? { type: Number(f["fhandle-type"]), handle: f.f_handle } : undefined,
        });
      }
      return { watches };
    }
    case "fanotify": {
      const group = lineFields(/^fanotify flags:.*$/m.exec(text)?.[0].slice(9) ?? "");
      return {
        flags: hexField(group.flags),
        eventFlags: hexField(group["event-flags"]),
        marks: fanotifyMarks(text),
      };
    }
    case "pidfd":
      return {
        pid: Number(kv.get("Pid") ?? -1),
        nspid: (kv.get("NSpid") ?? "").split(/\s+/).filter(Boolean).map(Number),
      };
  }
  const rest: Record<string, string> = {};
  for (const [k, v] of kv) if (!COMMON_KEYS.has(k)) rest[k] = v;
  return rest;
}

/** A descriptor link that names an inode of sockfs or pipefs. */
const INODE_LINK = /^(socket|pipe):\[\d+\]$/;

interface Representative {
  pid: number;
  fd: number;
  id: number;
}

/**
 * Gives one id per open file description, across every process it sees. Descriptors of the same
 * (dev, inode) are candidates; within that bucket one representative descriptor per open file is
 * kept, sorted by the kernel's kcmp(KCMP_FILE) order, and a new descriptor is placed by binary
 * search with kcmp. kcmp answers 0 exactly when two descriptors share the open file. A
 * representative that was closed meanwhile is dropped. Ids are small integers from 1.
 */
export class FileTable {
  #buckets = new Map<string, Representative[]>();
  #next = 1;
  /** stat of the sockets and pipes seen, by link: a tree holds each one many times over. */
  #inodes = new Map<string, Deno.FileInfo>();

  /**
   * stat of the file descriptor link `link` names, whose target is `target`: `read` once per
   * socket or pipe (`socket:[ino]` names one inode of one file system), every time for the rest.
   */
  statOf(target: string, read: () => Deno.FileInfo): Deno.FileInfo {
    if (!INODE_LINK.test(target)) return read();
    let st = this.#inodes.get(target);
    if (!st) this.#inodes.set(target, st = read());
    return st;
  }

  /**
   * The id of the open file behind `fd` of process `pid`, whose file has (dev, inode).
   * `single`: the inode has one open file at most (a socket of sockfs: the kernel's socket points
   * to its one file, and it cannot be opened again), so a descriptor on it needs no kcmp.
   */
  idOf(pid: number, fd: number, dev: bigint, inode: bigint, single = false): number {
    const key = `${dev}:${inode}`;
    let bucket = this.#buckets.get(key);
    if (!bucket) {
      bucket = [];
      this.#buckets.set(key, bucket);
    }
    if (single && bucket.length) return bucket[0].id;
    for (;;) {
      let lo = 0, hi = bucket.length;
      let stale = -1;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        const rep = bucket[mid];
        let order: number;
        try {
          order = kcmp(pid, rep.pid, KCMP.FILE, fd, rep.fd);
        } catch (err) {
          if (this.#stillOpen(pid, fd, err)) {
            stale = mid;
            break;
          }
          throw err;
        }
        if (order === 0) return rep.id;
        if (order === 1) hi = mid;
        else if (order === 2) lo = mid + 1;
        else throw new Unsupported(`kcmp cannot order files of processes ${pid}, ${rep.pid}`);
      }
      if (stale >= 0) {
        bucket.splice(stale, 1);
        continue;
      }
      const id = this.#next++;
      bucket.splice(lo, 0, { pid, fd, id });
      return id;
    }
  }

  // After a kcmp failure: true when our candidate is fine (so the representative is stale).
  #stillOpen(pid: number, fd: number, err: unknown): boolean {
    if (!(err instanceof SyscallError)) return false;
    if (err.errno === Errno.ENOSYS) {
      throw new Unsupported("kcmp is not in this kernel", { cause: err });
    }
    if (err.errno === Errno.EPERM) throw new AccessDenied(pid, `kcmp of fd ${fd}`, { cause: err });
    try {
      Deno.lstatSync(procPath(pid, `fd/${fd}`));
      return true;
    } catch {
      if (!procExists(pid)) throw new NoSuchProcess(pid, `fd ${fd}`, { cause: err });
      throw err;
    }
  }
}

/**
 * Reads one descriptor of process `pid`; null when it was closed meanwhile. `files` assigns
 * `fileId` (a fresh table when not given).
 */
export function readFd(pid: number, fd: number, files: FileTable): Fd | null {
  const link = procPath(pid, `fd/${fd}`);
  let target: string, infoText: string, st: Deno.FileInfo;
  try {
    target = Deno.readLinkSync(link);
    infoText = Deno.readTextFileSync(procPath(pid, `fdinfo/${fd}`));
    st = files.statOf(target, () => Deno.statSync(link));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound && procExists(pid)) return null;
    throw procError(err, pid, `fd ${fd}`);
  }
  const kv = parseKeyValues(infoText);
  const flags = parseInt(kv.get("flags") ?? "0", 8);
  const inode = BigInt(st.ino ?? kv.get("ino") ?? 0);
  const file = identify(
    pid,
    fd,
    target,
    files,
    st.mode ?? 0,
    BigInt(st.rdev ?? 0),
    BigInt(st.dev),
    inode,
  );
  if (!file) return null;
  return {
    ...file,
    flags,
    position: BigInt(kv.get("pos") ?? 0),
    closeOnExec: (flags & O.CLOEXEC) !== 0,
    mntId: Number(kv.get("mnt_id") ?? 0),
    info: parseFdInfo(file.kind, infoText),
  };
}

/**
 * What `readFdOfStat` reads of a descriptor: all but its fdinfo (position, mount, the kind's own).
 */
export type FdWithoutInfo = Omit<Fd, "position" | "mntId" | "info">;

/** The link of descriptor `fd` of process `pid` (`readFd`'s `target`); null once it is closed. */
export function readFdLink(pid: number, fd: number): string | null {
  try {
    return Deno.readLinkSync(procPath(pid, `fd/${fd}`));
  } catch (err) {
    if (err instanceof Deno.errors.NotFound && procExists(pid)) return null;
    throw procError(err, pid, `fd ${fd}`);
  }
}

/**
 * Descriptor `fd` of process `pid` without its fdinfo, from what syscalls on its open file told
 * (in the process, or on a copy of it): its fstat `st`, its F_GETFL `statusFlags` and its
 * close-on-exec. `target` is its link (`readFdLink`), or null where it tells nothing: a device's
 * (its kind is in its mode), whose descriptor then has "" as its target. Null when the
 * descriptor was closed meanwhile.
 */
export function readFdOfStat(
  pid: number,
  fd: number,
  target: string | null,
  st: { mode: number; rdev: bigint; dev: bigint; ino: bigint },
  statusFlags: number,
  closeOnExec: boolean,
  files: FileTable,
): FdWithoutInfo | null {
  const type = st.mode & S_IF.MT;
  if (target === null && type !== S_IF.CHR && type !== S_IF.BLK) {
    throw new RangeError(`fd ${fd} of process ${pid}: only a device's link may be left unread`);
  }
  const file = identify(pid, fd, target ?? "", files, st.mode, st.rdev, st.dev, st.ino);
  if (!file) return null;
  // fdinfo's `flags:` are the open file's status flags, with O_CLOEXEC for the descriptor's.
  return { ...file, flags: statusFlags | (closeOnExec ? O.CLOEXEC : 0), closeOnExec };
}

/** The kind and identity of descriptor `fd` of `pid`, whose file is (dev, inode); null if closed. */
function identify(
  pid: number,
  fd: number,
  target: string,
  files: FileTable,
  mode: number,
  rdev: bigint,
  dev: bigint,
  inode: bigint,
): Omit<FdWithoutInfo, "flags" | "closeOnExec"> | null {
  const kind = isMqueue(target, mode, procPath(pid, `fd/${fd}`))
    ? "mqueue"
    : fdKind(target, mode, Number(rdev));
  let fileId: number;
  try {
    // sockfs's (not a socket file on disk, which O_PATH opens many times).
    fileId = files.idOf(pid, fd, dev, inode, target.startsWith("socket:["));
  } catch (err) {
    // The descriptor was closed while we looked at it: it is not there any more.
    if (err instanceof SyscallError && err.errno === Errno.EBADF) return null;
    throw err;
  }
  return { pid, fd, kind, target, mode, inode, dev, rdev, fileId };
}

/**
 * The `flags:` fdinfo shows for descriptor `fd` of `pid`: the open file's status flags and access
 * mode, with O_CLOEXEC when the descriptor has FD_CLOEXEC. Read from outside: no syscall is run in
 * the process for it.
 */
export function fdFlags(pid: number, fd: number): number {
  let text: string;
  try {
    text = Deno.readTextFileSync(procPath(pid, `fdinfo/${fd}`));
  } catch (err) {
    throw procError(err, pid, `fd ${fd}`);
  }
  return parseInt(parseKeyValues(text).get("flags") ?? "0", 8);
}

/** The descriptor numbers of process `pid`, in ascending order. */
export function listFdNumbers(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const e of Deno.readDirSync(procPath(pid, "fd"))) out.push(Number(e.name));
  } catch (err) {
    throw procError(err, pid, "fd");
  }
  return out.sort((a, b) => a - b);
}

/**
 * Assigns file ids across several processes at once: every descriptor of every pid, with
 * `fileId` equal where two descriptors share one open file.
 */
export function assignFileIds(pids: number[], files: FileTable = new FileTable()): Fd[] {
  const out: Fd[] = [];
  for (const pid of pids) {
    for (const n of listFdNumbers(pid)) {
      const fd = readFd(pid, n, files);
      if (fd) out.push(fd);
    }
  }
  return out;
}
