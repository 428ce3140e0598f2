/**
 * The restore checks itself: once a process is made, before it runs, everything the image says
 * about it is read back from the kernel with the same readers the dump used (task state, threads,
 * POSIX timers, seccomp, mappings and their advice, the descriptor table) and compared with the
 * image. A difference names the process, the object, the field, the image's value and the
 * kernel's; the restore then fails (killing what it made) unless the user allowed it.
 *
 * What is compared and how:
 * - exactly: credentials and capability sets, umask, cwd, root, personality, parent-death signal,
 *   dumpable, THP disable, child subreaper, membarrier registrations, oom_score_adj, audit login
 *   uid and session id, comm and cmdline, the exe link, rlimits, mm fields and auxv, signal
 *   dispositions, pending signals (by number), each thread's name, credentials and securebits,
 *   scheduling (policy, priorities, nice, affinity, I/O priority, timer slack), blocked mask,
 *   sigaltstack, clear_child_tid, robust list, rseq, seccomp mode and filter count and
 *   no_new_privs, the threads themselves, zombie children (exit status, name, the thread that
 *   forked them, their group and session relative to their parent's), session or group
 *   leadership; fields that images of older versions lack are compared where the image has them;
 * - timers: the interval exactly, the time left no more than the image's (time passes);
 * - mappings: the address space as a sequence of ranges with their protection, sharing, kind,
 *   file (path and offset for file mappings), the VmFlags a restore gives again (madvise, mlock,
 *   mmap flags, mseal, grows-down), page size and guard pages, after merging neighbours the
 *   kernel may have merged (or kept apart) differently; the special mappings' addresses (and that
 *   those the process had unmapped are not there);
 * - memfds and deleted files: size, mode, owner, seals, a deleted file's atime and mtime;
 * - descriptors: the set of numbers, each one's close-on-exec, access mode and status flags,
 *   kind, owner and signal of its I/O signals (F_GETOWN_EX, F_GETSIG), position (files), path
 *   (files reopened by path, FIFOs; " (deleted)" for removed ones) and locks and leases, the
 *   process a pidfd names, a fanotify group's flags and marks; which descriptors share one open
 *   file, and which processes share one descriptor table or fs context, across the whole tree.
 *   An external file is whatever open file the restoring tool handed in (`inheritFds`): another
 *   object than the dumped one, maybe of another kind, so only its numbers, close-on-exec, flags,
 *   owner and sharing are compared.
 * Not compared: registers and the final signal mask (the restore sets them itself with ptrace
 * right after), the parent (a restored root is a child of the tool or of a namespace's init),
 * per-kind contents of files (queued bytes, socket options).
 */
import {
  close,
  decodeStat,
  F,
  FD_CLOEXEC,
  fstat,
  getRegs,
  ITIMER,
  KCMP,
  O,
  O_SYNC_BIT,
  open,
  pidfdOpen,
  PROCMAP_VMA,
  RLIMIT,
  S_IF,
  SETFL_MASK,
  SIG,
  SIGEV,
  stat,
  STAT_SIZE,
  syscall,
} from "../../ffi/mod.ts";
import { readLocks } from "../files/locks.ts";
import { type OwnerState, ownerState, readOwner } from "../files/owner.ts";
import { copyIsHarmless } from "../files/socket/socket_copy.ts";
import type {
  CgroupMembership,
  FdEntry,
  FileEntry,
  ItimerEntry,
  MappingEntry,
  PendingSignal,
  ProcessEntry,
  RlimitEntry,
  SigactionEntry,
  ThreadEntry,
  ZombieEntry,
} from "../image/schema.ts";
import {
  type FanotifyInfo,
  type Fd,
  type FdKind,
  type FdWithoutInfo,
  FileTable,
  listFdNumbers,
  type PidfdInfo,
  readFd,
  readFdLink,
  readFdOfStat,
} from "../inspect/fds.ts";
import { kcmpGroups } from "../inspect/kcmp_groups.ts";
import { type Mapping, specialOf } from "../inspect/mappings.ts";
import { Process } from "../inspect/process.ts";
import { namespaceIds, readProcLink, threadIds } from "../inspect/procfs.ts";
import { keptFlags } from "../memory/advice.ts";
import { readSmaps, type SmapsListing } from "../memory/smaps.ts";
import { guardRanges } from "../inspect/pages.ts";
import { ImageReader } from "../image/mod.ts";
import { PROCESS_META, processMetaName } from "../image/schema.ts";
import { freeze, type FrozenProcess } from "../ptrace/freeze.ts";
import { Injector } from "../ptrace/inject.ts";
import { dumpPosixTimers } from "../task/posix_timers.ts";
import { dumpSeccomp } from "../task/seccomp.ts";
import { dumpTask } from "../task/task.ts";
import { cgroupView } from "../task/cgroups.ts";
import { queueThreadDump } from "../task/threads.ts";

/** One way a restored process differs from its image. */
export interface Difference {
  /** The process, by its dumped pid. */
  pid: number;
  /** What in it: `process`, `thread 123`, `fd 4`, `mapping 0x7f00…-0x7f10…`, `timer 2` … */
  object: string;
  /** The field: `umask`, `flags`, `prot` … */
  field: string;
  /** The image's value, as text. */
  image: string;
  /** The kernel's value now, as text. */
  kernel: string;
}

/** A restored process ready to be compared: made, stopped, its injectors still usable. */
export interface RestoredProcess {
  /** Its image entry (as the restore used it: a shell job's terminal already moved). */
  entry: ProcessEntry;
  /** Its pid as the tool sees it. */
  hostPid: number;
  /** Runs syscalls in each thread, by dumped tid (scratch memory mapped). */
  injectors: ReadonlyMap<number, Injector>;
  /** Dumped pid or tid → the tool's. */
  hostId(id: number): number;
  /** Tool's pid or tid → the dumped one. */
  imageId(id: number): number;
  /** Address ranges the restore still uses in it (its scratch memory): not compared. */
  ignore: { start: bigint; end: bigint }[];
  /** Its session and group were chosen by the restore (a shell job's root). */
  sessionChosen?: boolean;
  /**
   * It dies with the tool (a restore's, traced with PTRACE_O_EXITKILL): its injected reads may
   * be batched (`Injector.batch`), which a live process must not be exposed to.
   */
  diesWithTool?: boolean;
  /**
   * When (performance.now()) the restore started arming its timers: one with less time left
   * than has passed since may have fired before the comparison (its signal pending, a periodic
   * one reloaded). Absent: none may have (the comparison of a live process).
   */
  timersArmedAt?: number;
}

const hex = (n: bigint | number) => `0x${n.toString(16)}`;

/** What setting a CPU-time interval timer may add to it (a tick, with room to spare). */
const CPU_TIMER_SLACK_US = 10_000n;

/** Text for values in messages: small numbers in decimal, addresses and masks in hex. */
function show(v: unknown): string {
  if (v === undefined) return "(none)";
  if (typeof v === "bigint") return v < 1_000_000_000n ? String(v) : hex(v);
  if (typeof v === "string") return JSON.stringify(v);
  if (Array.isArray(v)) return `[${v.map(show).join(", ")}]`;
  if (v instanceof Uint8Array) return `${v.length} bytes ${hex(BigInt(fingerprint(v)))}`;
  if (v && typeof v === "object") {
    return `{${Object.entries(v).map(([k, x]) => `${k}: ${show(x)}`).join(", ")}}`;
  }
  return String(v);
}

/** A short fingerprint of bytes, for messages. */
function fingerprint(b: Uint8Array): number {
  let h = 0;
  for (const x of b) h = (h * 31 + x) >>> 0;
  return h;
}

/** Collects differences for one process. */
class Diff {
  readonly list: Difference[] = [];
  constructor(readonly pid: number) {}

  /** Records a difference when `image` and `kernel` are not equal (deep, bigints by value). */
  same(object: string, field: string, image: unknown, kernel: unknown): void {
    if (image === kernel) return; // the common case, without making text of either
    if (show(image) !== show(kernel)) this.add(object, field, image, kernel);
  }

  add(object: string, field: string, image: unknown, kernel: unknown): void {
    this.list.push({ pid: this.pid, object, field, image: show(image), kernel: show(kernel) });
  }

  /**
   * Pairs the image's objects with the kernel's by `key`: one on a side only is a difference
   * ("exists"), and `compare` gets each pair, named by `name`.
   */
  pair<T>(
    image: Iterable<T>,
    kernel: Iterable<T>,
    key: (x: T) => unknown,
    name: (x: T) => string,
    compare: (at: string, image: T, kernel: T) => void,
  ): void {
    const left = new Map([...kernel].map((x) => [key(x), x]));
    for (const want of image) {
      const got = left.get(key(want));
      left.delete(key(want));
      if (got === undefined) this.add(name(want), "exists", true, false);
      else compare(name(want), want, got);
    }
    for (const got of left.values()) this.add(name(got), "exists", false, true);
  }

  /**
   * `pair` for two lists in order of their `start` (each strictly increasing), walked side by
   * side: `equal` says at once whether a pair is the same, and only a pair that is not is named
   * and given to `compare`. Differences come out as `pair` gives them.
   */
  pairSorted<T extends { start: bigint }>(
    image: readonly T[],
    kernel: readonly T[],
    name: (x: T) => string,
    equal: (image: T, kernel: T) => boolean,
    compare: (at: string, image: T, kernel: T) => void,
  ): void {
    const inOrder = (xs: readonly T[]) => xs.every((x, i) => i === 0 || xs[i - 1].start < x.start);
    if (!inOrder(image) || !inOrder(kernel)) {
      this.pair(image, kernel, (x) => x.start, name, (at, w, g) => {
        if (!equal(w, g)) compare(at, w, g);
      });
      return;
    }
    const kernelOnly: T[] = [];
    let k = 0;
    for (const want of image) {
      while (k < kernel.length && kernel[k].start < want.start) kernelOnly.push(kernel[k++]);
      if (k < kernel.length && kernel[k].start === want.start) {
        const got = kernel[k++];
        if (!equal(want, got)) compare(name(want), want, got);
      } else this.add(name(want), "exists", true, false);
    }
    while (k < kernel.length) kernelOnly.push(kernel[k++]);
    for (const got of kernelOnly) this.add(name(got), "exists", false, true);
  }
}

/**
 * Status flags that belong to an open file and that a restore must give back (F_GETFL shows
 * them all; O_NOFOLLOW too, kept from the open).
 */
const STATUS_FLAGS = O.ACCMODE | SETFL_MASK | O.DIRECT | O.DSYNC | O.PATH | O_SYNC_BIT |
  O.NOFOLLOW;

/**
 * The inspection kinds each image file kind may show as. Not `external`: the file handed in for
 * it may be of any kind (a pipe dumped, a file handed in).
 */
const FD_KINDS: Record<string, FdKind[]> = {
  regular: ["file", "directory", "symlink", "memfd"],
  device: ["device", "tty"],
  pty: ["tty"],
  pipe: ["pipe"],
  fifo: ["fifo"],
  eventfd: ["eventfd"],
  epoll: ["epoll"],
  signalfd: ["signalfd"],
  timerfd: ["timerfd"],
  inotify: ["inotify"],
  fanotify: ["fanotify"],
  pidfd: ["pidfd"],
  memfd: ["memfd", "file"],
  mqueue: ["mqueue"],
  socket: ["socket"],
  "unix-pair": ["socket"],
  "unix-pending": ["socket"],
  "tcp-stream": ["socket"],
  "tcp-pending": ["socket"],
};

/**
 * How one field of an entry is compared; fields without a rule are compared exactly (deeply), so
 * an attribute added to the dump is checked at restore without a line here.
 */
type Rule =
  | "skip"
  | ((d: Diff, at: string, field: string, image: unknown, kernel: unknown) => void);

/** A field images of older versions lack: compared (by `rule`, else exactly) where it is there. */
const added = (rule?: Exclude<Rule, "skip">): Rule => (d, at, field, image, kernel) => {
  if (image === undefined) return;
  if (rule) rule(d, at, field, image, kernel);
  else d.same(at, field, image, kernel);
};

const signos = (list: { signo: number }[]) => list.map((s) => s.signo).sort((a, b) => a - b);

/**
 * Signals compared by number (their siginfo holds the sender's pid and uid, the tool's now);
 * one more than the image's is right when `firedSince` says a timer restored may have sent it.
 */
const bySigno =
  (firedSince?: (s: PendingSignal) => boolean): Rule => (d, at, field, image, kernel) => {
    const want = signos(image as PendingSignal[]);
    const missing = [...want];
    const extra = (kernel as PendingSignal[]).filter((s) => {
      const i = missing.indexOf(s.signo);
      if (i < 0) return true;
      missing.splice(i, 1);
      return false;
    });
    if (missing.length || !extra.every((s) => firedSince?.(s))) {
      d.same(at, field, want, signos(kernel as PendingSignal[]));
    }
  };

/** si_code of a signal a POSIX timer sent (its siginfo names the timer), and the kernel's. */
const SI_TIMER = -2, SI_KERNEL = 0x80;

/**
 * Which timers of a restored process may have fired between their arming and the comparison:
 * those with less time left in the image than has passed since (an ITIMER_REAL armed without
 * time left, its SIGALRM pending, fires at once: see itimers.ts).
 */
class TimerFirings {
  readonly #passedNs: bigint;
  constructor(readonly entry: ProcessEntry, armedAt: number | undefined) {
    this.#passedNs = armedAt === undefined
      ? -1n
      : BigInt(Math.ceil((performance.now() - armedAt) * 1e6));
  }

  /** Whether a timer armed with `valueNs` left may have fired by now. */
  mayHaveFired(valueNs: bigint): boolean {
    return this.#passedNs >= 0n && valueNs <= this.#passedNs;
  }

  /**
   * Whether pending signal `s` of the process (`tid` undefined) or of thread `tid` may come from
   * a timer that fired: SIGALRM from ITIMER_REAL, or a POSIX timer's own signal, naming it.
   */
  sent(s: PendingSignal, tid?: number): boolean {
    const info = new DataView(s.siginfo.buffer, s.siginfo.byteOffset, s.siginfo.byteLength);
    const code = info.getInt32(8, true);
    if (tid === undefined && s.signo === SIG.SIGALRM && code === SI_KERNEL) {
      const real = this.entry.itimers.find((t) => t.which === ITIMER.REAL);
      return !!real && this.mayHaveFired(real.valueUs * 1000n);
    }
    if (code !== SI_TIMER) return false;
    const timer = (this.entry.posixTimers ?? []).find((t) => t.id === info.getInt32(16, true));
    if (!timer || timer.signo !== s.signo || timer.valueNs === 0n) return false;
    const toThread = (timer.notify & SIGEV.THREAD_ID) !== 0;
    if (toThread !== (tid !== undefined) || (toThread && timer.targetTid !== tid)) return false;
    return this.mayHaveFired(timer.valueNs);
  }

  /** Interval timers: the interval exactly, the time left no more than the image's, unless fired. */
  readonly itimers: Rule = (d, _at, _field, image, kernel) => {
    const want = image as ItimerEntry[], now = kernel as ItimerEntry[];
    for (const which of [ITIMER.REAL, ITIMER.VIRTUAL, ITIMER.PROF]) {
      const w = want.find((t) => t.which === which);
      const n = now.find((t) => t.which === which);
      const what = `itimer ${which}`;
      // Fired since armed: a one-shot is gone; a periodic ITIMER_REAL waits, without time left,
      // for its SIGALRM to be taken (which reloads it).
      const fired = which === ITIMER.REAL && !!w && this.mayHaveFired(w.valueUs * 1000n);
      if (fired && !n && w.intervalUs === 0n) continue;
      if (!w || !n) {
        d.same(what, "armed", !!w, !!n);
        continue;
      }
      d.same(what, "interval (µs)", w.intervalUs, n.intervalUs);
      // CPU-time timers are kept in ticks: setting one rounds it up by as much as one (4 ms).
      const slack = which === ITIMER.REAL ? 0n : CPU_TIMER_SLACK_US;
      const most = fired && w.intervalUs > w.valueUs ? w.intervalUs : w.valueUs;
      if (n.valueUs > most + slack) d.add(what, "time left (µs)", w.valueUs, n.valueUs);
    }
  };
}

/** Objects compared field by field, so a message names the field that differs. */
const byField: Rule = (d, at, field, image, kernel) => {
  const w = (image ?? {}) as Record<string, unknown>, n = (kernel ?? {}) as Record<string, unknown>;
  for (const k of new Set([...Object.keys(w), ...Object.keys(n)])) {
    d.same(at, `${field}.${k}`, w[k], n[k]);
  }
};

const RLIMIT_NAMES = Object.fromEntries(Object.entries(RLIMIT).map(([k, v]) => [v, k]));

/** Process-wide fields: how each is compared (the rest exactly). */
const TASK_RULES: Record<string, Rule> = {
  // Who the process is and where it hangs: the restore chooses these (its pid is the image's
  // by construction, its parent the tool or a namespace's init), or they are compared below.
  pid: "skip",
  ppid: "skip",
  sid: "skip",
  pgid: "skip",
  tty: "skip",
  stopped: "skip",
  // Recorded for inspection: a restore does not make them again.
  namespaceInodes: "skip",
  // A container's, made by the restore before anything else (lib/namespaces/), root only.
  namespaces: "skip",
  zombies: (d, _at, _f, image, kernel) => {
    // Both sides as zombieView made them.
    d.pair(
      image as ZombieView[],
      kernel as ZombieView[],
      (z) => z.pid,
      (z) => `zombie child ${z.pid}`,
      (at, z, n) => compareFields(d, at, z, n, {}),
    );
  },
  exe: (d, at, field, image, kernel) => {
    const path = (x: unknown) => (x as { path: string } | null)?.path;
    if (image) d.same(at, field, path(image), path(kernel));
  },
  umask: (d, at, field, image, kernel) =>
    d.same(at, field, `0${(image as number).toString(8)}`, `0${(kernel as number).toString(8)}`),
  creds: byField,
  mm: byField,
  // With the timers that may have fired (compareTask).
  sharedPending: bySigno(),
  rlimits: (d, at, _field, image, kernel) => {
    const now = new Map((kernel as RlimitEntry[]).map((r) => [r.resource, r]));
    for (const r of image as RlimitEntry[]) {
      const n = now.get(r.resource);
      const name = RLIMIT_NAMES[r.resource] ?? String(r.resource);
      d.same(at, `rlimit ${name} (soft, hard)`, [r.soft, r.hard], n && [n.soft, n.hard]);
    }
  },
  oomScoreAdj: added(),
  cgroups: added((d, at, field, image, kernel) =>
    d.same(
      at,
      field,
      (image as CgroupMembership[]).map(cgroupView),
      (kernel as CgroupMembership[]).map(cgroupView),
    )
  ),
  thpDisable: added(),
  childSubreaper: added(),
  membarrier: added(),
  dumpable: added(),
  audit: added((d, at, _f, image, kernel) => {
    type Audit = { loginuid: number; sessionid: number } | undefined;
    const w = image as Audit, n = kernel as Audit;
    d.same(at, "audit login uid", w?.loginuid, n?.loginuid);
    d.same(
      at,
      "audit session id (the kernel makes a new one whenever it sets a login uid: it comes back " +
        "only when restored from the same login session)",
      w?.sessionid,
      n?.sessionid,
    );
  }),
  sigactions: (d, _at, _field, image, kernel) => {
    const now = new Map((kernel as SigactionEntry[]).map((s) => [s.signo, s]));
    for (const s of image as SigactionEntry[]) {
      d.same(`signal ${s.signo}`, "sigaction", s, now.get(s.signo));
      now.delete(s.signo);
    }
    for (const s of now.values()) d.add(`signal ${s.signo}`, "sigaction", undefined, s);
  },
};

/** Per-thread fields: how each is compared (the rest exactly). */
const THREAD_RULES: Record<string, Rule> = {
  // Set by the restore itself right before the threads run: registers and the final mask.
  tid: "skip",
  regs: "skip",
  xstate: "skip",
  sigmask: "skip",
  sleepRemainingNs: "skip",
  // Compared with the process's own pids at every level (compareNestedPids).
  nestedTids: "skip",
  pending: bySigno(), // with the timers that may have fired (compareThreads)
  seccomp: (d, at, _f, image, kernel) => {
    type S = { mode: number; filters: number[] } | undefined;
    const w = image as S, n = kernel as S;
    d.same(at, "seccomp mode", w?.mode ?? 0, n?.mode ?? 0);
    d.same(at, "seccomp filters", w?.filters.length ?? 0, n?.filters.length ?? 0);
  },
  noNewPrivs: (d, at, field, image, kernel) => d.same(at, field, image ?? false, kernel ?? false),
  creds: added(byField),
  securebits: added(),
  scheduling: added(byField),
  // Absent: in its process's groups, in older images too.
  cgroups: (d, at, field, image, kernel) =>
    d.same(
      at,
      field,
      ((image ?? []) as CgroupMembership[]).map(cgroupView),
      ((kernel ?? []) as CgroupMembership[]).map(cgroupView),
    ),
};

/** Compares every field of `image` with `kernel`'s by `rules`, exactly where there is none. */
function compareFields(
  d: Diff,
  at: string,
  image: object,
  kernel: object,
  rules: Record<string, Rule>,
): void {
  const w = image as Record<string, unknown>, n = kernel as Record<string, unknown>;
  for (const field of new Set([...Object.keys(w), ...Object.keys(n)])) {
    const rule = rules[field];
    if (rule === "skip") continue;
    if (rule) rule(d, at, field, w[field], n[field]);
    else d.same(at, field, w[field], n[field]);
  }
}

/** A zombie child as compared: by the image's ids, its group and session told relative to its
 * parent's (which the restore may choose: a shell job's). */
interface ZombieView {
  pid: number;
  comm: string;
  status: number;
  group: string;
  session: string;
  thread: string;
}

function zombieView(
  z: ZombieEntry,
  parent: { pgid: number; sid: number },
  imageId: (id: number) => number,
): ZombieView {
  const relative = (id: number, parentsId: number) =>
    id === z.pid ? "its own" : id === parentsId ? "its parent's" : `${imageId(id)}`;
  return {
    pid: imageId(z.pid),
    comm: z.comm,
    status: z.status,
    group: relative(z.pgid, parent.pgid),
    session: relative(z.sid, parent.sid),
    thread: z.thread === undefined ? "main" : `${imageId(z.thread)}`,
  };
}

/** Compares the process-wide state (dumpTask's fields) and the leadership of session and group. */
async function compareTask(p: RestoredProcess, d: Diff): Promise<void> {
  const e = p.entry;
  const inj = p.injectors.get(e.pid) ?? p.injectors.values().next().value!;
  const live = await dumpTask(await Process.open(p.hostPid), inj);
  const image: Record<string, unknown> = Object.fromEntries(
    Object.keys(live).map((k) => [k, e[k as keyof ProcessEntry]]),
  );
  image.zombies = (e.zombies ?? []).map((z) => zombieView(z, e, (id) => id));
  const kernel = {
    ...live,
    zombies: (live.zombies ?? []).map((z) => zombieView(z, live, p.imageId)),
  };
  const fired = new TimerFirings(e, p.timersArmedAt);
  compareFields(d, "process", image, kernel, {
    ...TASK_RULES,
    sharedPending: bySigno((s) => fired.sent(s)),
    itimers: fired.itimers,
  });
  if (!p.sessionChosen) {
    d.same("process", "leads its session", e.sid === e.pid, live.sid === live.pid);
    d.same("process", "leads its process group", e.pgid === e.pid, live.pgid === live.pid);
  }
}

/** Compares every thread: the set, and each one's kernel state but its registers. */
function compareThreads(p: RestoredProcess, d: Diff): void {
  const e = p.entry;
  const live = threadIds(p.hostPid).map((t) => p.imageId(t)).sort((a, b) => a - b);
  d.same("process", "threads", e.threads.map((t) => t.tid).sort((a, b) => a - b), live);
  const threads = e.threads.filter((t) => p.injectors.has(t.tid));
  // Each thread's injected reads are one run of queued calls, made in every thread at once.
  const got = Injector.inEachThread(
    threads.map((t) => p.injectors.get(t.tid)!),
    (inj) =>
      queueThreadDump(
        p.hostPid,
        { tid: inj.tid, regs: getRegs(inj.tid), held: inj.deferred },
        inj,
      ),
  );
  const pairs = threads.map((t, i): [ThreadEntry, ThreadEntry] => [t, {
    ...got[i],
    tid: p.injectors.get(t.tid)!.tid,
  }]);
  dumpSeccomp(p.hostPid, pairs.map(([, got]) => got));
  const fired = new TimerFirings(e, p.timersArmedAt);
  for (const [t, got] of pairs) {
    const pending = bySigno((s) => fired.sent(s, t.tid));
    compareFields(d, `thread ${t.tid}`, t, got, { ...THREAD_RULES, pending });
  }
}

/** The pid namespace `hostPid` lives in, or makes its children in; null once it is gone. */
function pidNamespaceOf(hostPid: number, which = "pid"): string | null {
  try {
    return readProcLink(hostPid, `ns/${which}`);
  } catch {
    return null;
  }
}

/**
 * Compares a process's and its threads' ids at every level of the pid namespaces nested below
 * the image's (NSpid), the namespace it lives in (its init's), and the one it makes children in.
 */
function compareNestedPids(p: RestoredProcess, d: Diff): void {
  const e = p.entry;
  const tail = (host: number, n: number) => namespaceIds(host).slice(-n);
  if (e.nestedPid) {
    const want = [e.pid, ...e.nestedPid.pids];
    d.same("process", "pids at every level", want, tail(p.hostPid, want.length));
    d.same(
      "process",
      "pid namespace (its init's)",
      pidNamespaceOf(p.hostId(e.nestedPid.init)),
      pidNamespaceOf(p.hostPid),
    );
    for (const t of e.threads) {
      if (t.tid === e.pid) continue;
      const ids = [t.tid, ...t.nestedTids ?? []];
      d.same(`thread ${t.tid}`, "tids at every level", ids, tail(p.hostId(t.tid), ids.length));
    }
  }
  const children = e.childPidNamespace;
  d.same(
    "process",
    "pid namespace for its children",
    children === undefined ? "its own" : `that of process ${children}`,
    pidNamespaceOf(p.hostPid, "pid_for_children") === pidNamespaceOf(p.hostPid)
      ? "its own"
      : children !== undefined &&
          pidNamespaceOf(p.hostPid, "pid_for_children") ===
            pidNamespaceOf(p.hostId(children))
      ? `that of process ${children}`
      : "another one",
  );
}

/**
 * Compares the POSIX timers: ids, clocks, notification, interval; time left may only shrink,
 * unless the timer may have fired since it was armed (then a one-shot has none, a periodic one
 * no more than its interval).
 */
function comparePosixTimers(p: RestoredProcess, d: Diff): void {
  const e = p.entry;
  const fired = new TimerFirings(e, p.timersArmedAt);
  const inj = p.injectors.get(e.pid) ?? p.injectors.values().next().value!;
  const live = dumpPosixTimers(p.hostPid, inj);
  d.pair(e.posixTimers ?? [], live, (t) => t.id, (t) => `timer ${t.id}`, (at, t, now) => {
    d.same(at, "clock", t.clockid, now.clockid);
    d.same(at, "signal", t.signo, now.signo);
    d.same(at, "sigval", t.sigval, now.sigval);
    d.same(at, "notify", t.notify, now.notify);
    d.same(at, "interval (ns)", t.intervalNs, now.intervalNs);
    const shrank = (t.valueNs === 0n) === (now.valueNs === 0n) && now.valueNs <= t.valueNs;
    const reloaded = t.intervalNs > 0n
      ? now.valueNs > 0n && now.valueNs <= t.intervalNs
      : now.valueNs === 0n;
    if (!shrank && !(t.valueNs > 0n && fired.mayHaveFired(t.valueNs) && reloaded)) {
      d.add(at, "time left (ns)", t.valueNs, now.valueNs);
    }
  });
}

/** What a range of the address space is, as far as the comparison goes. */
interface Span {
  start: bigint;
  end: bigint;
  prot: number;
  shared: boolean;
  kind: string;
  /** The file of a file mapping, with the offset of `start` in it. */
  file?: string;
  offset?: bigint;
  /** The kept VmFlags (`MappingEntry.advice`), `gd` (growsDown) and the page size, as text. */
  advice: string;
  /** Guard pages, as text. */
  guards: string;
}

/** Neighbours that are one range to the comparison become one span. */
function merged(spans: Span[]): Span[] {
  const out: Span[] = [];
  for (const s of spans) {
    const last = out[out.length - 1];
    const contiguous = last && last.end === s.start && last.prot === s.prot &&
      last.shared === s.shared && last.kind === s.kind && last.file === s.file &&
      last.advice === s.advice && last.guards === "" && s.guards === "" &&
      (s.offset === undefined || last.offset! + (last.end - last.start) === s.offset);
    if (contiguous) last.end = s.end;
    else out.push({ ...s });
  }
  return out;
}

/** The flags compared, as text: kept flags, `gd`, and a page size other than 4 KiB. */
function vmFlagText(kept: string[], growsDown: boolean, pageSize: number | undefined): string {
  const flags = [...kept, ...(growsDown ? ["gd"] : [])].sort();
  if (pageSize && pageSize !== 4096) flags.push(`${pageSize / 1024}kB pages`);
  return flags.join(" ");
}

const rangesText = (rs: { start: bigint; end: bigint }[] | undefined) =>
  (rs ?? []).map((r) => `${hex(r.start)}-${hex(r.end)}`).join(" ");

function imageSpan(m: MappingEntry): Span {
  const file = m.source.type === "file" ? m.source.path : undefined;
  return {
    start: m.start,
    end: m.end,
    prot: m.prot,
    shared: m.shared,
    kind: m.kind,
    ...(file !== undefined ? { file, offset: m.offset } : {}),
    advice: vmFlagText(m.advice ?? [], m.growsDown, m.pageSize),
    guards: rangesText(m.guards),
  };
}

/**
 * Compares the address space (special mappings by address, the rest as merged spans); `smaps`
 * is the process's, read once it was made (`readSmaps`): its listing and flags both. The
 * image's spans are made while the kernel makes the text; the two sorted lists are then walked
 * side by side.
 */
async function compareMappings(
  p: RestoredProcess,
  d: Diff,
  smaps: Promise<SmapsListing>,
): Promise<void> {
  const e = p.entry;
  const want = merged(e.mappings.map(imageSpan));
  const { mappings: live, flags: flagsOf, pageSizes } = await smaps;
  const ignored = (m: Mapping) => p.ignore.some((r) => r.start <= m.start && m.end <= r.end);
  const special = new Set(["vdso", "vvar", "vvar_vclock", "vsyscall"]);
  // Most mappings share a few sets of flags (one array a set): their text is made once a set.
  const adviceTexts = new Map<string[], Map<number, string>>();
  const spans: Span[] = [];
  for (let i = 0; i < live.length; i++) {
    const m = live[i];
    const kind = m.kind;
    if (special.has(kind) || ignored(m)) continue;
    const file = kind === "file" ? m.path ?? undefined : undefined;
    const flags = flagsOf[i];
    const bits = m.flags & (PROCMAP_VMA.READ | PROCMAP_VMA.WRITE | PROCMAP_VMA.EXEC);
    const shared = (m.flags & PROCMAP_VMA.SHARED) !== 0;
    let texts = adviceTexts.get(flags);
    if (!texts) adviceTexts.set(flags, texts = new Map());
    // What the text depends on besides the flags: sharing, PROT_WRITE, the page size.
    const key = pageSizes[i] * 4 + (shared ? 2 : 0) + (bits & PROCMAP_VMA.WRITE ? 1 : 0);
    let advice = texts.get(key);
    if (advice === undefined) {
      const kept = keptFlags(flags, { shared, writable: (bits & PROCMAP_VMA.WRITE) !== 0 });
      texts.set(key, advice = vmFlagText(kept, flags.includes("gd"), pageSizes[i]));
    }
    spans.push({
      start: m.start,
      end: m.end,
      prot: bits,
      shared,
      kind,
      ...(file !== undefined ? { file, offset: m.offset } : {}),
      advice,
      guards: flags.includes("gu") ? rangesText(guardRanges(p.hostPid, m.start, m.end)) : "",
    });
  }
  const got = merged(spans);
  const name = (s: Span) =>
    `mapping ${hex(s.start)}-${hex(s.end)}${s.file ? ` ${s.file}` : ` (${s.kind})`}`;
  d.pairSorted(
    want,
    got,
    name,
    (w, g) =>
      w.end === g.end && w.prot === g.prot && w.shared === g.shared && w.kind === g.kind &&
      w.file === g.file && w.offset === g.offset && w.advice === g.advice &&
      w.guards === g.guards,
    (at, w, g) => {
      d.same(at, "end", w.end, g.end);
      d.same(at, "prot", w.prot, g.prot);
      d.same(at, "shared", w.shared, g.shared);
      d.same(at, "kind", w.kind, g.kind);
      d.same(at, "file", w.file, g.file);
      d.same(at, "offset", w.offset, g.offset);
      d.same(at, "VmFlags (madvise, mlock, mmap flags, mseal)", w.advice, g.advice);
      d.same(at, "guard pages", w.guards, g.guards);
    },
  );
  const now = specialOf(live);
  const where = (k: "vdso" | "vvar" | "vvar_vclock") => {
    const m = now.get(k);
    return m ? [m.start, m.end] : undefined;
  };
  const s = e.special;
  // One the process had unmapped must not be there either (the restorer's own, left behind).
  d.same("[vdso]", "address", s.vdso && [s.vdso.start, s.vdso.end], where("vdso"));
  d.same("[vvar]", "address", s.vvar && [s.vvar.start, s.vvar.end], where("vvar"));
  d.same(
    "[vvar_vclock]",
    "address",
    s.vvarVclock && [s.vvarVclock.start, s.vvarVclock.end],
    where("vvar_vclock"),
  );
}

/**
 * Compares each memfd and deleted file with its image: size, mode, owner, seals, and a deleted
 * file's access and modification times (fields older images lack are not compared). Each is
 * reached through a mapping of it (map_files) or a descriptor on it.
 */
function compareStoredFiles(p: RestoredProcess, d: Diff): void {
  const e = p.entry;
  const paths = new Map<number, string>();
  for (const m of e.mappings) {
    if (m.source.type !== "stored-file" || paths.has(m.source.object)) continue;
    paths.set(
      m.source.object,
      `/proc/${p.hostPid}/map_files/${hex(m.start).slice(2)}-${hex(m.end).slice(2)}`,
    );
  }
  const files = new Map(e.files.map((f) => [f.id, f]));
  for (const fd of e.fds) {
    const object = files.get(fd.file)?.object;
    if (typeof object === "number" && !paths.has(object)) {
      paths.set(object, `/proc/${p.hostPid}/fd/${fd.fd}`);
    }
  }
  for (const obj of e.objects) {
    if (obj.kind !== "memfd" && obj.kind !== "deleted-file") continue;
    const path = paths.get(obj.id);
    if (!path) continue;
    const at = `${obj.kind} ${JSON.stringify(obj.name)}`;
    let fd: number;
    try {
      fd = open(path, O.RDONLY); // no read: its access time stays
    } catch {
      d.add(at, "exists", true, false);
      continue;
    }
    try {
      const st = fstat(fd);
      d.same(at, "size", obj.size, st.size);
      d.same(at, "mode", `0${obj.mode.toString(8)}`, `0${(st.mode & 0o7777).toString(8)}`);
      if (obj.uid !== undefined) {
        d.same(at, "owner (uid, gid)", [obj.uid, obj.gid], [st.uid, st.gid]);
      }
      if (obj.kind === "memfd") {
        d.same(at, "seals", obj.seals ?? 0, Number(syscall("fcntl", fd, F.GET_SEALS, 0)));
      }
      if (obj.atimeNs !== undefined) d.same(at, "access time (ns)", obj.atimeNs, st.atimeNs);
      if (obj.mtimeNs !== undefined) d.same(at, "modification time (ns)", obj.mtimeNs, st.mtimeNs);
    } finally {
      close(fd);
    }
  }
}

/** Which image file and which live open file each descriptor of the tree has. */
interface Sharing {
  imageOf: Map<string, number>;
  liveOf: Map<string, number>;
  /** Live open files whose owner and signal were compared already. */
  ownersSeen: Set<number>;
}

/**
 * Image file kinds whose fdinfo holds a compared field (a file's position, a pidfd's process, a
 * fanotify group's flags and marks): their descriptors are read with it (`readFd`).
 */
const NEEDS_FDINFO = new Set(["regular", "pidfd", "fanotify"]);

/** A live descriptor as compared: fdinfo's fields where it was read. */
type LiveFd = FdWithoutInfo & Partial<Pick<Fd, "position" | "info">>;

/**
 * Compares the descriptor table; records who shares what in `sharing` for the tree check. In a
 * restored process (which dies with the tool), a descriptor whose fdinfo holds nothing compared
 * is read by syscalls made in the process, queued for many descriptors at once
 * (`readInProcess`): the same kernel state as fdinfo and fcntl from outside, in a fraction of the
 * time.
 */
function compareFds(p: RestoredProcess, d: Diff, table: FileTable, sharing: Sharing): void {
  const e = p.entry;
  const inj = p.injectors.get(e.pid) ?? p.injectors.values().next().value!;
  const files = new Map<number, FileEntry>(e.files.map((f) => [f.id, f]));
  const numbers = listFdNumbers(p.hostPid);
  d.same("process", "fds", e.fds.map((f) => f.fd), numbers);
  const present = new Set(numbers);
  const inProcess = p.diesWithTool === true && inj.queues;
  const fast = e.fds.filter((w) =>
    inProcess && present.has(w.fd) && files.has(w.file) &&
    !NEEDS_FDINFO.has(files.get(w.file)!.kind)
  );
  const read = readInProcess(p.hostPid, inj, fast, files, table);
  // Owners are read from a copy of each file (readOwner), through a pidfd of the process.
  const pidfd = pidfdOpen(p.hostPid);
  try {
    for (const want of e.fds) {
      const f = files.get(want.file);
      if (!present.has(want.fd) || !f) continue;
      const at = `fd ${want.fd}`;
      const { got, owner } = read.get(want.fd) ?? { got: readFd(p.hostPid, want.fd, table) };
      if (!got) continue;
      d.same(at, "close-on-exec", want.closeOnExec, got.closeOnExec);
      if ((f.flags & STATUS_FLAGS) !== (got.flags & STATUS_FLAGS)) {
        d.add(at, "flags", flagText(f.flags), flagText(got.flags)); // spelled out where they differ
      }
      const kinds = FD_KINDS[f.kind];
      if (kinds && !kinds.includes(got.kind)) d.add(at, "kind", f.kind, got.kind);
      if (!sharing.ownersSeen.has(got.fileId)) {
        sharing.ownersSeen.add(got.fileId);
        // Asked in the process (ids as it sees them), or from a copy (but of a socket where that
        // changes it), its owner's pid translated back.
        const copyOk = owner === undefined && copyIsHarmless(got.kind);
        const live = owner ?? readOwner(inj, got.fd, got.flags, copyOk ? pidfd : undefined);
        if (copyOk && live.owner && live.owner.pid > 0) {
          live.owner = { ...live.owner, pid: p.imageId(live.owner.pid) };
        }
        d.same(at, "owner (F_GETOWN_EX)", f.owner, live.owner);
        d.same(at, "signal (F_GETSIG)", f.signal, live.signal);
      }
      compareKind(p, d, at, f, got);
      const key = `${e.pid}:${want.fd}`;
      sharing.imageOf.set(key, want.file);
      sharing.liveOf.set(key, got.fileId);
    }
  } finally {
    close(pidfd);
  }
}

/** Descriptors one run of queued syscalls reads (five syscalls each, 160 bytes of output). */
const FDS_PER_RUN = 96;

/** Bytes of output each descriptor's syscalls write: a struct stat, then a struct f_owner_ex. */
const FD_OUT = STAT_SIZE + 16;

/**
 * Descriptors `fds` of restored process `pid`, read by syscalls made in it: F_GETFD, F_GETFL,
 * fstat, F_GETOWN_EX and F_GETSIG of each, queued for many descriptors at once (one round trip a
 * run), then their links from outside where they tell something (not a device's: its kind is
 * in its mode and its path is not compared). The owner is as the process sees it. Null for a
 * descriptor closed meanwhile.
 */
function readInProcess(
  pid: number,
  inj: Injector,
  fds: FdEntry[],
  files: Map<number, FileEntry>,
  table: FileTable,
): Map<number, { got: LiveFd | null; owner: OwnerState }> {
  const out = new Map<number, { got: LiveFd | null; owner: OwnerState }>();
  inj.flush(); // its own run's data area from the start
  for (let i = 0; i < fds.length; i += FDS_PER_RUN) {
    const chunk = fds.slice(i, i + FDS_PER_RUN);
    const results = chunk.map((w) => {
      const r = { fdFlags: 0n, statusFlags: 0n, stat: 0n, ownerEx: 0n, signal: 0n };
      const keep = (k: keyof typeof r) => (v: bigint) => (r[k] = v);
      inj.queue("fcntl", [w.fd, F.GETFD], keep("fdFlags"));
      inj.queue("fcntl", [w.fd, F.GETFL], keep("statusFlags"));
      const at = inj.queueData(new Uint8Array(FD_OUT));
      inj.queue("fstat", [w.fd, at], keep("stat"));
      inj.queue("fcntl", [w.fd, F.GETOWN_EX, at + BigInt(STAT_SIZE)], keep("ownerEx"));
      inj.queue("fcntl", [w.fd, F.GETSIG], keep("signal"));
      return { r, at };
    });
    inj.flush();
    const first = results[0].at;
    const bytes = inj.mem.read(first, Number(results[results.length - 1].at - first) + FD_OUT);
    chunk.forEach((w, k) => {
      const { r, at } = results[k];
      if (r.fdFlags < 0n || r.statusFlags < 0n || r.stat < 0n) {
        // Closed meanwhile (EBADF); else the read itself failed: from outside, which says why.
        out.set(w.fd, { got: r.fdFlags === -9n ? null : readFd(pid, w.fd, table), owner: {} });
        return;
      }
      const off = Number(at - first);
      const st = decodeStat(bytes.subarray(off, off + STAT_SIZE));
      const type = st.mode & S_IF.MT;
      const device = files.get(w.file)!.kind === "device" &&
        (type === S_IF.CHR || type === S_IF.BLK);
      const target = device ? null : readFdLink(pid, w.fd);
      if (!device && target === null) return out.set(w.fd, { got: null, owner: {} });
      const closeOnExec = (r.fdFlags & BigInt(FD_CLOEXEC)) !== 0n;
      const got = readFdOfStat(
        pid,
        w.fd,
        target,
        st,
        Number(r.statusFlags),
        closeOnExec,
        table,
      );
      // O_PATH descriptors have neither owner nor signal (both calls fail: EBADF).
      const owner = got && !(got.flags & O.PATH)
        ? ownerState(
          r.ownerEx === 0n ? bytes.subarray(off + STAT_SIZE, off + FD_OUT) : undefined,
          Number(r.signal),
        )
        : {};
      out.set(w.fd, { got, owner });
    });
  }
  return out;
}

/** What a descriptor's own kind says that the kernel shows of it. */
function compareKind(p: RestoredProcess, d: Diff, at: string, f: FileEntry, got: LiveFd): void {
  const removed = f.removed !== undefined;
  // Deleted files (older images say so by their object alone) are made again under their name.
  const deleted = removed || (f.kind === "regular" && f.object !== undefined);
  const path = typeof f.path === "string" ? f.path + (deleted ? " (deleted)" : "") : undefined;
  switch (f.kind) {
    case "regular":
      // Older images (and small values, as CBOR gives them back) hold a number.
      if (typeof f.position === "bigint" || typeof f.position === "number") {
        d.same(at, "position", BigInt(f.position), got.position);
      }
      if (path && (deleted || !got.target.endsWith(")"))) d.same(at, "path", path, got.target);
      if (f.object === undefined) {
        d.same(at, "locks", f.locks ?? [], readLocks(p.hostPid, got.fd));
      }
      if (removed) {
        const st = stat(`/proc/${p.hostPid}/fd/${got.fd}`);
        const { uid, gid, atimeNs, mtimeNs } = st;
        d.same(at, "removed file", f.removed, {
          mode: st.mode & 0o7777,
          uid,
          gid,
          atimeNs,
          mtimeNs,
        });
      }
      break;
    case "fifo":
    case "pty": // the same index: the program may have its name (ttyname, ptsname)
      d.same(at, "path", path, got.target);
      break;
    case "pidfd": {
      const live = (got.info as PidfdInfo).pid;
      d.same(at, "pid", f.pid, live > 0 ? p.imageId(live) : live);
      break;
    }
    case "fanotify": {
      const live = got.info as FanotifyInfo;
      d.same(at, "fanotify flags", [f.initFlags, f.eventFlags], [live.flags, live.eventFlags]);
      const marks = (list: unknown) =>
        (list as Record<string, unknown>[]).map((m) =>
          [m.type, m.ino, m.sdev, m.mntId, m.mflags, m.mask, m.ignoredMask].join(" ")
        );
      d.same(at, "fanotify marks", marks(f.marks), marks(live.marks));
      break;
    }
  }
}

/**
 * Processes that shared one descriptor table (CLONE_FILES) or fs context (CLONE_FS) must share
 * one again, and only those: compared pair by pair, each process's object found by kcmp.
 */
function compareContexts(tree: RestoredProcess[], diffs: Difference[]): void {
  const kinds = [
    { type: KCMP.FILES, what: "descriptor table", key: "sharesFilesWith" },
    { type: KCMP.FS, what: "fs context", key: "sharesFsWith" },
  ] as const;
  for (const { type, what, key } of kinds) {
    // The image's groups: each process with the one it shares with, which came before it.
    const group = new Map<number, number>();
    for (const p of tree) {
      const w = p.entry[key];
      group.set(p.entry.pid, w === undefined ? p.entry.pid : group.get(w) ?? w);
    }
    const live = kcmpGroups(tree.map((p) => p.hostPid), type);
    for (const [i, a] of tree.entries()) {
      for (const [j, b] of tree.slice(0, i).entries()) {
        const want = group.get(a.entry.pid) === group.get(b.entry.pid);
        const got = live[i] === live[j];
        if (want === got) continue;
        diffs.push({
          pid: a.entry.pid,
          object: "process",
          field: what,
          image: want ? `shared with process ${b.entry.pid}` : "its own",
          kernel: got ? `shared with process ${b.entry.pid}` : "its own",
        });
      }
    }
  }
}

/** Descriptors that shared one open file must share one again, and only those. */
function compareSharing(sharing: Sharing, diffs: Difference[]): void {
  const pair = new Map<number, number>(); // image file id → live file id
  const back = new Map<number, number>();
  for (const [key, image] of sharing.imageOf) {
    const live = sharing.liveOf.get(key)!;
    const [pid, fd] = key.split(":").map(Number);
    const was = pair.get(image);
    const owner = back.get(live);
    if (was !== undefined && was !== live) {
      diffs.push({
        pid,
        object: `fd ${fd}`,
        field: "open file",
        image: `shares open file ${image} with another descriptor`,
        kernel: "a separate open file",
      });
    } else if (owner !== undefined && owner !== image) {
      diffs.push({
        pid,
        object: `fd ${fd}`,
        field: "open file",
        image: `open file ${image} of its own`,
        kernel: "shares its open file with another descriptor",
      });
    }
    pair.set(image, live);
    back.set(live, image);
  }
}

const FLAG_NAMES: [number, string][] = [
  [O.APPEND, "O_APPEND"],
  [O.NONBLOCK, "O_NONBLOCK"],
  [O.DSYNC, "O_DSYNC"],
  [O.ASYNC, "O_ASYNC"],
  [O.DIRECT, "O_DIRECT"],
  [O.NOATIME, "O_NOATIME"],
  [O.PATH, "O_PATH"],
  [O_SYNC_BIT, "O_SYNC"],
];

/** The status flags that matter, spelled out (`O_RDWR|O_APPEND`). */
function flagText(flags: number): string {
  const f = flags & STATUS_FLAGS;
  const mode = ["O_RDONLY", "O_WRONLY", "O_RDWR", "O_ACCMODE"][f & O.ACCMODE];
  return [mode, ...FLAG_NAMES.filter(([bit]) => (f & bit) === bit).map(([, n]) => n)].join("|");
}

/**
 * Compares every restored process of a tree with its image; returns the differences, none when
 * the kernel holds what the image says. The processes must still be stopped and traced.
 */
export async function compareWithImage(tree: RestoredProcess[]): Promise<Difference[]> {
  const diffs: Difference[] = [];
  const table = new FileTable();
  const sharing: Sharing = {
    imageOf: new Map(),
    liveOf: new Map(),
    ownersSeen: new Set(),
  };
  // Each process's smaps is made by the kernel on another thread while the one before it and
  // the rest of it are compared.
  const ahead = (pid: number) => {
    const listing = readSmaps(pid);
    listing.catch(() => {}); // its failure is reported where it is awaited
    return listing;
  };
  let smaps = tree.length ? ahead(tree[0].hostPid) : undefined;
  for (const [i, p] of tree.entries()) {
    const own = smaps!;
    smaps = i + 1 < tree.length ? ahead(tree[i + 1].hostPid) : undefined;
    const d = new Diff(p.entry.pid);
    const main = p.injectors.get(p.entry.pid) ?? p.injectors.values().next().value!;
    const batched = <T>(body: () => T): T => p.diesWithTool ? main.batch(body) : body();
    await batched(async () => {
      await compareTask(p, d);
      comparePosixTimers(p, d);
    });
    compareThreads(p, d);
    compareNestedPids(p, d);
    await compareMappings(p, d, own);
    compareStoredFiles(p, d);
    compareFds(p, d, table, sharing);
    diffs.push(...d.list);
  }
  compareSharing(sharing, diffs);
  compareContexts(tree, diffs);
  return diffs;
}

/** One line per difference: `process 123, fd 4: flags: image O_RDWR|O_APPEND, kernel O_RDWR`. */
export function describeDifference(x: Difference): string {
  return `process ${x.pid}, ${x.object}: ${x.field}: image ${x.image}, kernel ${x.kernel}`;
}

/** Options of `verifyRestored`. */
export interface VerifyOptions {
  /**
   * Dumped pid or tid → the pid or tid it has now (a copy restored with `pidNamespace` gives it
   * as `RestoreResult.pidMap`); the identity by default.
   */
  pidMap?: ReadonlyMap<number, number>;
}

/**
 * Compares the processes of image `dir` with the live processes that have their pids now (a
 * restored tree, or the original of an image dumped with `leaveRunning`): each is frozen for
 * the time of the comparison, as the restore compares them before they run, and released. What
 * ran meanwhile differs, of course (timers run down, a program changes its own state).
 */
export async function verifyRestored(dir: string, opts: VerifyOptions = {}): Promise<Difference[]> {
  using reader = await ImageReader.open(dir);
  const root = await reader.readMeta<ProcessEntry>(PROCESS_META);
  const entries = [root];
  for (const t of root.tree ?? []) {
    entries.push(await reader.readMeta<ProcessEntry>(processMetaName(t.pid)));
  }
  const hostId = (id: number) => opts.pidMap?.get(id) ?? id;
  const imageId = (id: number) => {
    for (const [image, host] of opts.pidMap ?? []) if (host === id) return image;
    return id;
  };
  const frozen: FrozenProcess[] = [];
  try {
    const tree: RestoredProcess[] = [];
    for (const entry of entries) {
      const f = await freeze(hostId(entry.pid));
      frozen.push(f);
      const inj = f.injector;
      const injectors = new Map<number, Injector>();
      for (const t of f.threads) {
        injectors.set(imageId(t.tid), f.injectorFor(t.tid));
      }
      inj.scratch(); // mapped now, so the listing sees it and leaves it out
      tree.push({
        entry,
        hostPid: f.pid,
        injectors,
        hostId,
        imageId,
        ignore: inj.scratchRange ? [inj.scratchRange] : [],
      });
    }
    return await compareWithImage(tree);
  } finally {
    for (const f of frozen.reverse()) f.releaseSync();
  }
}
