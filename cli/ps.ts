/** `tardigrade ps`: the processes of this machine. */
import { NoSuchProcess, processes } from "../mod.ts";
import { formatBytes, parseVerb, printJson, table, type Verb } from "./common.ts";

const PAGE = 4096;

/** One row of `ps --json`. */
export interface PsRow {
  pid: number;
  ppid: number;
  uid: number;
  state: string;
  threads: number;
  rssBytes: number;
  comm: string;
  cmdline: string[];
}

/** Lists every process with the fields `ps` shows (kernel threads included). */
export async function psRows(): Promise<PsRow[]> {
  const rows: PsRow[] = [];
  for await (const p of processes()) {
    try {
      const [s, uids, cmdline] = await Promise.all([p.stat(), p.uids(), p.cmdline()]);
      rows.push({
        pid: p.pid,
        ppid: s.ppid,
        uid: uids.real,
        state: s.state,
        threads: s.numThreads,
        rssBytes: Number(s.rss) * PAGE,
        comm: s.comm,
        cmdline,
      });
    } catch (err) {
      if (!(err instanceof NoSuchProcess)) throw err; // exited while we looked
    }
  }
  return rows;
}

/** The verb. */
export const ps: Verb = {
  name: "ps",
  summary: "List processes: pid, parent, uid, state, threads, resident memory, command.",
  usage: "tardigrade ps [--json]",
  help: `options:
  --json   one object per process: {pid, ppid, uid, state, threads, rssBytes, comm, cmdline[]}`,
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
        { header: "COMMAND" },
      ],
      rows.map((r) => [
        String(r.pid),
        String(r.ppid),
        String(r.uid),
        r.state,
        String(r.threads),
        formatBytes(r.rssBytes),
        r.cmdline.length ? r.cmdline.join(" ") : `[${r.comm}]`,
      ]),
    ));
    return 0;
  },
};
