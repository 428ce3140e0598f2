/** `tardigrade maps PID`: the memory mappings of a process, with resident bytes. */
import { type Mapping, Process } from "../mod.ts";
import {
  count,
  formatBytes,
  hex,
  parsePid,
  parseVerb,
  printJson,
  table,
  type Verb,
} from "./common.ts";

/** One row of `maps --json`. */
export interface MapsRow {
  start: string;
  end: string;
  size: number;
  perms: string;
  offset: string;
  device: string;
  inode: number;
  kind: string;
  path: string | null;
  /** Bytes of pages present in RAM or swapped (what a dump would copy at most). */
  residentBytes: number;
}

/** Sums the present or swapped bytes of each mapping from one page scan. */
async function residentBytes(proc: Process, maps: Mapping[]): Promise<number[]> {
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

/** The mappings of process `pid` as `maps --json` shows them. */
export async function mapsRows(pid: number): Promise<MapsRow[]> {
  const proc = await Process.open(pid);
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

/** The verb. */
export const maps: Verb = {
  name: "maps",
  summary: "Show the memory mappings of a process, with their sizes and resident bytes.",
  usage: "tardigrade maps PID [--json]",
  help: `options:
  --json   one object per mapping: {start, end (hex strings), size, perms, offset (hex),
           device, inode, kind, path, residentBytes}`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 1, max: 1 });
    if (!p) return 0;
    const rows = await mapsRows(parsePid(p.positionals[0], this));
    if (p.values.json) {
      printJson(rows);
      return 0;
    }
    console.log(table(
      [
        { header: "START" },
        { header: "END" },
        { header: "PERMS" },
        { header: "SIZE", right: true },
        { header: "RESIDENT", right: true },
        { header: "KIND" },
        { header: "PATH" },
      ],
      rows.map((r) => [
        r.start,
        r.end,
        r.perms,
        formatBytes(r.size),
        formatBytes(r.residentBytes),
        r.kind,
        r.path ?? "",
      ]),
    ));
    const total = rows.reduce((a, r) => a + r.size, 0);
    const res = rows.reduce((a, r) => a + r.residentBytes, 0);
    console.log(
      `${count(rows.length, "mapping")}, ${formatBytes(total)} mapped, ` +
        `${formatBytes(res)} resident`,
    );
    return 0;
  },
};
