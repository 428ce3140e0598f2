/** Resource limits, as the process itself sees them. */
import { Errno, errnoName, errnoText, RLIMIT, SYS } from "../../ffi/mod.ts";
import type { RlimitEntry } from "../image/schema.ts";
import { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** RLIMIT_CPU .. RLIMIT_RTTIME. */
export const RESOURCES: number[] = Object.values(RLIMIT);

/**
 * Every limit, from /proc/PID/limits (the exact values, "unlimited" for RLIM_INFINITY): no
 * syscall in the process, and no CAP_SYS_RESOURCE as prlimit of another uid would need.
 */
export async function dumpRlimits(proc: Process): Promise<RlimitEntry[]> {
  const limits = await proc.rlimits();
  return (Object.keys(RLIMIT) as (keyof typeof RLIMIT)[]).map((name) => ({
    resource: RLIMIT[name],
    soft: limits[name].soft,
    hard: limits[name].hard,
  }));
}

/**
 * Sets the limits where this machine allows; returns a warning for each it refused (no process
 * may raise a hard limit here: root lacks CAP_SYS_RESOURCE).
 */
export async function restoreRlimits(inj: Injector, list: RlimitEntry[]): Promise<string[]> {
  const warnings: string[] = [];
  // Only those that differ from what the new process (a fork of the stub) has already.
  const now = new Map(
    (await dumpRlimits(await Process.open(inj.pid))).map((r) => [r.resource, r]),
  );
  for (const r of list) {
    const have = now.get(r.resource);
    if (have?.soft === r.soft && have.hard === r.hard) continue;
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
