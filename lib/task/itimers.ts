/** Interval timers (setitimer): ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF. */
import { ITIMER } from "../../ffi/mod.ts";
import type { ItimerEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

const WHICH = [ITIMER.REAL, ITIMER.VIRTUAL, ITIMER.PROF];
const US = 1_000_000n;

/**
 * The armed interval timers, as getitimer in the target tells them (queued: one run). One with
 * an interval but no time left is kept too: a periodic ITIMER_REAL that fired waits so, its
 * SIGALRM pending, until the process takes the signal, which reloads it (the kernel does that
 * in dequeue_signal).
 */
export function dumpItimers(inj: Injector): ItimerEntry[] {
  const out: ItimerEntry[] = [];
  WHICH.forEach((which, i) => inj.queue("getitimer", [which, inj.scratch() + BigInt(32 * i)]));
  inj.flush();
  const all = new BigUint64Array(inj.get(0, 32 * WHICH.length).slice().buffer);
  for (const [i, which] of WHICH.entries()) {
    const [iSec, iUsec, vSec, vUsec] = all.subarray(4 * i, 4 * i + 4);
    const valueUs = vSec * US + vUsec;
    const intervalUs = iSec * US + iUsec;
    if (valueUs === 0n && intervalUs === 0n) continue;
    out.push({ which, intervalUs, valueUs });
  }
  return out;
}

/**
 * Arms the dumped interval timers and disarms the others (queued, in a process restored, after
 * its signal dispositions). A periodic ITIMER_REAL that had fired (no time left, its SIGALRM
 * pending) cannot be set so: setitimer with no time left forgets the interval. It is armed to
 * fire in 1 µs instead: its SIGALRM, the one the image holds pending (restored later, onto this
 * one: a standard signal is pending once), waits as it did, and taking it reloads the timer.
 */
export function restoreItimers(inj: Injector, list: ItimerEntry[]): void {
  for (const which of WHICH) {
    const t = list.find((i) => i.which === which);
    const valueUs = t && t.valueUs === 0n && which === ITIMER.REAL ? 1n : t?.valueUs ?? 0n;
    const v = t
      ? [t.intervalUs / US, t.intervalUs % US, valueUs / US, valueUs % US]
      : [0n, 0n, 0n, 0n];
    inj.queue("setitimer", [which, inj.queueData(new Uint8Array(new BigUint64Array(v).buffer)), 0]);
  }
}
