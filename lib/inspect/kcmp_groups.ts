/**
 * Which processes share one kernel object of a kind kcmp compares (a descriptor table, an fs
 * context …), in O(N log N) kcmp calls instead of one per pair: one representative per object is
 * kept sorted by kcmp's order, and each process is placed among them by binary search.
 */
import { kcmp } from "../../ffi/mod.ts";
import { Unsupported } from "../errors.ts";

/**
 * For each of `pids`, the index of the object of kcmp `type` it has, numbered by first appearance
 * (0 for the first pid's): two pids share the object exactly when their numbers are equal.
 */
export function kcmpGroups(pids: readonly number[], type: number): number[] {
  const reps: { pid: number; group: number }[] = []; // sorted by kcmp's order
  let groups = 0;
  return pids.map((pid) => {
    let lo = 0, hi = reps.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      const order = kcmp(pid, reps[mid].pid, type);
      if (order === 0) return reps[mid].group;
      if (order === 1) hi = mid;
      else if (order === 2) lo = mid + 1;
      else throw new Unsupported(`kcmp cannot order processes ${pid} and ${reps[mid].pid}`);
    }
    reps.splice(lo, 0, { pid, group: groups });
    return groups++;
  });
}
