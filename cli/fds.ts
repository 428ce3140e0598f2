/** `tardigrade fds TARGET`: the open descriptors of a process (live or in an image). */
import { fdsRows, openTarget } from "../mod.ts";
import { parseTarget, parseVerb, printJson, table, type Verb } from "./common.ts";

/** The verb. */
export const fds: Verb = {
  name: "fds",
  summary: "Show the open file descriptors of a process and what each one is.",
  usage: "tardigrade fds TARGET [--pid PID] [--json]",
  help: `TARGET is a pid, or an image directory (its root process, or the one --pid names).

options:
  --pid PID  of an image, the process PID
  --json     one object per descriptor: {fd, kind, target, flags (octal string), position,
             closeOnExec, fileId}`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" }, pid: { type: "string" } }, {
      min: 1,
      max: 1,
    });
    if (!p) return 0;
    const { target, pid } = parseTarget(p.positionals[0], this, p.values.pid as string | undefined);
    using opened = await openTarget(target, { pid });
    const rows = await fdsRows(opened.processes[0]);
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
