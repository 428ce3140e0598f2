/**
 * Threads: general registers, FPU/xstate, fs/gs base, blocked mask, pending signals,
 * sigaltstack, clear_child_tid, robust list, rseq and name, and what the modules of their own
 * concepts read per thread (credentials, securebits, scheduling). Dump reads them from a frozen
 * thread; restore gives them to a thread made with clone3.
 */
import {
  CLOCK,
  cont,
  Errno,
  getRegs,
  getRegset,
  getRobustList,
  getRseqConfig,
  getSigMask,
  interrupt,
  NT,
  peekSigInfo,
  PR,
  type Regs,
  setRegs,
  setRegset,
  setSigMask,
  SYS,
  syscall,
  TIMER_ABSTIME,
} from "../../ffi/mod.ts";
import { readComm } from "../inspect/procfs.ts";
import type { FrozenThread } from "../ptrace/freeze.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { PendingSignal, ThreadEntry } from "../image/schema.ts";
import { cloneThreadsWithIds, type TaskId, waitStopped } from "../ptrace/stub.ts";
import { queueSecurebits } from "./capabilities.ts";
import { dumpCredentials } from "./credentials.ts";
import { dumpThreadCgroups } from "./cgroups.ts";
import { dumpScheduling, queueTimerSlack, queueTimerSlackRestore } from "./scheduler.ts";

const ERESTART_RESTARTBLOCK = -BigInt(Errno.ERESTART_RESTARTBLOCK);
const EINTR = -BigInt(Errno.EINTR);
const NR_NANOSLEEP = BigInt(SYS.nanosleep);
const NR_CLOCK_NANOSLEEP = BigInt(SYS.clock_nanosleep);
const NR_POLL = BigInt(SYS.poll);

/** Reads a `struct timespec` from the target, in nanoseconds. */
function readTimespecNs(inj: Injector, addr: bigint): bigint {
  const v = new DataView(inj.mem.read(addr, 16).buffer);
  return v.getBigInt64(0, true) * 1_000_000_000n + v.getBigInt64(8, true);
}

/**
 * For a thread stopped inside a relative `nanosleep`: the time it still had to sleep. The
 * kernel wrote it to the `rem` argument when our interrupt stopped the sleep; with no `rem` we
 * fall back to the full request (sleeping longer is safer than returning early).
 */
function sleepRemaining(inj: Injector, regs: Record<string, bigint>): bigint | undefined {
  if (BigInt.asIntN(64, regs.rax) !== ERESTART_RESTARTBLOCK) return undefined;
  if (regs.orig_rax === NR_CLOCK_NANOSLEEP) {
    if (regs.rsi & BigInt(TIMER_ABSTIME)) return undefined;
    return readTimespecNs(inj, regs.r10 !== 0n ? regs.r10 : regs.rdx);
  }
  if (regs.orig_rax === NR_NANOSLEEP) {
    return readTimespecNs(inj, regs.rsi !== 0n ? regs.rsi : regs.rdi);
  }
  return undefined;
}

function toPending(list: { signo: number; raw: Uint8Array }[]): PendingSignal[] {
  return list.map((s) => ({ signo: s.signo, siginfo: s.raw }));
}

/**
 * The signals pending for one frozen thread. Those the freeze took from it came out of its queue
 * first: they lead.
 */
export function threadPending(thread: FrozenThread): PendingSignal[] {
  return toPending([...thread.held, ...peekSigInfo(thread.tid, false)]);
}

/** Dumps one frozen thread; `inj` runs syscalls in that thread. */
export function dumpThread(pid: number, thread: FrozenThread, inj: Injector): ThreadEntry {
  const finish = queueThreadDump(pid, thread, inj);
  inj.flush();
  return finish();
}

/**
 * `dumpThread` in two steps, for `Injector.inEachThread`: queues the syscalls that read the
 * thread's state in it, and returns how to finish once they are made.
 */
export function queueThreadDump(
  pid: number,
  thread: FrozenThread,
  inj: Injector,
): () => ThreadEntry {
  const pending = threadPending(thread); // before anything runs in it
  // sigaltstack(NULL, &old): stack_t { void *ss_sp; int ss_flags; size_t ss_size; }, and
  // prctl(PR_GET_TID_ADDRESS, &addr), the securebits and the timer slack beside it: queued, one
  // round trip in a restored process. Their output goes to the queue's data (the thread's own
  // where several threads run at once), else to the scratch region.
  const out = inj.queues ? inj.queueData(new Uint8Array(40)) : inj.scratch();
  inj.queue("sigaltstack", [0, out]);
  inj.queue("prctl", [PR.GET_TID_ADDRESS, out + 32n]);
  const securebits = queueSecurebits(inj);
  const timerSlack = queueTimerSlack(inj);
  return () => {
    const ss = new DataView(inj.mem.read(out, 40).buffer);
    const clearChildTid = ss.getBigUint64(32, true);
    const tid = thread.tid;
    const regs = { ...thread.regs };
    const name = readComm(pid, tid);
    const cgroups = dumpThreadCgroups(pid, tid);
    return {
      tid,
      name,
      regs,
      xstate: getRegset(tid, NT.X86_XSTATE, 8192),
      sigmask: getSigMask(tid),
      pending,
      sigaltstack: {
        sp: ss.getBigUint64(0, true),
        flags: ss.getInt32(8, true),
        size: ss.getBigUint64(16, true),
      },
      clearChildTid,
      robustList: getRobustList(tid),
      rseq: getRseqConfig(tid),
      sleepRemainingNs: sleepRemaining(inj, regs),
      creds: dumpCredentials(pid, tid),
      securebits: securebits(),
      scheduling: dumpScheduling(pid, tid, timerSlack()),
      ...(cgroups ? { cgroups } : {}),
    };
  };
}

/**
 * Makes threads with the dumped tids (as the process sees them) in the restored process, all in
 * one run of queued clone3 calls; returns their tids on the host, in order.
 */
export function cloneThreads(inj: Injector, tids: readonly TaskId[]): number[] {
  return cloneThreadsWithIds(inj, tids);
}

/**
 * Gives a stopped thread of the restored process its per-thread kernel state (all but the
 * registers and the mask, which the caller sets last: until then the injector keeps every signal
 * blocked, so the signals queued here stay pending with their information).
 * `inj` runs in the thread (its `tid` is the host's); `tgid` and `tid` are its process's pid and
 * its tid as the process sees them (the image's, or in a nested pid namespace the innermost), for
 * what is written into it. Returns the thread's
 * securebits as they are (read in the same run: restoreCredentials needs them, and only it
 * changes them).
 */
export function restoreThreadState(
  inj: Injector,
  t: ThreadEntry,
  tgid: number,
  tid: number = t.tid,
): number {
  const finish = queueThreadState(inj, t, tgid, tid);
  inj.flush();
  return finish();
}

/**
 * `restoreThreadState` in two steps, for `Injector.inEachThread`: queues the syscalls that give
 * the thread its state, and returns how to finish (its xstate, and its securebits as they are)
 * once they are made.
 */
export function queueThreadState(
  inj: Injector,
  t: ThreadEntry,
  tgid: number,
  tid: number = t.tid,
): () => number {
  const ss = new BigUint64Array([
    t.sigaltstack.sp,
    BigInt(t.sigaltstack.flags & ~1),
    t.sigaltstack.size,
  ]);
  // Queued: a thread's state is made in one ptrace round trip.
  // SS_DISABLE (2) with no stack: nothing to set.
  if (t.sigaltstack.sp !== 0n || t.sigaltstack.size !== 0n) {
    inj.queue("sigaltstack", [inj.queueData(new Uint8Array(ss.buffer)), 0]);
  }
  inj.queue("set_tid_address", [t.clearChildTid]);
  if (t.robustList.head !== 0n) inj.queue("set_robust_list", [t.robustList.head, t.robustList.len]);
  if (t.rseq.abiPointer !== 0n) {
    inj.queue("rseq", [t.rseq.abiPointer, t.rseq.length, 0, t.rseq.signature]);
  }
  const name = inj.queueData(new TextEncoder().encode(t.name.slice(0, 15) + "\0"));
  inj.queue("prctl", [PR.SET_NAME, name]);
  for (const s of t.pending) {
    inj.queue("rt_tgsigqueueinfo", [tgid, tid, s.signo, inj.queueData(s.siginfo)]);
  }
  if (t.scheduling) queueTimerSlackRestore(inj, t.scheduling);
  const securebits = queueSecurebits(inj);
  return () => {
    setRegset(inj.tid, NT.X86_XSTATE, t.xstate);
    return securebits();
  };
}

/**
 * A thread stopped in a relative nanosleep gets a true restart block: the same sleep for the
 * remaining time is started and interrupted, so `restart_syscall` sleeps exactly what was left.
 */
function primeSleep(inj: Injector, t: ThreadEntry, base: Regs): boolean {
  const ns = t.sleepRemainingNs!;
  const ts = new BigInt64Array([ns / 1_000_000_000n, ns % 1_000_000_000n]);
  const req = inj.put(new Uint8Array(ts.buffer), 2048);
  const clockid = base.orig_rax === NR_CLOCK_NANOSLEEP ? base.rdi : BigInt(CLOCK.MONOTONIC);
  const rem = base.orig_rax === NR_CLOCK_NANOSLEEP ? base.r10 : base.rsi;
  setSigMask(inj.tid, ~0n);
  setRegs(inj.tid, {
    ...base,
    rax: NR_CLOCK_NANOSLEEP,
    rdi: clockid,
    rsi: 0n,
    rdx: req,
    r10: rem,
    rip: inj.site,
    orig_rax: -1n,
  });
  cont(inj.tid);
  // Wait until it sleeps in clock_nanosleep, then interrupt it there.
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline) {
    const sc = Deno.readTextFileSync(`/proc/${inj.pid}/task/${inj.tid}/syscall`);
    if (sc.startsWith(`${NR_CLOCK_NANOSLEEP} `)) break;
    syscall("sched_yield"); // the thread needs a CPU to get there: not spun away from it
  }
  interrupt(inj.tid);
  waitStopped(inj.tid, "restored thread");
  return BigInt.asIntN(64, getRegs(inj.tid).rax) === ERESTART_RESTARTBLOCK;
}

/**
 * The registers a thread resumes with. Each thread is left stopped inside the kernel's signal
 * path, so a syscall cut short by the freeze (-ERESTARTSYS and friends) is restarted by the kernel
 * itself on resume, or turned into EINTR if a handler runs first, exactly as it would have been.
 * Only a restart through `restart_syscall` needs care: its restart block must be made anew
 * (a relative sleep), the call is made again (poll) or, as CRIU does, the program sees EINTR.
 */
export function finalRegs(inj: Injector, t: ThreadEntry): Regs {
  const regs = { ...t.regs } as Regs;
  const inSyscall = BigInt.asIntN(64, regs.orig_rax) >= 0n;
  if (inSyscall && BigInt.asIntN(64, regs.rax) === ERESTART_RESTARTBLOCK) {
    if (regs.orig_rax === NR_POLL) {
      // poll() cut short always asks for restart_syscall, also with no timeout (GNU `tail -f`
      // waits so and exits on EINTR). Its arguments are still in the registers: run it again.
      // With a timeout it waits the whole timeout again: late rather than a spurious EINTR.
      regs.rax = regs.orig_rax;
      regs.rip -= 2n;
      regs.orig_rax = -1n;
      return regs;
    }
    const primed = t.sleepRemainingNs !== undefined && primeSleep(inj, t, regs);
    if (!primed) {
      regs.rax = EINTR; // as CRIU does: the program sees EINTR
      regs.orig_rax = -1n;
    }
  }
  return regs;
}
