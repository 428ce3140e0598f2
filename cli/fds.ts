/** `tardigrade fds PID`: the open descriptors of a process. */
import { fdsRows } from "../mod.ts";
import { parsePid, parseVerb, printJson, table, type Verb } from "./common.ts";

/** The verb. */
export const fds: Verb = {
  name: "fds",
  summary: "Show the open file descriptors of a process and what each one is.",
  usage: "tardigrade fds PID [--json]",
  help: `options:
  --json   one object per descriptor: {fd, kind, target, flags (octal string), position,
           closeOnExec, fileId}`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 1, max: 1 });
    if (!p) return 0;
    const rows = await fdsRows(parsePid(p.positionals[0], this));
    if (p.values.json) {
      printJson(rows);
      return 0;
    }
    console.log(table(
      [
        { header: "FD", right: true },
        { header: "KIND" },
        { header: "FLAGS" },
        { header: "POS", right: true },
        { header: "CLOEXEC" },
        { header: "FILE", right: true },
        { header: "TARGET" },
      ],
      rows.map((r) => [
        String(r.fd),
        r.kind,
        r.flags,
        String(r.position),
        r.closeOnExec ? "yes" : "no",
        String(r.fileId),
        r.target,
      ]),
    ));
    return 0;
  },
};
