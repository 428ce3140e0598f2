/** Interval timers (setitimer): ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF. */
import { ITIMER } from "../../ffi/mod.ts";
import type { ItimerEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

const WHICH = [ITIMER.REAL, ITIMER.VIRTUAL, ITIMER.PROF];
const US = 1_000_000n;

/** The armed interval timers, as getitimer in the target tells them (queued: one run). */
export function dumpItimers(inj: Injector): ItimerEntry[] {
  const out: ItimerEntry[] = [];
  WHICH.forEach((which, i) => inj.queue("getitimer", [which, inj.scratch() + BigInt(32 * i)]));
  inj.flush();
  const all = new BigUint64Array(inj.get(0, 32 * WHICH.length).slice().buffer);
  for (const [i, which] of WHICH.entries()) {
    const [iSec, iUsec, vSec, vUsec] = all.subarray(4 * i, 4 * i + 4);
    const valueUs = vSec * US + vUsec;
    if (valueUs === 0n) continue;
    out.push({ which, intervalUs: iSec * US + iUsec, valueUs });
  }
  return out;
}

/** Arms the dumped interval timers and disarms the others (queued, in a process restored). */
export function restoreItimers(inj: Injector, list: ItimerEntry[]): void {
  for (const which of WHICH) {
    const t = list.find((i) => i.which === which);
    const v = t
      ? [t.intervalUs / US, t.intervalUs % US, t.valueUs / US, t.valueUs % US]
      : [0n, 0n, 0n, 0n];
    inj.queue("setitimer", [which, inj.queueData(new Uint8Array(new BigUint64Array(v).buffer)), 0]);
  }
}
