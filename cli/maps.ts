/** `tardigrade maps PID`: the memory mappings of a process, with resident bytes. */
import { mapsRows } from "../mod.ts";
import { count, formatBytes, parsePid, parseVerb, printJson, table, type Verb } from "./common.ts";

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
