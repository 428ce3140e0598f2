/** The mappings of a process as rows: what `tardigrade maps` and the REPL's `maps()` show. */
import type { Mapping } from "../inspect/mappings.ts";
import { Process } from "../inspect/process.ts";
import { hasNoAddressSpace, NoAddressSpace } from "../inspect/procfs.ts";
import type { ProcessView } from "../inspect/view.ts";
import { hex } from "./format.ts";

/** One row of `maps --json`. */
export interface MapsRow {
  /** First address, hex. */
  start: string;
  /** Address past the end, hex. */
  end: string;
  /** Size in bytes. */
  size: number;
  /** rwxp / rwxs as /proc/PID/maps shows them. */
  perms: string;
  /** File offset, hex. */
  offset: string;
  /** Device as major:minor. */
  device: string;
  /** Inode of the mapped file (0 for anonymous memory). */
  inode: number;
  /** heap, stack, anonymous, file … */
  kind: string;
  /** The mapped path or [name], null for anonymous memory. */
  path: string | null;
  /**
   * Bytes of pages present in RAM or swapped (what a dump would copy at most); of a process in
   * an image, the bytes of pages it holds.
   */
  residentBytes: number;
}

/** Sums the present or swapped bytes of each mapping from one page scan. */
async function residentBytes(proc: ProcessView, maps: Mapping[]): Promise<number[]> {
  const out = maps.map(() => 0);
  let i = 0;
  for await (const r of proc.pages()) {
    if (!r.present && !r.swapped) continue;
    while (i < maps.length && maps[i].end <= r.start) i++;
    // A region may span neighbouring mappings: split it at their bounds.
    for (let j = i; j < maps.length && maps[j].start < r.end; j++) {
      const lo = r.start > maps[j].start ? r.start : maps[j].start;
      const hi = r.end < maps[j].end ? r.end : maps[j].end;
      if (hi > lo) out[j] += Number(hi - lo);
    }
  }
  return out;
}

/**
 * The mappings of process `pid` (or of a process of an image, `ImageProcess`) as `maps --json`
 * shows them.
 */
export async function mapsRows(pid: number | ProcessView): Promise<MapsRow[]> {
  const proc = typeof pid === "number" ? await Process.open(pid) : pid;
  // A listing of nothing would read as a process with no memory: say what it is instead.
  if (proc instanceof Process && hasNoAddressSpace(proc.pid)) {
    throw new NoAddressSpace(proc.pid, "mappings");
  }
  const list: Mapping[] = [];
  for await (const m of proc.mappings()) list.push(m);
  const resident = await residentBytes(proc, list);
  return list.map((m, i) => ({
    start: hex(m.start),
    end: hex(m.end),
    size: m.size,
    perms: m.perms,
    offset: hex(m.offset),
    device: m.device,
    inode: Number(m.inode),
    kind: m.kind,
    path: m.path,
    residentBytes: resident[i],
  }));
}
