/**
 * Freezing a process: every thread seized and interrupted (threads born meanwhile included), so
 * its memory and registers hold still, and always resumed and detached afterwards, also when the
 * body throws or the tool gets SIGINT or SIGTERM. The target sees no signal.
 */
import {
  capNames,
  cont,
  Errno,
  getRegs,
  getSigInfo,
  interrupt,
  kill,
  PTRACE_EVENT,
  PTRACE_O,
  type Regs,
  SECCOMP_MODE,
  seize,
  setOptions,
  SIG,
  type SigInfo,
  SyscallError,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import {
  AccessDenied,
  DumpError,
  explain,
  FreezeTimeout,
  NoSuchProcess,
  Unsupported,
} from "../errors.ts";
import { awaitInterrupt, detachDelivering, Injector } from "./inject.ts";
import { releaseWhenStopped, waitWithin, whereItWaits } from "./bounded_wait.ts";
import {
  childrenOf,
  hexMask,
  isKernelThread,
  processState,
  readComm,
  readStatus,
  statusField,
  threadIds,
} from "../inspect/procfs.ts";
import { RemoteMemory } from "../inspect/memory.ts";

/** One stopped thread of a frozen process. */
export interface FrozenThread {
  /** Thread id. */
  readonly tid: number;
  /** Registers as the thread was stopped. */
  readonly regs: Regs;
  /**
   * Signals taken from the thread while frozen, with their information: the one it was about to
   * take when it stopped, those that arrived while syscalls ran in it. They are still the
   * thread's pending signals (a dump records them so) and are handed back on release.
   */
  readonly held: SigInfo[];
  /**
   * The signal of the group stop (job control: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU) the thread
   * was in when seized; undefined when it was running.
   */
  readonly groupStop?: number;
}

/** How long a thread may take to stop before a freeze gives up, as CRIU's `--timeout`. */
export const FREEZE_TIMEOUT_MS = 10_000;

/** How to freeze. */
export interface FreezeOptions {
  /**
   * How long each thread may take to stop, in ms (default 10 s). A thread that sleeps where no
   * signal reaches it (a vfork parent, uninterruptible I/O) fails the freeze with
   * `FreezeTimeout`, and the process runs on as it was.
   */
  timeoutMs?: number;
  /**
   * Threads the caller seized and interrupted already with `seizeAndInterrupt` (a tree in a
   * frozen cgroup, seized before the group was thawed): their stop is awaited, not asked again.
   */
  seized?: ReadonlySet<number>;
}

/**
 * Seizes thread `tid` and asks it to stop, as a freeze does; false when it exited meanwhile. The
 * stop is reported once the thread runs (a task frozen by a v1 freezer cgroup stops once thawed,
 * before it runs an instruction).
 */
export function seizeAndInterrupt(tid: number): boolean {
  try {
    // Syscall stops told apart from SIGTRAP: the injector runs syscalls stop to stop.
    seize(tid, PTRACE_O.TRACESYSGOOD);
  } catch (err) {
    if (isEsrch(err)) return false; // the thread exited meanwhile
    throw err;
  }
  try {
    interrupt(tid);
  } catch (err) {
    if (!isEsrch(err)) throw err; // exited once seized: its exit is awaited as its stop
  }
  return true;
}

/** The signals whose default action stops the process. */
const STOP_SIGNALS: number[] = [SIG.SIGSTOP, SIG.SIGTSTP, SIG.SIGTTIN, SIG.SIGTTOU];

const active = new Set<FrozenProcess>();
const interruptCleanups = new Set<() => void>();
let signalsHooked = false;

/**
 * Does what SIGINT does to the tool, but leaves the tool running: every process it holds frozen
 * is released (it runs on as it was, with the signals held back handed back) and the cleanups
 * registered with `onInterrupt` run, so a dump under way fails and leaves no partial image, and
 * a restore under way stops at its next stage before it resumes anything, killing what it made.
 * For interactive tools, where Ctrl-C ends one command and the session goes on. Returns the pids
 * released.
 */
export function interruptFrozen(): number[] {
  const released: number[] = [];
  for (const f of [...active]) {
    try {
      f.releaseSync();
      released.push(f.pid);
    } catch { /* release the others all the same */ }
  }
  for (const fn of interruptCleanups) {
    try {
      fn();
    } catch { /* the others all the same */ }
  }
  return released;
}

function onTerminatingSignal(code: number) {
  return () => {
    interruptFrozen();
    Deno.exit(code);
  };
}

/**
 * Registers `fn` to run (synchronously) when SIGINT or SIGTERM ends the tool while a process is
 * frozen, after every frozen process was released: for what must not outlive the tool, such as
 * a partial image. Signal handlers run only when the event loop turns, so long synchronous work
 * should yield now and then. Returns a function that unregisters `fn`.
 */
export function onInterrupt(fn: () => void): () => void {
  interruptCleanups.add(fn);
  return () => interruptCleanups.delete(fn);
}
const hooks: [Deno.Signal, () => void][] = [
  ["SIGINT", onTerminatingSignal(130)],
  ["SIGTERM", onTerminatingSignal(143)],
];

function hookSignals(on: boolean) {
  if (on === signalsHooked) return;
  signalsHooked = on;
  for (const [sig, fn] of hooks) {
    if (on) Deno.addSignalListener(sig, fn);
    else Deno.removeSignalListener(sig, fn);
  }
}

function isEsrch(err: unknown): boolean {
  return err instanceof SyscallError && err.errno === Errno.ESRCH;
}

/** Why a freeze failed, in the user's terms: another tracer is the usual reason for EPERM. */
function explainFreezeFailure(err: unknown, pid: number): unknown {
  if (err instanceof SyscallError && err.errno === Errno.EPERM) {
    try {
      if (isKernelThread(pid)) {
        return new Unsupported(
          `process ${pid} (${readComm(pid)}) is a kernel thread: it has no user space to freeze ` +
            `or dump`,
          { cause: err },
        );
      }
      const status = readStatus(pid);
      if (status.get("State")?.startsWith("Z")) {
        return new NoSuchProcess(pid, "it has exited: a zombie its parent has not waited for", {
          cause: err,
        });
      }
      const tracer = Number(status.get("TracerPid") ?? 0);
      if (tracer > 0) {
        let comm = "";
        try {
          comm = ` (${readComm(tracer)})`;
        } catch { /* it just went away */ }
        return new AccessDenied(pid, "threads", {
          cause: err,
          why: `it is already traced by ${tracer}${comm}`,
        });
      }
      if (Deno.uid() !== 0) {
        return new AccessDenied(pid, "threads", {
          cause: err,
          why: `tardigrade runs as uid ${Deno.uid()}: tracing it needs root (or CAP_SYS_PTRACE)`,
        });
      }
      // A process with capabilities the tracer lacks is the usual case (pid 1 here holds
      // CAP_SYS_RESOURCE, which root's processes do not have on these machines).
      const missing = hexMask(status.get("CapPrm")) & ~hexMask(statusField(Deno.pid, "CapEff"));
      const init = pid === 1 ? ", the init of this machine," : "";
      return new AccessDenied(pid, "threads", {
        cause: err,
        why: `the kernel refused to let it be traced (EPERM)` +
          (missing !== 0n
            ? `: it${init} holds capabilities tardigrade lacks (${capNames(missing).join(", ")})`
            : ""),
      });
    } catch { /* the process is gone: explain() says so */ }
  }
  return explain(err, pid, "threads");
}

/** The threads of `pid`; NoSuchProcess once it is gone. */
function tidsOf(pid: number): number[] {
  const tids = threadIds(pid);
  if (tids.length === 0) throw new NoSuchProcess(pid, "thread list");
  return tids;
}

/**
 * A process whose threads are all stopped under ptrace. Release it with `await using`, or call
 * `release()`; it resumes every thread exactly where it was.
 */
export class FrozenProcess implements AsyncDisposable {
  readonly #threads = new Map<number, FrozenThread>();
  #mem?: RemoteMemory;
  #injector?: Injector;
  #released = false;
  #seccompRefusal?: string;

  private constructor(readonly pid: number) {}

  /** Seizes and stops every thread of `pid`, each within `options.timeoutMs`. */
  static freeze(pid: number, options: FreezeOptions = {}): FrozenProcess {
    const frozen = new FrozenProcess(pid);
    active.add(frozen);
    hookSignals(true);
    try {
      frozen.#stopAll(options.timeoutMs ?? FREEZE_TIMEOUT_MS, options.seized);
      frozen.#suspendSeccomp();
    } catch (err) {
      frozen.releaseSync();
      throw explainFreezeFailure(err, pid);
    }
    return frozen;
  }

  #stopAll(timeoutMs: number, already?: ReadonlySet<number>): void {
    const seized = new Set<number>();
    let stuck: FreezeTimeout | undefined;
    // Threads may be born while we seize: list again until a pass finds none new.
    for (;;) {
      const fresh = tidsOf(this.pid).filter((t) => !seized.has(t));
      if (fresh.length === 0) break;
      for (const tid of fresh) {
        if (already?.has(tid) || seizeAndInterrupt(tid)) seized.add(tid);
      }
      for (const tid of fresh) {
        if (seized.has(tid) && !this.#waitStop(tid, timeoutMs)) {
          // The others stop all the same, so that the release lets every one go.
          releaseWhenStopped(tid);
          stuck ??= new FreezeTimeout(this.pid, tid, timeoutMs, whereItWaits(this.pid, tid));
        }
      }
      if (stuck) throw stuck;
    }
    if (this.#threads.size === 0) throw new NoSuchProcess(this.pid, "it exited while freezing");
  }

  /**
   * Suspends the seccomp filters (or strict mode) of confined threads while we trace them: a
   * filter may forbid, fail or even kill the process for the syscalls we inject. Done once every
   * thread is stopped, so no thread can still gain a filter (TSYNC) behind our back. Only for
   * confined threads: the option needs CAP_SYS_ADMIN and a tool not under seccomp itself (a
   * container's default profile), which an ordinary process should not have to require.
   */
  #suspendSeccomp(): void {
    for (const t of this.#threads.values()) {
      // Undefined once the thread ended (only SIGKILL can end a stopped one): it runs nothing.
      const mode = Number(statusField(this.pid, "Seccomp", t.tid) ?? SECCOMP_MODE.DISABLED);
      if (mode === SECCOMP_MODE.DISABLED) continue;
      try {
        setOptions(t.tid, PTRACE_O.TRACESYSGOOD | PTRACE_O.SUSPEND_SECCOMP);
      } catch (err) {
        if (isEsrch(err)) continue;
        if (!(err instanceof SyscallError)) throw err;
        this.#seccompRefusal ??= `process ${this.pid} (thread ${t.tid}) is confined by seccomp ` +
          `(${
            mode === SECCOMP_MODE.STRICT ? "strict mode" : "a filter"
          }): the syscalls tardigrade injects could ` +
          `be refused or kill it, and suspending seccomp while traced ` +
          `(PTRACE_O_SUSPEND_SECCOMP) was refused with ${err.code}: it needs CAP_SYS_ADMIN, ` +
          `and tardigrade must not run under seccomp itself`;
      }
    }
  }

  /**
   * Why syscalls must not be injected into this process: it is confined by seccomp and the
   * filters could not be suspended. Undefined when injecting is safe.
   */
  get seccompRefusal(): string | undefined {
    return this.#seccompRefusal;
  }

  /** Records `tid` once it stops; false when it did not stop within `timeoutMs`. */
  #waitStop(tid: number, timeoutMs: number): boolean {
    const st = waitWithin(tid, timeoutMs);
    if (!st) return false;
    if (st.exited || st.signaled) return true; // the thread ended
    const held: SigInfo[] = [];
    if (st.event === 0) {
      // A signal-delivery stop came before the interrupt: hold the signal (it stays pending for
      // a dump, and is handed back on release), so every thread sits in the same kind of stop.
      held.push(getSigInfo(tid));
      cont(tid);
      if (!awaitInterrupt(tid, held)) return true;
    }
    // A thread seized in a group stop reports it with the signal that stopped the group (an
    // interrupt of a running one with SIGTRAP).
    const stop = st.event === PTRACE_EVENT.STOP && STOP_SIGNALS.includes(st.stopSignal!);
    this.#threads.set(tid, {
      tid,
      regs: getRegs(tid),
      held,
      groupStop: stop ? st.stopSignal : undefined,
    });
    return true;
  }

  /** The stopped threads, the thread-group leader first. */
  get threads(): FrozenThread[] {
    return [...this.#threads.values()].sort((a, b) =>
      (a.tid === this.pid ? -1 : 0) - (b.tid === this.pid ? -1 : 0) || a.tid - b.tid
    );
  }

  /**
   * The signal that stopped the process (job control) before it was frozen, as its parent's wait
   * reports it; undefined when it was running.
   */
  get stopSignal(): number | undefined {
    return this.threads.find((t) => t.groupStop !== undefined)?.groupStop;
  }

  /** /proc/PID/mem of the frozen process. */
  get memory(): RemoteMemory {
    return this.#mem ??= new RemoteMemory(this.pid);
  }

  /** Runs syscalls inside the process (in its main thread, or the first thread left). */
  get injector(): Injector {
    if (this.#seccompRefusal) throw new DumpError(this.#seccompRefusal);
    if (!this.#injector) {
      const main = this.threads[0];
      this.#injector = new Injector(this.pid, main.tid, this.memory, undefined, {
        held: main.held,
        threads: this.#threads.size,
      });
      this.#injectors.set(main.tid, this.#injector);
    }
    return this.#injector;
  }

  readonly #injectors = new Map<number, Injector>();

  /** Runs syscalls in one given thread of the process (sharing the main injector's scratch). */
  injectorFor(tid: number): Injector {
    const main = this.injector;
    const thread = this.#threads.get(tid);
    if (!thread) throw new NoSuchProcess(tid, `no frozen thread of process ${this.pid}`);
    let inj = this.#injectors.get(tid);
    if (!inj) this.#injectors.set(tid, inj = main.forThread(tid, thread.held));
    return inj;
  }

  /** Whether the process is still frozen. */
  get frozen(): boolean {
    return !this.#released;
  }

  /** Sends it SIGKILL, which it takes once `kill` collects it (it runs nothing meanwhile). */
  doom(): void {
    if (this.#released) return;
    try {
      kill(this.pid, SIG.SIGKILL);
    } catch { /* gone */ }
  }

  /**
   * Ends the process while it is still frozen (it runs no instruction more) and collects every
   * thread's exit as its tracer, so the pid is free again once its parent has reaped it.
   */
  kill(): void {
    if (this.#released) return;
    this.#released = true;
    active.delete(this);
    if (active.size === 0) hookSignals(false);
    this.#mem?.close();
    // A pid namespace's init exits only once every process of its namespace is reaped: one whose
    // reaper is this very process (a subreaper, as a script or a test may be) is reaped here.
    const pidNs = nestedInitNamespace(this.pid);
    kill(this.pid, SIG.SIGKILL);
    // The leader's exit is reported only after every other thread's: collect it last.
    const deadline = Date.now() + KILL_COLLECT_MS;
    for (const t of [...this.threads].reverse()) {
      try {
        for (;;) {
          const st = waitpid(t.tid, pidNs ? WAIT.WNOHANG : 0);
          if (st?.exited || st?.signaled) break;
          if (st) continue;
          // Bounded: past it the pid stays taken until someone reaps what holds it up.
          if (Date.now() > deadline) break;
          reapOurZombiesIn(pidNs!);
          Atomics.wait(napCell, 0, 0, 1);
        }
      } catch { /* already collected */ }
    }
  }

  /** Resumes and detaches every thread, delivering signals that were held back. */
  releaseSync(): void {
    if (this.#released) return;
    this.#released = true;
    active.delete(this);
    if (active.size === 0) hookSignals(false);
    const errors: unknown[] = [];
    try {
      this.#injector?.release();
    } catch (err) {
      if (!isEsrch(err)) errors.push(err);
    }
    const stopped = this.stopSignal !== undefined;
    for (const t of this.#threads.values()) {
      try {
        detachDelivering(this.pid, t.tid, t.held, stopped);
      } catch (err) {
        if (!isEsrch(err)) errors.push(err);
      }
    }
    this.#mem?.close();
    if (errors.length) throw errors[0];
  }

  /** Same as `releaseSync`, for `await using`. */
  release(): Promise<void> {
    this.releaseSync();
    return Promise.resolve();
  }

  /** Releases the process (`await using`). */
  [Symbol.asyncDispose](): Promise<void> {
    return this.release();
  }
}

/**
 * Freezes a process: `await using frozen = await freeze(pid)`. Every thread stops without a
 * signal the process could see, and all run on when `frozen` is disposed.
 */
export function freeze(pid: number, options: FreezeOptions = {}): Promise<FrozenProcess> {
  try {
    return Promise.resolve(FrozenProcess.freeze(pid, options));
  } catch (err) {
    return Promise.reject(err);
  }
}

/** How long `kill` waits for a killed process that is held up, in ms. */
const KILL_COLLECT_MS = 10_000;
const napCell = new Int32Array(new SharedArrayBuffer(4));

/** The pid namespace `pid` is the init of (pid 1 there, below ours), else undefined. */
function nestedInitNamespace(pid: number): string | undefined {
  const levels = statusField(pid, "NSpid")?.trim().split(/\s+/) ?? [];
  if (levels.length < 2 || levels.at(-1) !== "1") return undefined;
  try {
    return Deno.readLinkSync(`/proc/${pid}/ns/pid`);
  } catch {
    return undefined;
  }
}

/** Reaps the zombies that are this process's children and live in pid namespace `ns`. */
function reapOurZombiesIn(ns: string): void {
  for (const child of childrenOf(Deno.pid)) {
    if (processState(child) !== "Z") continue;
    try {
      if (Deno.readLinkSync(`/proc/${child}/ns/pid`) === ns) waitpid(child, WAIT.WNOHANG);
    } catch { /* reaped meanwhile */ }
  }
}
