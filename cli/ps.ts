/** `tardigrade ps [DIR]`: the processes of this machine, or of an image. */
import { ProcessImage, psRows } from "../mod.ts";
import { formatBytes, parseVerb, printJson, table, type Verb } from "./common.ts";

/** The verb. */
export const ps: Verb = {
  name: "ps",
  summary:
    "List processes: pid, parent, uid, state, threads, resident memory, namespaces, command.",
  usage: "tardigrade ps [DIR] [--json]",
  help: `DIR: the processes of that image instead (its tree, parents first; state T for a process
stopped by job control, - otherwise: an image does not record it; RSS the bytes of its pages).
NS lists the kinds of namespace a process lives in apart from tardigrade (a container's).

options:
  --json   one object per process: {pid, ppid, uid, state, threads, rssBytes, comm, cmdline[],
           namespaces[] (kinds it lives in apart from tardigrade), cgroups[{hierarchy, path}]}`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 0, max: 1 });
    if (!p) return 0;
    const dir = p.positionals[0];
    using image = dir === undefined ? undefined : await ProcessImage.open(dir);
    const rows = await psRows(image);
    if (p.values.json) {
      printJson(rows);
      return 0;
    }
    console.log(table(
      [
        { header: "PID", right: true },
        { header: "PPID", right: true },
        { header: "UID", right: true },
        { header: "S" },
        { header: "THR", right: true },
        { header: "RSS", right: true },
        { header: "NS" },
        { header: "COMMAND" },
      ],
      rows.map((r) => [
        String(r.pid),
        String(r.ppid),
        String(r.uid),
        r.state,
        String(r.threads),
        formatBytes(r.rssBytes),
        r.namespaces.join(",") || "-",
        r.cmdline.length ? r.cmdline.join(" ") : `[${r.comm}]`,
      ]),
    ));
    return 0;
  },
};
