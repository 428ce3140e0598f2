/** `tardigrade maps TARGET`: the mappings of a process, live or in an image, with resident bytes. */
import { mapsRows, openTarget } from "../mod.ts";
import {
  count,
  formatBytes,
  parseTarget,
  parseVerb,
  printJson,
  table,
  type Verb,
} from "./common.ts";

/** The verb. */
export const maps: Verb = {
  name: "maps",
  summary: "Show the memory mappings of a process, with their sizes and resident bytes.",
  usage: "tardigrade maps TARGET [--pid PID] [--json]",
  help: `TARGET is a pid, or an image directory (its root process, or the one --pid names).

options:
  --pid PID  of an image, the process PID
  --json     one object per mapping: {start, end (hex strings), size, perms, offset (hex),
             device, inode, kind, path, residentBytes}; of an image, residentBytes
             counts the bytes of the pages it holds, device and inode are 00:00 and 0 for
             what is not a file`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" }, pid: { type: "string" } }, {
      min: 1,
      max: 1,
    });
    if (!p) return 0;
    const { target, pid } = parseTarget(p.positionals[0], this, p.values.pid as string | undefined);
    using opened = await openTarget(target, { pid });
    const rows = await mapsRows(opened.processes[0]);
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
