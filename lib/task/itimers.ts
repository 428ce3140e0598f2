/** Interval timers (setitimer): ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF. */
import { ITIMER } from "../../ffi/mod.ts";
import type { ItimerEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

const WHICH = [ITIMER.REAL, ITIMER.VIRTUAL, ITIMER.PROF];
const US = 1_000_000n;

/** The armed interval timers, as getitimer in the target tells them. */
export function dumpItimers(inj: Injector): ItimerEntry[] {
  const out: ItimerEntry[] = [];
  for (const which of WHICH) {
    inj.call("getitimer", which, inj.scratch());
    const [iSec, iUsec, vSec, vUsec] = new BigUint64Array(inj.get(0, 32).slice().buffer);
    const valueUs = vSec * US + vUsec;
    if (valueUs === 0n) continue;
    out.push({ which, intervalUs: iSec * US + iUsec, valueUs });
  }
  return out;
}

/** Arms the dumped interval timers and disarms the others. */
export function restoreItimers(inj: Injector, list: ItimerEntry[]): void {
  for (const which of WHICH) {
    const t = list.find((i) => i.which === which);
    const v = t
      ? [t.intervalUs / US, t.intervalUs % US, t.valueUs / US, t.valueUs % US]
      : [0n, 0n, 0n, 0n];
    inj.call("setitimer", which, inj.put(new Uint8Array(new BigUint64Array(v).buffer), 0), 0);
  }
}
