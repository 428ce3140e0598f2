/**
 * What a program told the kernel about its mappings with madvise() and mlock(), which a restore
 * must tell it again: /proc/PID/smaps shows it per mapping on its `VmFlags:` line.
 *
 * Kept: `dc` MADV_DONTFORK (not inherited by a fork: RDMA buffers), `wf` MADV_WIPEONFORK (zeroed
 * in a child: a random generator's state, so a forked child cannot repeat its parent's numbers),
 * `dd` MADV_DONTDUMP (left out of core dumps: secrets), `hg`/`nh` MADV_HUGEPAGE/NOHUGEPAGE,
 * `mg` MADV_MERGEABLE (KSM), `lo` mlock() and `lf` mlock(MLOCK_ONFAULT) (kept in memory: key
 * material). Locks are applied last, once the pages are in.
 */
import { MADV, MLOCK } from "../../ffi/mod.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { MappingEntry } from "../image/schema.ts";

/** VmFlags name → the madvise() advice that sets it. */
const ADVICE: Record<string, number> = {
  dc: MADV.DONTFORK,
  mg: MADV.MERGEABLE,
  hg: MADV.HUGEPAGE,
  nh: MADV.NOHUGEPAGE,
  dd: MADV.DONTDUMP,
  wf: MADV.WIPEONFORK,
};
const LOCKS = ["lo", "lf"];

/** The kept VmFlags of every mapping of `pid`, by start address (empty where smaps is not readable). */
export function vmaAdvice(pid: number): Map<bigint, string[]> {
  const out = new Map<bigint, string[]>();
  let text = "";
  try {
    text = Deno.readTextFileSync(`/proc/${pid}/smaps`);
  } catch {
    return out;
  }
  let start: bigint | undefined;
  for (const line of text.split("\n")) {
    const range = line.match(/^([0-9a-f]+)-[0-9a-f]+ /);
    if (range) {
      start = BigInt(`0x${range[1]}`);
    } else if (start !== undefined && line.startsWith("VmFlags:")) {
      const kept = line.slice(8).trim().split(/\s+/).filter((f) =>
        f in ADVICE || LOCKS.includes(f)
      );
      if (kept.length) out.set(start, kept);
    }
  }
  return out;
}

/** Gives the restored mappings their advice again; locks last, once their pages are in. */
export function restoreVmaAdvice(inj: Injector, mappings: MappingEntry[]): void {
  for (const m of mappings) {
    for (const flag of m.advice ?? []) {
      if (flag in ADVICE) inj.call("madvise", m.start, m.end - m.start, ADVICE[flag]);
    }
  }
  for (const m of mappings) {
    const advice = m.advice ?? [];
    if (advice.includes("lf")) inj.call("mlock2", m.start, m.end - m.start, MLOCK.ONFAULT);
    else if (advice.includes("lo")) inj.call("mlock2", m.start, m.end - m.start, 0);
  }
}
