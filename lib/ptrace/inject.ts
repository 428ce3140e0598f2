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
  getSigInfo,
  getSigMask,
  interrupt,
  MAP,
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
  tgkill,
  waitpid,
} from "../../ffi/mod.ts";
import { NoSuchProcess, TardigradeError } from "../errors.ts";
import { findVdso, listMappings } from "../inspect/mappings.ts";
import type { RemoteMemory } from "../inspect/memory.ts";

/** Name of an injectable syscall. */
export type SyscallName = keyof typeof SYS;
/** A syscall argument: a number, or bytes to place in the target's scratch memory. */
export type Arg = bigint | number;

/** The scratch region is plain read-write memory. */
const RW = PROT.READ | PROT.WRITE;

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

/** Every signal, as a 64-bit mask. */
const ALL_SIGNALS = (1n << 64n) - 1n;

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
}

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
  }

  /**
   * Runs one syscall and returns the kernel's raw result (a negative errno on failure), with
   * the thread's registers and mask put back afterwards.
   */
  raw(nr: number, ...args: Arg[]): bigint {
    if (this.#batch) return this.#step(this.#batch.regs, nr, args);
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
   * The mask a syscall is stepped with. Never with SIGTRAP blocked: the kernel forces the trap of
   * a single-step, and a forced signal that is blocked has its handler reset to SIG_DFL (a
   * program's SIGTRAP handler would be lost). Every other signal is blocked in a process that
   * dies with the tool; a dump's target keeps its own mask, so a killed tool leaves nothing
   * blocked (a signal that arrives is held back by #step and handed over at release).
   */
  #stepMask(mask: bigint): bigint {
    return (this.#diesWithTool ? ALL_SIGNALS : mask) & ~sigBit(SIG.SIGTRAP);
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
    const r = this.raw(SYS[name], ...args);
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
      this.#scratch = this.call("mmap", 0, SCRATCH_SIZE, RW, MAP.PRIVATE | MAP.ANONYMOUS, -1, 0);
    }
    return this.#scratch;
  }

  /** Maps the scratch region at a chosen address (a gap the restored layout leaves free). */
  scratchAt(addr: bigint): bigint {
    if (this.#scratch !== 0n) throw new RangeError("scratch already mapped");
    const flags = MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE;
    this.#scratch = this.call("mmap", addr, SCRATCH_SIZE, RW, flags, -1, 0);
    return this.#scratch;
  }

  /** Forgets the scratch region without unmapping it (the restorer unmaps it itself). */
  dropScratch(): void {
    this.#scratch = 0n;
  }

  /** The scratch region's range, so a dump can leave it out. */
  get scratchRange(): { start: bigint; end: bigint } | null {
    if (this.#owner) return this.#owner.scratchRange;
    return this.#scratch ? { start: this.#scratch, end: this.#scratch + SCRATCH_SIZE } : null;
  }

  /** Copies bytes into scratch memory at `offset` and returns their address in the target. */
  put(data: Uint8Array, offset = 0): bigint {
    if (BigInt(offset + data.length) > SCRATCH_SIZE) throw new RangeError("scratch overflow");
    const addr = this.scratch() + BigInt(offset);
    this.mem.write(addr, data);
    return addr;
  }

  /** Reads bytes back from scratch memory. */
  get(offset: number, length: number): Uint8Array {
    return this.mem.read(this.scratch() + BigInt(offset), length);
  }

  /** Unmaps the scratch region. Safe to call when none was made. */
  release(): void {
    if (this.#owner || this.#scratch === 0n) return;
    const addr = this.#scratch;
    this.#scratch = 0n;
    try {
      this.call("munmap", addr, SCRATCH_SIZE);
    } catch (err) {
      if (!(err instanceof SyscallError && err.errno === Errno.ESRCH)) throw err;
    }
  }

  /** Unmaps the scratch region (`using`). */
  [Symbol.dispose](): void {
    this.release();
  }
}
