/**
 * Signal dispositions (`rt_sigaction`) and the signals pending for the whole process. Per-thread
 * masks and pending signals belong to threads.ts.
 */
import { peekSigInfo, SIG, SIG_DISPOSITION, sigBit } from "../../ffi/mod.ts";
import { hexMask, readStatus } from "../inspect/procfs.ts";
import type { PendingSignal, SigactionEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

/** Signals 1..64 whose disposition can be read and set (all but SIGKILL and SIGSTOP). */
export const SETTABLE_SIGNALS = Array.from({ length: 64 }, (_, i) => i + 1).filter((s) =>
  s !== SIG.SIGKILL && s !== SIG.SIGSTOP
);

/** sizeof(sigset_t) as the kernel's rt_sig* calls take it. */
const SIGSET_SIZE = 8;

/**
 * The signals whose disposition may not be the default one: those /proc says are caught or
 * ignored, and SIGCHLD, whose SA_NOCLDSTOP/SA_NOCLDWAIT flags count even with SIG_DFL. Only
 * these are asked of the process (an injected call each), not all 62.
 */
function nonDefault(pid: number): number[] {
  const s = readStatus(pid);
  const set = hexMask(s.get("SigCgt")) | hexMask(s.get("SigIgn")) | sigBit(SIG.SIGCHLD);
  return SETTABLE_SIGNALS.filter((signo) => (set & sigBit(signo)) !== 0n);
}

/** Every signal's disposition but the default ones: rt_sigaction(sig, NULL, &old) in the target. */
export function dumpSigactions(inj: Injector): SigactionEntry[] {
  const out: SigactionEntry[] = [];
  const signals = nonDefault(inj.pid);
  // Each answer in its own 32 bytes of scratch, queued: one round trip in a restored process.
  const at = inj.scratch();
  signals.forEach((signo, k) => {
    inj.queue("rt_sigaction", [signo, 0, at + BigInt(32 * k), SIGSET_SIZE]);
  });
  const all = new BigUint64Array(inj.get(0, 32 * signals.length).slice().buffer);
  signals.forEach((signo, k) => {
    const [handler, flags, restorer, mask] = all.subarray(4 * k, 4 * k + 4);
    if (handler === SIG_DISPOSITION.DFL && flags === 0n && mask === 0n) return;
    out.push({ signo, handler, flags, restorer, mask });
  });
  return out;
}

/**
 * Sets every signal's disposition: the dumped ones, and the default for the others the new
 * process (a fork of the stub) does not have at their default already.
 */
export function restoreSigactions(inj: Injector, list: SigactionEntry[]): void {
  const bySig = new Map(list.map((s) => [s.signo, s]));
  for (const signo of new Set([...bySig.keys(), ...nonDefault(inj.pid)])) {
    const s = bySig.get(signo);
    const act = new BigUint64Array(
      s ? [s.handler, s.flags, s.restorer, s.mask] : [SIG_DISPOSITION.DFL, 0n, 0n, 0n],
    );
    inj.queue("rt_sigaction", [signo, inj.queueData(new Uint8Array(act.buffer)), 0, SIGSET_SIZE]);
  }
}

/** The signals queued for the whole process, with their siginfo (PTRACE_PEEKSIGINFO). */
export function dumpSharedPending(pid: number): PendingSignal[] {
  return peekSigInfo(pid, true).map((s) => ({ signo: s.signo, siginfo: s.raw }));
}

/** Queues the process-wide signals again; `pid` is the process's pid as it sees itself. */
export function restoreSharedPending(inj: Injector, pid: number, list: PendingSignal[]): void {
  for (const s of list) inj.queue("rt_sigqueueinfo", [pid, s.signo, inj.queueData(s.siginfo)]);
  inj.flush();
}
