/** `tardigrade ps`: the processes of this machine. */
import { psRows } from "../mod.ts";
import { formatBytes, parseVerb, printJson, table, type Verb } from "./common.ts";

/** The verb. */
export const ps: Verb = {
  name: "ps",
  summary:
    "List processes: pid, parent, uid, state, threads, resident memory, namespaces, command.",
  usage: "tardigrade ps [--json]",
  help: `options:
  --json   one object per process: {pid, ppid, uid, state, threads, rssBytes, comm, cmdline[],
           namespaces[] (kinds it lives in apart from tardigrade), cgroups[{hierarchy, path}]}
NS lists the kinds of namespace a process lives in apart from tardigrade (a container's).`,
  async run(args) {
    const p = parseVerb(this, args, { json: { type: "boolean" } }, { min: 0, max: 0 });
    if (!p) return 0;
    const rows = await psRows();
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
