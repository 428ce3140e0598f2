/** Resource limits, as the process itself sees them. */
import { Errno, errnoName, errnoText, RLIMIT, SYS } from "../../ffi/mod.ts";
import type { RlimitEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

/** RLIMIT_CPU .. RLIMIT_RTTIME. */
export const RESOURCES: number[] = Object.values(RLIMIT);

/** Every limit: prlimit64(0, res, NULL, &old) in the target. */
export function dumpRlimits(inj: Injector): RlimitEntry[] {
  return RESOURCES.map((resource) => {
    inj.call("prlimit64", 0, resource, 0, inj.scratch());
    const [soft, hard] = new BigUint64Array(inj.get(0, 16).slice().buffer);
    return { resource, soft, hard };
  });
}

/**
 * Sets the limits where this machine allows; returns a warning for each it refused (no process
 * may raise a hard limit here: root lacks CAP_SYS_RESOURCE).
 */
export function restoreRlimits(inj: Injector, list: RlimitEntry[]): string[] {
  const warnings: string[] = [];
  for (const r of list) {
    const limits = inj.put(new Uint8Array(new BigUint64Array([r.soft, r.hard]).buffer), 0);
    const res = inj.raw(SYS.prlimit64, 0, r.resource, limits, 0);
    if (res < 0n) {
      const e = Number(-res);
      const why = e === Errno.EPERM ? "no process may raise a hard limit here" : errnoText(e);
      warnings.push(`rlimit ${r.resource} (${r.soft}/${r.hard}): ${errnoName(e)}, ${why}`);
    }
  }
  return warnings;
}
