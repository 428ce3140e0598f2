/**
 * Runs system calls inside a stopped thread of another process, as CRIU's parasite does but with
 * no code of our own: point the thread at a `syscall` instruction that is already mapped (the
 * vdso has several), set the registers, single-step, read `rax`, put the registers back.
 */
import {
  cont,
  detach,
  Errno,
  getEventMsg,
  getRegs,
  getRegset,
  getSigInfo,
  getSigMask,
  interrupt,
  MAP,
  NT,
  PROT,
  PTRACE_EVENT,
  type Regs,
  setRegs,
  setSigInfo,
  setSigMask,
  SIG,
  sigBit,
  type SigInfo,
  singlestep,
  SYS,
  SyscallError,
  syscallStep,
  tgkill,
  waitpid,
} from "../../ffi/mod.ts";
import { NoSuchProcess, TardigradeError } from "../errors.ts";
import {
  EFLAGS_TF,
  findWayBackCode,
  FRAME_STRIDE,
  MAX_XSTATE,
  SYSCALL_STOP,
  type WayBackCode,
  wayBackFrame,
  wayBackFrameSize,
} from "./way_back.ts";
import { findVdso, listMappings } from "../inspect/mappings.ts";
import type { RemoteMemory } from "../inspect/memory.ts";
import {
  DATA_AT,
  DATA_BYTES,
  encodeRecords,
  MAX_RECORDS,
  type QueuedCall,
  RECORD_SIZE,
  RECORDS_AT,
  resultOf,
  RUNNER_BYTES,
  RUNNER_CODE,
  RUNNER_END,
} from "./syscall_runner.ts";

/** Name of an injectable syscall. */
export type SyscallName = keyof typeof SYS;
/** A syscall argument: a number, or bytes to place in the target's scratch memory. */
export type Arg = bigint | number;

/** The scratch region is plain read-write memory. */
const RW = PROT.READ | PROT.WRITE;

/** In a process being restored it also holds the syscall runner's code. */
const RWX = RW | PROT.EXEC;

/** The signals of a fault in the runner's code. */
const FAULTS: number[] = [SIG.SIGSEGV, SIG.SIGBUS, SIG.SIGILL];

/** Size of the scratch region mapped in the target for syscall arguments. */
export const SCRATCH_SIZE = 64n * 1024n;

/** The bytes of the `syscall` instruction. */
const SYSCALL_INSN = [0x0f, 0x05];

/**
 * Finds the address of a `syscall` instruction (0f 05) in process `pid`: in its [vdso]; without
 * one (a process may unmap it), the one thread `tid` is stopped in (`rip - 2`), else one in the
 * process's own code (`syscallSiteInCode`).
 */
export function findSyscallSite(pid: number, mem: RemoteMemory, tid = pid): bigint {
  const vdso = findVdso(pid);
  if (vdso) return vdso.start + BigInt(syscallOffset(mem.read(vdso.start, vdso.size)));
  try {
    const at = getRegs(tid).rip - 2n;
    const code = mem.read(at, 2);
    if (code[0] === SYSCALL_INSN[0] && code[1] === SYSCALL_INSN[1]) return at;
  } catch { /* not stopped where its registers can be read, or no code there */ }
  const site = syscallSiteInCode(pid, mem);
  if (site === null) {
    throw new TardigradeError(`process ${pid} has no [vdso] nor other code to run syscalls from`);
  }
  return site;
}

/** How much of each executable mapping is searched for a `syscall` instruction. */
const CODE_SEARCH = 64 * 1024;

/**
 * A `syscall` instruction in an executable mapping of process `pid` (libc's text has many), but
 * [vdso], [vsyscall] (emulated, not to jump into) and `except`; null when there is none.
 */
export function syscallSiteInCode(
  pid: number,
  mem: RemoteMemory,
  except?: { start: bigint; end: bigint },
): bigint | null {
  for (const m of listMappings(pid)) {
    if (!m.prot.exec || m.kind === "vsyscall" || m.kind === "vdso") continue;
    if (except && m.start < except.end && except.start < m.end) continue;
    const code = mem.read(m.start, Math.min(m.size, CODE_SEARCH));
    const at = indexOfSyscall(code);
    if (at >= 0) return m.start + BigInt(at);
  }
  return null;
}

function indexOfSyscall(code: Uint8Array): number {
  for (let i = 0; i + 1 < code.length; i++) {
    if (code[i] === SYSCALL_INSN[0] && code[i + 1] === SYSCALL_INSN[1]) return i;
  }
  return -1;
}

/** Offset of the first `syscall` instruction bytes in a code image. */
export function syscallOffset(code: Uint8Array): number {
  const at = indexOfSyscall(code);
  if (at < 0) throw new TardigradeError("no syscall instruction found in the vdso");
  return at;
}

/** A page of code made for the injector: `syscall` then `int3`. */
export const SYSCALL_PAGE_CODE = new Uint8Array([...SYSCALL_INSN, 0xcc]);

/**
 * Waits for a thread's interrupt stop (one asked for with PTRACE_INTERRUPT); signals reported
 * first are taken from it, with their information, into `held`. False when the thread ended.
 */
export function awaitInterrupt(tid: number, held: SigInfo[]): boolean {
  for (;;) {
    const st = waitpid(tid)!;
    if (st.exited || st.signaled) return false;
    if (st.event !== 0) return true;
    // The trap of a single-step that ended just before is no signal of the process's own.
    if (st.stopSignal !== undefined && st.stopSignal !== SIG.SIGTRAP) held.push(getSigInfo(tid));
    cont(tid);
  }
}

/**
 * Detaches a thread that sits in an interrupt stop, handing it back the signals taken from it
 * while traced, each with its own information (sender, value): raised again, caught at its
 * delivery stop, given its saved `siginfo` and delivered, the last one by the detach itself.
 * A signal the thread blocks meanwhile is left queued for when it unblocks it, and so are all of
 * them for a process stopped by job control (`stopped`), which takes them once continued; those
 * are raised again by number only (their sender and value are lost: nothing but a delivery stop
 * takes a siginfo, and a stopped process must not run its handlers now).
 */
export function detachDelivering(
  pid: number,
  tid: number,
  held: readonly SigInfo[],
  stopped = false,
): void {
  const queue = [...held];
  for (;;) {
    const info = queue.shift();
    if (!info) return detach(tid);
    tgkill(pid, tid, info.signo);
    if (stopped || getSigMask(tid) & sigBit(info.signo)) continue;
    // Run into its delivery stop; signals reported before it join the queue.
    let st;
    for (;;) {
      cont(tid);
      st = waitpid(tid)!;
      if (st.exited || st.signaled) return;
      if (st.event === 0 && st.stopSignal === info.signo) break;
      if (st.event === 0 && st.stopSignal !== undefined) queue.push(getSigInfo(tid));
    }
    setSigInfo(tid, info);
    if (queue.length === 0) return detach(tid, info.signo);
    cont(tid, info.signo);
    interrupt(tid);
    if (!awaitInterrupt(tid, queue)) return;
  }
}

/** A thread's way back (way_back.ts): its frame at `slot`, in the scratch region at `base`. */
interface WayBack {
  base: bigint;
  gadget: bigint;
  slot: bigint;
}

/** The bytes below the stack pointer a function may use without moving it (x86-64 ABI). */
const RED_ZONE = 128n;

/** Every signal, as a 64-bit mask. */
const ALL_SIGNALS = (1n << 64n) - 1n;

/** Where an injector's queued records and data go in the runner's part of the scratch region. */
interface RunnerArea {
  records: number;
  maxRecords: number;
  data: number;
  dataBytes: number;
}

/** The whole area: one thread's queue at a time. */
const WHOLE_AREA: RunnerArea = {
  records: RECORDS_AT,
  maxRecords: MAX_RECORDS,
  data: DATA_AT,
  dataBytes: DATA_BYTES,
};

/** How many threads one parallel run (`Injector.inEachThread`) makes syscalls in at once. */
const PARALLEL_SLOTS = 32;

/** Slot `k` of a parallel run: a share of the records and of the data area of its own. */
function slotArea(k: number): RunnerArea {
  const maxRecords = MAX_RECORDS / PARALLEL_SLOTS;
  const dataBytes = Math.floor(DATA_BYTES / PARALLEL_SLOTS / 8) * 8;
  return {
    records: RECORDS_AT + k * maxRecords * RECORD_SIZE,
    maxRecords,
    data: DATA_AT + k * dataBytes,
    dataBytes,
  };
}

/** A run of queued syscalls started in one thread (`Injector.#startRun`), not yet waited for. */
interface StartedRun {
  calls: QueuedCall[];
  code: bigint;
  records: bigint;
  base: Regs;
  savedMask?: bigint;
}

/** How an injector treats its thread. */
export interface InjectorOptions {
  /**
   * The process dies with the tool (one being restored, traced with PTRACE_O_EXITKILL). Its
   * signals are then blocked while a syscall runs, so that pending signals set up by the restore
   * stay pending, and `batch` may keep injected registers across calls. Not for a dump's target:
   * should the tool be killed in between, that thread would be left deaf to signals or holding
   * injected registers.
   */
  diesWithTool?: boolean;
  /** Where the signals taken from the thread go (`deferred`); a fresh list if omitted. */
  held?: SigInfo[];
  /**
   * How many threads of a dump's target will run syscalls through this injector and those made
   * from it (`forThread`): each gets room for its way back in the scratch region.
   */
  threads?: number;
}

/**
 * Syscalls `raw` may make in the syscall runner, after the queued calls, instead of by a step of
 * their own: calls on descriptors and process attributes, none of which maps memory (the runner's
 * code is in the scratch region), makes a process or thread (which would start inside the runner)
 * or leaves the thread.
 */
const JOINS_QUEUE = new Set<number>(
  ([
    "close",
    "fcntl",
    "openat",
    "pidfd_open",
    "pidfd_getfd",
    "dup",
    "dup3",
    "lseek",
    "socketpair",
    "recvmsg",
    "sendmsg",
    "prctl",
    "ioctl",
    "setsockopt",
    "getsockopt",
    "eventfd2",
  ] as const).map((name) => SYS[name]),
);

/**
 * Executes syscalls in one stopped, traced thread. Each call leaves the thread's registers and
 * signal mask as they were. Signals that arrive during a call are collected in `deferred`, with
 * their full information, so the caller can hand them over when it lets the thread go
 * (`detachDelivering`).
 */
export class Injector implements Disposable {
  /** Address of the `syscall` instruction the thread is pointed at. */
  site: bigint;
  /** Signals the thread stopped for while injecting; deliver them on detach. */
  readonly deferred: SigInfo[];
  readonly #diesWithTool: boolean;
  /** ptrace events (fork, clone) the injected syscalls raised, with their messages (new tids). */
  readonly events: { event: number; message: bigint }[] = [];
  #scratch = 0n;

  /** Injects into thread `tid` of process `pid`, through `mem`, at `site` (found if omitted). */
  constructor(
    readonly pid: number,
    readonly tid: number,
    readonly mem: RemoteMemory,
    site?: bigint,
    options: InjectorOptions = {},
  ) {
    this.site = site ?? findSyscallSite(pid, mem, tid);
    this.#diesWithTool = options.diesWithTool ?? false;
    this.deferred = options.held ?? [];
    this.#frames = this.#diesWithTool ? 0 : options.threads ?? 1;
  }

  /**
   * Runs one syscall and returns the kernel's raw result (a negative errno on failure), with
   * the thread's registers and mask put back afterwards.
   */
  raw(nr: number, ...args: Arg[]): bigint {
    if (this.#pending.length && JOINS_QUEUE.has(nr)) {
      // Made in the same run as what was queued, last: one round trip for both.
      let result = 0n;
      this.#pending.push({
        nr,
        args: args.map(BigInt),
        name: `syscall ${nr}`,
        onResult: (r) => (result = r),
      });
      this.flush();
      return result;
    }
    this.flush(); // what was queued comes first
    if (this.#batch) return this.#step(this.#batch.regs, nr, args);
    if (this.#diesWithTool) return this.#rawStepped(nr, args);
    return this.#rawAtSyscallStops(nr, args, this.#wayBack());
  }

  /** `raw` by a single step (a process that dies with the tool). */
  #rawStepped(nr: number, args: Arg[]): bigint {
    const saved = getRegs(this.tid);
    const savedMask = getSigMask(this.tid);
    const mask = this.#stepMask(savedMask);
    try {
      if (mask !== savedMask) setSigMask(this.tid, mask);
      return this.#step(saved, nr, args);
    } finally {
      setRegs(this.tid, saved);
      // Settled before the mask is back: a signal queued by the restore stays in its queue.
      this.settle();
      if (mask !== savedMask) setSigMask(this.tid, savedMask);
    }
  }

  /**
   * The mask a syscall is single-stepped with in a process that dies with the tool: every signal
   * blocked, so that signals queued by the restore stay queued, but SIGTRAP: the kernel forces
   * the trap of a single-step, and a forced signal that is blocked has its handler reset to
   * SIG_DFL (a program's SIGTRAP handler would be lost). A dump's target keeps its own mask
   * (nothing is left blocked should the tool die; a signal that arrives is held back and handed
   * over at release).
   */
  #stepMask(mask: bigint): bigint {
    return (this.#diesWithTool ? ALL_SIGNALS : mask) & ~sigBit(SIG.SIGTRAP);
  }

  /** Syscalls queued (`queue`), not made yet. */
  #pending: QueuedCall[] = [];

  /**
   * Queues a syscall whose result nothing needs at once: in a process that dies with the tool,
   * queued syscalls are made together, in order, in one ptrace round trip (syscall_runner.ts),
   * before the next `raw`, `call` or `put`, or at `flush`. `onResult` is told the result (a
   * negative errno on failure) and throws to fail; without it a failure throws `SyscallError`.
   * In a dump's target the syscall is made at once. Arguments pointing into the scratch region
   * stay valid until it is made (`put` makes what is queued first).
   */
  queue(name: SyscallName, args: Arg[], onResult?: (result: bigint) => void): void {
    const call: QueuedCall = { nr: SYS[name], args: args.map(BigInt), name, onResult };
    if (!this.#diesWithTool) return this.#settleQueued(call, this.raw(call.nr, ...call.args));
    this.#takeQueue();
    this.#pending.push(call);
    if (this.#pending.length === this.#area.maxRecords) this.flush();
  }

  /**
   * Queues a syscall whose result is wanted (`queue`): the function returned gives it once made
   * (making what is queued first if need be), a failure thrown as by `call`. Reads of a thread's
   * state are so made together, in one round trip, where a process dies with the tool.
   */
  queueCall(name: SyscallName, args: Arg[]): () => bigint {
    let result: bigint | undefined;
    this.queue(name, args, (r) => (result = this.#checked(name, args, r)));
    return () => {
      if (result === undefined) this.flush();
      return result!;
    };
  }

  /** Makes every queued syscall now. */
  flush(): void {
    while (this.#pending.length) {
      const calls = this.#pending.splice(0, this.#area.maxRecords);
      let done = 0;
      try {
        while (done < calls.length) done += this.#runQueued(calls.slice(done));
      } catch (err) {
        this.#pending = []; // the restore fails: the rest would only fail after it
        this.#dataUsed = this.#dataWritten = 0;
        throw err;
      }
    }
    this.#dataUsed = this.#dataWritten = 0;
  }

  /** Bytes of the queued syscalls' data area in use. */
  #dataUsed = 0;
  /** Bytes of it already in the target: the rest is in `#data` only, written before a run. */
  #dataWritten = 0;
  /** The data area as queued, written into the target in one piece when the calls are made. */
  #data?: Uint8Array;

  /** Of the injectors sharing this one's scratch region (`forThread`), the one with a queue. */
  #queueHolder?: Injector;

  /** Where this injector's records and data go: the whole area, or its slot of a parallel run. */
  #area: RunnerArea = WHOLE_AREA;

  /** On the owner: a parallel run (`inEachThread`) gives each thread an area of its own. */
  #parallel = false;

  /**
   * Makes this injector the one whose queue the shared records and data area serve: another
   * thread's queue is made first.
   */
  #takeQueue(): void {
    const owner = this.#owner ?? this;
    if (owner.#parallel) return; // each thread has a slot of its own
    if (owner.#queueHolder !== this) owner.#queueHolder?.flush();
    owner.#queueHolder = this;
  }

  /**
   * Places `data` where a queued syscall can point at it, until it is made; returns its address
   * in the target. Only in a process that dies with the tool.
   */
  queueData(data: Uint8Array): bigint {
    if (!this.#diesWithTool) throw new TardigradeError("queueData: only while restoring");
    const area = this.#area;
    if (data.length > area.dataBytes) throw new RangeError("queued data too large");
    this.#takeQueue();
    if (this.#dataUsed + data.length > area.dataBytes) this.flush();
    const addr = this.scratch() + SCRATCH_SIZE + BigInt(area.data + this.#dataUsed);
    // As large as the area needs: a slot's is small, and a restore has an injector per thread.
    if ((this.#data?.length ?? 0) < area.dataBytes) {
      const grown = new Uint8Array(area.dataBytes);
      if (this.#data) grown.set(this.#data.subarray(0, this.#dataUsed));
      this.#data = grown;
    }
    this.#data!.set(data, this.#dataUsed);
    this.#dataUsed += (data.length + 7) & ~7;
    return addr;
  }

  /** Writes the queued data not yet in the target (one write for a whole run's paths …). */
  #writeQueuedData(): void {
    if (this.#dataUsed <= this.#dataWritten) return;
    const at = this.scratch() + SCRATCH_SIZE + BigInt(this.#area.data + this.#dataWritten);
    this.mem.write(at, this.#data!.subarray(this.#dataWritten, this.#dataUsed));
    this.#dataWritten = this.#dataUsed;
  }

  #settleQueued(call: QueuedCall, result: bigint): void {
    if (call.onResult) return call.onResult(result);
    this.#checked(call.name as SyscallName, call.args, result);
  }

  /** Whether the runner's code is in the scratch region (of the owner, which holds it). */
  #runnerWritten = false;

  /**
   * Runs `calls` through the runner; returns how many were made, up to and with the first that
   * failed (whose `onResult` let it pass).
   */
  #runQueued(calls: QueuedCall[]): number {
    return this.#finishRun(this.#startRun(calls));
  }

  /** Writes `calls` and the queued data into the target and lets the thread run them. */
  #startRun(calls: QueuedCall[]): StartedRun {
    const owner = this.#owner ?? this;
    const code = this.scratch() + SCRATCH_SIZE;
    if (!owner.#runnerWritten) {
      this.mem.write(code, RUNNER_CODE);
      owner.#runnerWritten = true;
    }
    const records = code + BigInt(this.#area.records);
    this.#writeQueuedData();
    this.mem.write(records, encodeRecords(calls));
    const base = this.#batch?.regs ?? getRegs(this.tid);
    const savedMask = this.#batch ? undefined : getSigMask(this.tid);
    try {
      if (savedMask !== undefined) setSigMask(this.tid, this.#stepMask(savedMask));
      setRegs(this.tid, {
        ...base,
        rip: code,
        r12: records,
        r13: BigInt(calls.length),
        orig_rax: -1n,
        eflags: base.eflags & ~EFLAGS_TF,
      });
      cont(this.tid);
    } catch (err) {
      setRegs(this.tid, base);
      if (savedMask !== undefined) setSigMask(this.tid, savedMask);
      throw err;
    }
    return { calls, code, records, base, savedMask };
  }

  /**
   * Waits for a started run's end, puts the thread's registers and mask back and settles the
   * results; returns how many were made, up to and with the first that failed.
   */
  #finishRun(run: StartedRun): number {
    const { calls, code, records, base, savedMask } = run;
    let left: bigint;
    try {
      left = this.#awaitTrap(code);
    } finally {
      setRegs(this.tid, base);
      if (savedMask !== undefined) setSigMask(this.tid, savedMask);
    }
    const made = calls.length - Number(left) + (left > 0n ? 1 : 0);
    const results = this.mem.read(records, made * RECORD_SIZE);
    for (let i = 0; i < made; i++) this.#settleQueued(calls[i], resultOf(results, i));
    return made;
  }

  /** Waits for the runner at `code`, let run, to reach its `int3`; returns its r13 then. */
  #awaitTrap(code: bigint): bigint {
    for (;;) {
      const st = waitpid(this.tid)!;
      if (st.exited || st.signaled) {
        throw new NoSuchProcess(this.tid, "it ended while running queued syscalls");
      }
      if (st.event !== 0) {
        if (st.event !== PTRACE_EVENT.STOP) {
          this.events.push({ event: st.event, message: getEventMsg(this.tid) });
        }
      } else if (st.stopSignal === SIG.SIGTRAP) {
        const regs = getRegs(this.tid);
        if (regs.rip === code + RUNNER_END) return regs.r13;
        throw new TardigradeError(
          `process ${this.pid}: the syscall runner stopped at 0x${regs.rip.toString(16)}`,
        );
      } else if (st.stopSignal !== undefined && FAULTS.includes(st.stopSignal)) {
        throw new TardigradeError(
          `process ${this.pid}: the syscall runner faulted (signal ${st.stopSignal})`,
        );
      } else if (st.stopSignal !== undefined) {
        this.deferred.push(getSigInfo(this.tid));
      }
      cont(this.tid);
    }
  }

  /**
   * For each of `threads` (injectors of the threads of one process being restored, made by
   * `forThread`, its owner among them or not), `queueIn` (given it and its index) queues
   * syscalls in that thread and returns how to finish; the syscalls are then made in all the threads at once, up to 32 at a
   * time, each thread running its own records in a slot of the runner's area: one wait for all
   * instead of a ptrace round trip after another. The finishes are called once their group's
   * syscalls are made, before the next group reuses the slots: they read what the syscalls wrote
   * (into `queueData`) and must not inject anything themselves. Their results are returned in
   * order. Elsewhere (a live process) each thread's syscalls are made in turn.
   */
  static inEachThread<T>(
    threads: readonly Injector[],
    queueIn: (inj: Injector, i: number) => () => T,
  ): T[] {
    const out: T[] = [];
    if (threads.length < 2 || !threads.every((t) => t.#diesWithTool)) {
      for (const [i, t] of threads.entries()) {
        const finish = queueIn(t, i);
        t.flush();
        out.push(finish());
      }
      return out;
    }
    const owner = threads[0].#owner ?? threads[0];
    if (threads.some((t) => (t.#owner ?? t) !== owner)) {
      throw new RangeError("inEachThread: threads of one process");
    }
    owner.#queueHolder?.flush(); // what one of them queued in the whole area comes first
    owner.#queueHolder = undefined;
    for (let i = 0; i < threads.length; i += PARALLEL_SLOTS) {
      const group = threads.slice(i, i + PARALLEL_SLOTS);
      let finishes: (() => T)[] = [];
      owner.#parallel = true;
      try {
        group.forEach((t, k) => t.#area = slotArea(k));
        finishes = group.map((t, k) => queueIn(t, i + k));
        const started: [Injector, StartedRun][] = [];
        let failure: unknown;
        for (const t of group) {
          if (!t.#pending.length) continue;
          try {
            started.push([t, t.#startRun(t.#pending.splice(0))]);
          } catch (err) {
            failure = err;
            break;
          }
        }
        // Every started thread is waited for and given back its registers, also after a failure.
        for (const [t, run] of started) {
          try {
            const made = t.#finishRun(run);
            // Past a failure its onResult let pass: the rest, alone.
            let done = made;
            while (done < run.calls.length) done += t.#runQueued(run.calls.slice(done));
          } catch (err) {
            failure ??= err;
          }
        }
        if (failure !== undefined) throw failure;
      } finally {
        for (const t of group) {
          t.#area = WHOLE_AREA;
          t.#pending = []; // empty but after a failure, which fails the restore
          t.#dataUsed = t.#dataWritten = 0;
        }
        owner.#parallel = false;
      }
      for (const finish of finishes) out.push(finish());
    }
    return out;
  }

  /** Registers and mask saved for a batch of syscalls (`batch`), while it runs. */
  #batch?: { regs: Regs; mask: bigint };

  /**
   * Runs `body`, whose syscalls in this thread share one save of the registers and mask and one
   * settle at the end: a third of the ptrace round trips per syscall. Only when the process dies
   * with the tool (`diesWithTool`); otherwise each syscall saves and puts back on its own, as in
   * between the thread holds injected registers, which a dump's target must never be left with
   * should the tool die. Nothing but injected syscalls may touch the thread's registers inside
   * `body`.
   */
  batch<T>(body: () => T): T {
    if (this.#batch || !this.#diesWithTool) return body();
    this.#batch = { regs: getRegs(this.tid), mask: getSigMask(this.tid) };
    setSigMask(this.tid, this.#stepMask(this.#batch.mask));
    const end = () => {
      const saved = this.#batch!;
      this.#batch = undefined;
      setRegs(this.tid, saved.regs);
      this.settle();
      setSigMask(this.tid, saved.mask);
    };
    // After a failure the thread may be gone: the failure is what to report, not the cleanup's.
    const endAfter = (err: unknown): never => {
      try {
        end();
      } catch { /* the error below says more */ }
      throw err;
    };
    let result: T;
    try {
      result = body();
    } catch (err) {
      endAfter(err);
    }
    if (result! instanceof Promise) {
      return result.then((value) => {
        end();
        return value;
      }, endAfter) as T;
    }
    end();
    return result!;
  }

  /**
   * Leaves the thread in an ordinary interrupt stop. After a single-step the kernel keeps the
   * thread's step flag, and should the tracer die then, the thread would be killed by SIGTRAP at
   * its next syscall; a `PTRACE_CONT` into a pending interrupt clears the flag without running
   * any user code.
   */
  settle(): void {
    interrupt(this.tid);
    cont(this.tid);
    if (!awaitInterrupt(this.tid, this.deferred)) {
      throw new NoSuchProcess(this.tid, "it ended while frozen");
    }
  }

  /**
   * Whether queued syscalls (`queue`) are made together in one round trip (a process that dies
   * with the tool), so that many small injected reads cost less than reading from outside.
   */
  get queues(): boolean {
    return this.#diesWithTool;
  }

  /** Whether this thread's syscalls run with a way back (way_back.ts) now. */
  get hasWayBack(): boolean {
    return this.#back != null && this.#back.base === (this.#owner ?? this).#scratch;
  }

  /** Frames the scratch region has room for (ways back), and how many are given out. */
  readonly #frames: number;
  #framesUsed = 0;
  /** The code ways back use, looked for once (null: the process has none). */
  #code?: WayBackCode | null;
  /** This thread's way back, in the scratch region at `base`: undefined until tried, null when none. */
  #back?: WayBack | null;

  /**
   * The way back of a dump target's thread (see way_back.ts), made on its first syscall after
   * the scratch region (which the first syscall of the process maps, without one). Null for a
   * process that dies with the tool, without the code for it, or once the scratch goes.
   */
  #wayBack(): WayBack | null {
    const owner = this.#owner ?? this;
    if (this.#diesWithTool) return null;
    // Made for a scratch region since unmapped: a new one gets new frames.
    if (this.#back === null || (this.#back && this.#back.base === owner.#scratch)) {
      return this.#back;
    }
    this.#back = null; // the syscalls below run without
    try {
      const base = owner.scratch();
      if (owner.#framesUsed >= owner.#frames) return null;
      const slot = base + SCRATCH_SIZE + BigInt(owner.#framesUsed++ * FRAME_STRIDE);
      const frame = this.#frameAt(() => slot);
      if (!frame) return null;
      this.mem.write(slot, frame);
      this.#back = { base, gadget: owner.#code!.gadget, slot };
    } catch (err) {
      if (err instanceof NoSuchProcess) throw err;
      // Without a way back the syscalls still run; only a killed tool could then harm the thread.
    }
    return this.#back;
  }

  /**
   * The bytes of this thread's way-back frame for the slot `place` picks given the frame's size;
   * null when the process has no code for a way back or the FPU state does not fit a frame.
   */
  #frameAt(place: (size: number) => bigint): Uint8Array | null {
    const owner = this.#owner ?? this;
    owner.#code ??= findWayBackCode(this.pid, this.mem);
    if (!owner.#code) return null;
    // As large as a frame holds: a full buffer may be a cut one.
    const xstate = getRegset(this.tid, NT.X86_XSTATE, MAX_XSTATE);
    if (xstate.length >= MAX_XSTATE) return null;
    const regs = getRegs(this.tid);
    const slot = place(wayBackFrameSize(xstate));
    return wayBackFrame(regs, getSigMask(this.tid), xstate, owner.#code.restorer, slot);
  }

  /**
   * Runs `body` with a way back whose frame lies on the thread's own stack below its red zone (the
   * syscalls that map and unmap the scratch region, where the other frames live), the bytes there
   * put back afterwards: every thread is stopped meanwhile, and the ABI leaves them free. Without
   * the code or the room, `body` gets none.
   */
  #withStackWayBack<T>(body: (back: WayBack | null) => T): T {
    let kept: { at: bigint; bytes: Uint8Array } | undefined;
    let back: WayBack | null = null;
    try {
      let slot = 0n;
      const frame = this.#frameAt((size) => {
        slot = (getRegs(this.tid).rsp - RED_ZONE - BigInt(size)) & ~63n;
        return slot;
      });
      if (frame) {
        const bytes = this.mem.read(slot, frame.length);
        this.mem.write(slot, frame);
        kept = { at: slot, bytes };
        back = { base: 0n, gadget: (this.#owner ?? this).#code!.gadget, slot };
      }
    } catch (err) {
      if (err instanceof NoSuchProcess) throw err;
      // No stack below it (a small thread stack): these two syscalls run without a way back.
    }
    try {
      return body(back);
    } finally {
      if (kept) this.mem.write(kept.at, kept.bytes);
    }
  }

  /**
   * `raw` for a dump's target: the syscall runs from registers that lead back by themselves (the
   * way back, when it has one), stopping at its entry and its exit (PTRACE_SYSCALL: no
   * single-step flag to leave behind, which would kill the thread with SIGTRAP at its next
   * syscall should the tool die). The thread is left in the syscall-exit stop with its own
   * registers: a tracer's death from there restarts what it was in as its freeze would have.
   */
  #rawAtSyscallStops(nr: number, args: Arg[], back: WayBack | null): bigint {
    const saved = getRegs(this.tid);
    const a = args.map(BigInt);
    setRegs(this.tid, {
      ...saved,
      rax: BigInt(nr),
      rdi: a[0] ?? 0n,
      rsi: a[1] ?? 0n,
      rdx: a[2] ?? 0n,
      r10: a[3] ?? 0n,
      r8: a[4] ?? 0n,
      r9: a[5] ?? 0n,
      rip: back?.gadget ?? this.site,
      rsp: back?.slot ?? saved.rsp,
      orig_rax: -1n,
      eflags: saved.eflags & ~EFLAGS_TF,
    });
    try {
      let entered = false;
      for (;;) {
        syscallStep(this.tid);
        const st = waitpid(this.tid)!;
        if (st.exited || st.signaled) {
          throw new NoSuchProcess(this.tid, `it ended while running syscall ${nr}`);
        }
        if (st.stopSignal === SYSCALL_STOP) {
          if (entered) break;
          entered = true;
        } else if (st.event !== 0) {
          if (st.event !== PTRACE_EVENT.STOP) {
            this.events.push({ event: st.event, message: getEventMsg(this.tid) });
          }
        } else if (st.stopSignal !== undefined) {
          // A signal on the way: held for release, the syscall goes on.
          this.deferred.push(getSigInfo(this.tid));
        }
      }
      return BigInt.asIntN(64, getRegs(this.tid).rax);
    } finally {
      setRegs(this.tid, saved);
    }
  }

  /** Runs a syscall with registers given by the caller as a base (used when restoring). */
  #step(base: Regs, nr: number, args: Arg[]): bigint {
    const a = args.map(BigInt);
    setRegs(this.tid, {
      ...base,
      rax: BigInt(nr),
      rdi: a[0] ?? 0n,
      rsi: a[1] ?? 0n,
      rdx: a[2] ?? 0n,
      r10: a[3] ?? 0n,
      r8: a[4] ?? 0n,
      r9: a[5] ?? 0n,
      rip: this.site,
      // No syscall in progress: the kernel must not apply restart logic to our registers.
      orig_rax: -1n,
      eflags: base.eflags & ~0x100n,
    });
    for (;;) {
      singlestep(this.tid);
      const st = waitpid(this.tid)!;
      if (st.exited || st.signaled) {
        throw new NoSuchProcess(this.tid, `it ended while running syscall ${nr}`);
      }
      if (st.stopSignal === SIG.SIGTRAP && st.event === 0) break;
      if (st.event !== 0) {
        // fork/clone events stop inside the syscall: note the new pid, then step on.
        if (st.event !== PTRACE_EVENT.STOP) {
          this.events.push({ event: st.event, message: getEventMsg(this.tid) });
        }
        continue;
      }
      // A signal: keep it for release; step again unless the syscall already ran.
      const atSite = getRegs(this.tid).rip === this.site;
      if (atSite && (st.stopSignal === SIG.SIGSEGV || st.stopSignal === SIG.SIGBUS)) {
        throw new TardigradeError(
          `process ${this.pid}: no syscall instruction at 0x${
            this.site.toString(16)
          } to inject with`,
        );
      }
      if (st.stopSignal !== undefined) this.deferred.push(getSigInfo(this.tid));
      if (!atSite) break;
    }
    return BigInt.asIntN(64, getRegs(this.tid).rax);
  }

  /** Runs a syscall by name; a negative result becomes a `SyscallError` naming the process. */
  call(name: SyscallName, ...args: Arg[]): bigint {
    return this.#checked(name, args, this.raw(SYS[name], ...args));
  }

  /** `call` without a way back: for the syscalls that map and unmap the region it lives in. */
  #callStepped(name: SyscallName, ...args: Arg[]): bigint {
    this.flush();
    const nr = SYS[name];
    const r = this.#diesWithTool
      ? this.#rawStepped(nr, args)
      : this.#withStackWayBack((back) => this.#rawAtSyscallStops(nr, args, back));
    return this.#checked(name, args, r);
  }

  #checked(name: SyscallName, args: Arg[], r: bigint): bigint {
    if (r < 0n && r > -4096n) {
      throw new SyscallError(`${name} in ${this.tid}`, args, Number(-r));
    }
    return r;
  }

  /**
   * An injector for another thread of the same process, sharing this one's scratch region;
   * `held` as in `InjectorOptions`.
   */
  forThread(tid: number, held?: SigInfo[]): Injector {
    const other = new Injector(this.pid, tid, this.mem, this.site, {
      diesWithTool: this.#diesWithTool,
      held,
    });
    other.#owner = this;
    return other;
  }

  #owner?: Injector;

  /** A private read-write region of the target for syscall arguments (mapped on first use). */
  scratch(): bigint {
    if (this.#owner) return this.#owner.scratch();
    if (this.#scratch === 0n) {
      const flags = MAP.PRIVATE | MAP.ANONYMOUS;
      const prot = this.#diesWithTool ? RWX : RW;
      this.#scratch = this.#callStepped("mmap", 0, this.#scratchSize, prot, flags, -1, 0);
      this.#runnerWritten = false;
      this.#framesUsed = 0;
    }
    return this.#scratch;
  }

  /** Maps the scratch region at a chosen address (a gap the restored layout leaves free). */
  scratchAt(addr: bigint): bigint {
    if (this.#scratch !== 0n) throw new RangeError("scratch already mapped");
    const flags = MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE;
    const prot = this.#diesWithTool ? RWX : RW;
    this.#scratch = this.call("mmap", addr, this.#scratchSize, prot, flags, -1, 0);
    this.#runnerWritten = false;
    return this.#scratch;
  }

  /** How many bytes `scratchAt` maps. */
  get scratchBytes(): bigint {
    return this.#scratchSize;
  }

  /** Forgets the scratch region without unmapping it (the restorer unmaps it itself). */
  dropScratch(): void {
    this.flush();
    this.#scratch = 0n;
    this.#runnerWritten = false;
  }

  /** The scratch region's range, so a dump can leave it out. */
  get scratchRange(): { start: bigint; end: bigint } | null {
    if (this.#owner) return this.#owner.scratchRange;
    return this.#scratch ? { start: this.#scratch, end: this.#scratch + this.#scratchSize } : null;
  }

  /** The scratch region's size: the argument area, then the ways back. */
  get #scratchSize(): bigint {
    const runner = this.#diesWithTool ? RUNNER_BYTES : 0;
    return SCRATCH_SIZE + BigInt(this.#frames * FRAME_STRIDE + runner);
  }

  /** Copies bytes into scratch memory at `offset` and returns their address in the target. */
  put(data: Uint8Array, offset = 0): bigint {
    if (BigInt(offset + data.length) > SCRATCH_SIZE) throw new RangeError("scratch overflow");
    this.flush(); // a queued syscall may still read what is there
    const addr = this.scratch() + BigInt(offset);
    this.mem.write(addr, data);
    return addr;
  }

  /** Reads bytes back from scratch memory. */
  get(offset: number, length: number): Uint8Array {
    this.flush(); // what a queued syscall writes there
    return this.mem.read(this.scratch() + BigInt(offset), length);
  }

  /** Unmaps the scratch region. Safe to call when none was made. */
  release(): void {
    if (this.#owner || this.#scratch === 0n) return;
    const addr = this.#scratch;
    this.#scratch = 0n;
    try {
      this.#callStepped("munmap", addr, this.#scratchSize); // the ways back go with it
    } catch (err) {
      if (!(err instanceof SyscallError && err.errno === Errno.ESRCH)) throw err;
    }
  }

  /** Unmaps the scratch region (`using`). */
  [Symbol.dispose](): void {
    this.release();
  }
}
