/**
 * The process a restore turns into the dumped one: an ordinary program (`cat`, reading a pipe the
 * tool holds) started detached, seized, and made to fork with `clone3` and `set_tid` so the child
 * gets the dumped pid. No kernel module and no compiled helper: everything is injected syscalls.
 */
import {
  CLONE,
  CLONE_THREAD_FLAGS,
  cont,
  encodeCloneArgs,
  Errno,
  getRegs,
  interrupt,
  KCMP,
  kcmp,
  kill,
  PTRACE_EVENT,
  PTRACE_O,
  seize,
  setRegs,
  setSigMask,
  SIG,
  SYS,
  SyscallError,
  waitpid,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { Injector } from "./inject.ts";
import { pauseThread } from "./bounded_wait.ts";
import { kcmpGroups } from "../inspect/kcmp_groups.ts";
import { childrenOf, procExists, threadIds } from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";

/** Options the restorer traces its processes with: fork and clone children are attached too,
 * and everything made dies with the tool if the tool dies midway. */
export const RESTORE_TRACE_OPTIONS = PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL;

/** The stub's program: it blocks reading its stdin, a pipe whose other end the tool holds. */
export const STUB_PROGRAM = "/bin/cat";

/**
 * Starts the stub detached from this process (so Deno does not reap it). Returns its pid and its
 * leash, the writing end of its stdin: should the tool die before the stub is seized (from then on
 * it dies with the tool), the stub reads the end of its input and exits.
 */
async function startStubProcess(): Promise<{ pid: number; leash: WritableStream<Uint8Array> }> {
  const sh = new Deno.Command("/bin/sh", {
    // A background command's stdin would be /dev/null: it gets the pipe through fd 3.
    args: ["-c", `exec 3<&0; ${STUB_PROGRAM} <&3 >/dev/null 2>&1 3<&- & echo $!`],
    stdin: "piped",
    stdout: "piped",
    stderr: "null",
  }).spawn();
  const [text, status] = await Promise.all([new Response(sh.stdout).text(), sh.status]);
  const pid = Number(text.trim());
  if (!status.success || !(pid > 0)) {
    await sh.stdin.close().catch(() => {});
    throw new RestoreError(`could not start the ${STUB_PROGRAM} stub`);
  }
  return { pid, leash: sh.stdin };
}

/** Waits for a ptrace stop of `tid`; throws if it ended instead. */
export function waitStopped(tid: number, what: string): void {
  const st = waitpid(tid)!;
  if (st.exited || st.signaled) throw new RestoreError(`${what} (${tid}) ended unexpectedly`);
}

/** How a process made with `cloneWithId` or `cloneChild` relates to the one that makes it. */
export interface CloneOptions {
  /** What it shares with its maker: `CLONE.FILES` (the descriptor table), `CLONE.FS` … */
  share?: bigint;
  /** It becomes its maker's sibling (CLONE_PARENT), not its child. */
  sibling?: boolean;
  /** Its parent gets no signal when it ends (exit_signal 0; wait for it with __WALL). */
  quiet?: boolean;
  /** Other clone flags (CLONE_NEWPID: the init of a new pid namespace). */
  flags?: bigint;
}

/**
 * A task's id for clone3's `set_tid`: one number (its id in its maker's namespace for children),
 * or its id at every level from the innermost namespace out (the kernel's order), for a task of
 * a nested pid namespace.
 */
export type TaskId = number | readonly number[];

/** The ids of `id`, innermost first. */
const levels = (id: TaskId): readonly number[] => typeof id === "number" ? [id] : id;

/** How a refusal names `id`: its outermost id given, with the inner ones. */
function showId(id: TaskId): string {
  const ids = levels(id);
  return ids.length === 1
    ? String(ids[0])
    : `${ids.at(-1)} (${ids.slice(0, -1).join(", ")} inside)`;
}

/** A task made by an injected clone3: its id as the tool sees it, and as its maker does. */
interface Made {
  host: number;
  inTarget: number;
}

function injectClone3(inj: Injector, id: TaskId | null, thread: boolean, o: CloneOptions): Made {
  const what = thread ? "thread id" : "pid";
  const ids = id === null ? [] : levels(id);
  const tidAddr = id === null ? 0n : inj.put(new Uint8Array(new Int32Array(ids).buffer), 256);
  const setTid = id === null ? {} : { setTid: tidAddr, setTidSize: ids.length };
  // CLONE_PARENT takes its maker's exit signal: clone3 wants none given.
  const exitSignal = thread || o.sibling || o.quiet ? 0 : SIG.SIGCHLD;
  const flags = thread
    ? CLONE_THREAD_FLAGS
    : (o.share ?? 0n) | (o.sibling ? CLONE.PARENT : 0n) | (o.flags ?? 0n);
  const args = encodeCloneArgs({ flags, exitSignal, ...setTid });
  const argsAddr = inj.put(args, 0);
  let r = inj.raw(SYS.clone3, argsAddr, args.length);
  // A process just reaped leaves /proc a moment before its pid is free for reuse: wait for it,
  // but only while nothing holds the id (its outermost one given, as the tool sees it when the
  // maker lives in the tool's namespace).
  const outer = ids.at(-1) ?? 0;
  for (let i = 0; id !== null && r === -BigInt(Errno.EEXIST) && i < 50 && !procExists(outer); i++) {
    pauseThread(2);
    r = inj.raw(SYS.clone3, argsAddr, args.length);
  }
  const shown = id === null ? "any" : showId(id);
  if (r === -BigInt(Errno.EEXIST)) throw new RestoreError(`${what} ${shown} is in use`);
  if (r < 0n) {
    throw new SyscallError(`clone3 (${what} ${shown}) in ${inj.pid}`, [outer], Number(-r));
  }
  // exit_signal SIGCHLD raises a FORK event, any other a CLONE event.
  const event = exitSignal === SIG.SIGCHLD ? PTRACE_EVENT.FORK : PTRACE_EVENT.CLONE;
  const made = Number(inj.events.findLast((e) => e.event === event)?.message ?? r);
  waitStopped(made, thread ? "restored thread" : "restored process");
  return { host: made, inTarget: Number(r) };
}

/**
 * Injects clone3 with set_tid = `id` into the process `inj` runs in: a child process
 * (`thread` false, sharing with it what `opts` says) or a thread of it. The new task is attached
 * to us (PTRACE_O_TRACEFORK / TRACECLONE) and stopped; its id as we see it is returned.
 */
export function cloneWithId(
  inj: Injector,
  id: TaskId,
  thread: boolean,
  opts: CloneOptions = {},
): number {
  return injectClone3(inj, id, thread, opts).host;
}

/**
 * Makes threads with the ids `ids` in the process `inj` runs in (a restore's, which dies with
 * the tool), as `cloneWithId` does, but with their clone3 calls queued: made in one run of the
 * syscall runner, a stop per thread for its CLONE event instead of an injection each. A thread
 * so made would start inside the runner, but it never runs there: attached at birth, it stops
 * before reaching user mode, and the restore sets every register of it before it runs. An id
 * still held by a thread being freed is made alone again (`cloneWithId` waits for it). Returns
 * their ids as the tool sees them, in order.
 */
export function cloneThreadsWithIds(inj: Injector, ids: readonly TaskId[]): number[] {
  const results: bigint[] = [];
  const seen = inj.events.length;
  for (const [i, id] of ids.entries()) {
    const setTid = inj.queueData(new Uint8Array(new Int32Array(levels(id)).buffer));
    const args = encodeCloneArgs({
      flags: CLONE_THREAD_FLAGS,
      exitSignal: 0,
      setTid,
      setTidSize: levels(id).length,
    });
    inj.queue("clone3", [inj.queueData(args), args.length], (r) => (results[i] = r));
  }
  inj.flush();
  // Each thread made raised one CLONE event, in the order they were made: its id on the host.
  const made = inj.events.slice(seen).filter((e) => e.event === PTRACE_EVENT.CLONE);
  let next = 0;
  return ids.map((id, i) => {
    const r = results[i];
    if (r === -BigInt(Errno.EEXIST)) return cloneWithId(inj, id, true);
    if (r < 0n) {
      const outer = levels(id).at(-1)!;
      throw new SyscallError(`clone3 (thread id ${showId(id)}) in ${inj.pid}`, [outer], Number(-r));
    }
    const host = Number(made[next++]?.message ?? r);
    waitStopped(host, "restored thread");
    return host;
  });
}

/** A child process of the process `inj` runs in, with exactly `pid` (see `cloneWithId`). */
export function forkWithPid(inj: Injector, pid: TaskId, opts: CloneOptions = {}): number {
  return cloneWithId(inj, pid, false, opts);
}

/**
 * A child process of the process `inj` runs in, with whatever pid comes next, attached and
 * stopped: its pid as the tool sees it and as its parent does.
 */
export function cloneChild(inj: Injector, opts: CloneOptions = {}): Made {
  return injectClone3(inj, null, false, opts);
}

/**
 * Ends the stopped tracee `pid` (a process made by `cloneChild`, a copy of one whose `syscall`
 * instruction is at `site`) with wait status `status`: it runs exit_group(code), or dies of the
 * signal, which it gets first. Returns once it has ended; its parent may then reap it.
 */
export function endWithStatus(pid: number, site: bigint, status: number): void {
  const signal = status & 0x7f;
  const code = BigInt((status >> 8) & 0xff);
  setRegs(pid, {
    ...getRegs(pid),
    rip: site,
    rax: BigInt(SYS.exit_group),
    orig_rax: -1n,
    rdi: code,
  });
  if (signal) {
    setSigMask(pid, 0n); // its maker's copy may block it
    kill(pid, signal);
  }
  let deliver = 0;
  for (let stops = 0;; stops++) {
    try {
      cont(pid, deliver);
    } catch (err) {
      if (!(err instanceof SyscallError && err.errno === Errno.ESRCH)) throw err; // died already
    }
    const st = waitpid(pid);
    if (!st || st.exited || st.signaled) return;
    if (stops > 16) throw new RestoreError(`process ${pid} does not end (${st.raw.toString(16)})`);
    deliver = signal && st.stopSignal === signal ? signal : 0;
  }
}

/** What a process of a tree shares with others, as the image keeps it. */
type Sharing = Pick<ProcessEntry, "pid" | "ppid" | "sharesFilesWith" | "sharesFsWith">;

/** Which process of the tree makes a process again, and what it shares with it. */
export interface ClonePlan {
  /** The maker: the parent, or for a process sharing with a sibling, that sibling. */
  from: number;
  opts: CloneOptions;
}

/**
 * How process `p` of a tree is made again so that it shares what it shared (CLONE_FILES,
 * CLONE_FS): by its parent, or by a sibling with CLONE_PARENT; `ppidOf` gives the parent of a
 * process of the tree. A reason instead when it cannot be made so.
 */
export function clonePlan(
  p: Sharing,
  ppidOf: (pid: number) => number | undefined,
): ClonePlan | string {
  const files = p.sharesFilesWith, fs = p.sharesFsWith;
  if (files !== undefined && fs !== undefined && files !== fs) {
    return `process ${p.pid} shares its descriptor table with process ${files} and its fs ` +
      `context with process ${fs}: one clone cannot make both`;
  }
  const from = files ?? fs ?? p.ppid;
  const sibling = from !== p.ppid;
  if (sibling && ppidOf(from) !== p.ppid) {
    return `process ${p.pid} shares its ${
      files !== undefined ? "descriptor table" : "fs context"
    } ` +
      `with process ${from}, which is neither its parent nor a sibling`;
  }
  const share = (files !== undefined ? CLONE.FILES : 0n) | (fs !== undefined ? CLONE.FS : 0n);
  return { from, opts: { share, sibling } };
}

/** What `kcmp` compares for each kind of sharing a tree's processes may have. */
const SHARED = {
  files: { type: KCMP.FILES, what: "a descriptor table", flag: "CLONE_FILES" },
  fs: { type: KCMP.FS, what: "an fs context (cwd, root, umask)", flag: "CLONE_FS" },
} as const;

/**
 * For processes listed parents first: for each one that shares `kind` with earlier ones, their
 * pids. Threads share their process's (pthreads do): one made without the clone flag is refused
 * with a `DumpError`, as the restore would not keep it.
 */
function sharers(procs: readonly { pid: number }[], kind: keyof typeof SHARED) {
  const { type, what, flag } = SHARED[kind];
  const out = new Map<number, number[]>();
  const groups = kcmpGroups(procs.map((p) => p.pid), type);
  const members = new Map<number, number[]>(); // group → the processes so far that have it
  for (const [i, p] of procs.entries()) {
    for (const tid of threadIds(p.pid)) {
      if (tid !== p.pid && kcmp(p.pid, tid, type) !== 0) {
        throw new DumpError(
          `thread ${tid} of process ${p.pid} has ${what} of its own (made without ${flag}), ` +
            `which tardigrade cannot restore`,
        );
      }
    }
    const group = groups[i];
    const with_ = members.get(group);
    if (with_) out.set(p.pid, [...with_]);
    members.set(group, [...with_ ?? [], p.pid]);
  }
  return out;
}

/** Whether `a` and `b` share what kcmp `type` compares; false when they cannot be compared. */
function same(a: number, b: number, type: number): boolean {
  try {
    return kcmp(a, b, type) === 0;
  } catch {
    return false; // gone, or not ours to compare
  }
}

/**
 * Refuses a tree one of whose processes shares `kind` with its parent or a child outside it
 * (`--single`, or the root's parent): the restore would give it one of its own.
 */
function refuseSharingOutside(
  procs: readonly { pid: number; ppid: number }[],
  kind: keyof typeof SHARED,
): void {
  const { type, what, flag } = SHARED[kind];
  const inTree = new Set(procs.map((p) => p.pid));
  for (const p of procs) {
    const near = [p.ppid, ...childrenOf(p.pid)].filter((q) => q > 0 && !inTree.has(q));
    const other = near.find((q) => q !== Deno.pid && same(p.pid, q, type));
    if (other !== undefined) {
      throw new DumpError(
        `process ${p.pid} shares ${what} with process ${other} (${flag}), which is not in the ` +
          `dump: a restore could not share it again (dump the tree they are both in)`,
      );
    }
  }
}

/**
 * What each process of a frozen tree (listed parents first) shares with another, as its image
 * entry says it: the process to make it from, which shares its descriptor table or fs context or
 * both. Throws a `DumpError` for sharing the restore could not make again.
 */
export function treeSharing(
  procs: readonly { pid: number; ppid: number }[],
): Map<number, Pick<ProcessEntry, "sharesFilesWith" | "sharesFsWith">> {
  refuseSharingOutside(procs, "files");
  refuseSharingOutside(procs, "fs");
  return cloneSources(procs, sharers(procs, "files"), sharers(procs, "fs"));
}

/**
 * For processes listed parents first and, for each, the earlier processes it shares its
 * descriptor table (`files`) and fs context (`fs`) with: the one to make it from, its parent if
 * that shares all it shares, else such a sibling. Throws a `DumpError` naming the process when
 * there is none (it could not be made again sharing what it shares).
 */
function cloneSources(
  procs: readonly { pid: number; ppid: number }[],
  files: ReadonlyMap<number, number[]>,
  fs: ReadonlyMap<number, number[]>,
): Map<number, Pick<ProcessEntry, "sharesFilesWith" | "sharesFsWith">> {
  const out = new Map<number, Pick<ProcessEntry, "sharesFilesWith" | "sharesFsWith">>();
  for (const p of procs) {
    const f = files.get(p.pid), s = fs.get(p.pid);
    if (!f && !s) continue;
    const makers = [p.ppid, ...procs.filter((q) => q.ppid === p.ppid && q !== p).map((q) => q.pid)];
    const from = makers.find((m) => (!f || f.includes(m)) && (!s || s.includes(m)));
    if (from === undefined) {
      const what = f ? `its descriptor table with process ${f[0]}` : `its fs context with ${s![0]}`;
      throw new DumpError(
        `process ${p.pid} shares ${what}, and no process it could be made from (its parent ` +
          `or a sibling) shares all it shares: tardigrade could not make it again so`,
      );
    }
    out.set(p.pid, {
      ...(f ? { sharesFilesWith: from } : {}),
      ...(s ? { sharesFsWith: from } : {}),
    });
  }
  return out;
}

/** A seized stub, ready to fork the process that becomes the restored one. */
export class Stub {
  #ended = false;

  private constructor(
    readonly pid: number,
    readonly injector: Injector,
    readonly leash: WritableStream<Uint8Array>,
  ) {}

  /** Starts and seizes a stub. */
  static async start(): Promise<Stub> {
    const { pid, leash } = await startStubProcess();
    try {
      seize(pid, RESTORE_TRACE_OPTIONS);
      interrupt(pid);
      waitStopped(pid, "stub");
      return new Stub(
        pid,
        new Injector(pid, pid, new RemoteMemory(pid), undefined, { diesWithTool: true }),
        leash,
      );
    } catch (err) {
      void leash.close().catch(() => {});
      try {
        kill(pid, SIG.SIGKILL);
      } catch { /* gone */ }
      // Ours to reap when we traced it or it was reparented to us (a child subreaper).
      try {
        waitpid(pid);
      } catch { /* not ours: init reaps it */ }
      throw err;
    }
  }

  /**
   * Forks a child with exactly `pid` (clone3 with set_tid). The child is attached to us and
   * stopped; it is a copy of the stub until the restorer empties it.
   */
  forkWithPid(pid: number): number {
    return forkWithPid(this.injector, pid);
  }

  /** Ends the stub. Its child, if any, is reparented and stays traced by us. */
  end(): void {
    if (this.#ended) return; // its pid may belong to another process by now
    this.#ended = true;
    try {
      this.injector.mem.close();
      kill(this.pid, SIG.SIGKILL);
      cont(this.pid);
    } catch { /* already gone */ }
    try {
      waitpid(this.pid);
    } catch { /* reaped elsewhere */ }
    void this.leash.close().catch(() => {});
  }
}
