/** `tardigrade dump PID DIR`: checkpoint a process into an image directory. */
import { checkpoint, loadPolicy, type Policy, Process } from "../mod.ts";
import { count, formatBytes, parsePid, parseVerb, printJson, type Verb } from "./common.ts";
import { ProgressBar } from "./progress.ts";

/** Bytes a dump will copy at most: private pages present or swapped (for the progress bar). */
async function estimateBytes(pid: number): Promise<number> {
  let total = 0;
  try {
    const proc = await Process.open(pid);
    for await (const r of proc.pages()) {
      if ((r.present || r.swapped) && !r.file) total += Number(r.end - r.start);
    }
  } catch { /* only an estimate; checkpoint reports the real error */ }
  return total;
}

/** The verb. */
export const dump: Verb = {
  name: "dump",
  summary: "Checkpoint a process into an image directory (it ends, unless --leave-running).",
  usage: "tardigrade dump PID DIR [--leave-running] [--policy FILE.ts] [--json]",
  help: `DIR must not exist or be empty; it appears complete or not at all.

options:
  --leave-running   let the process run on after the dump
  --policy FILE.ts  a module whose default export is a Policy (mapping/fd/beforeFreeze/
                    afterDump hooks), see examples/policies/
  --json            {dir, pid, threads, mappings, fds, pageBytes, frozenMs, killed}

A progress bar goes to stderr when it is a terminal.`,
  async run(args) {
    const p = parseVerb(this, args, {
      "leave-running": { type: "boolean" },
      policy: { type: "string" },
      json: { type: "boolean" },
    }, { min: 2, max: 2 });
    if (!p) return 0;
    const pid = parsePid(p.positionals[0], this);
    const dir = p.positionals[1];
    const policy: Policy | undefined = typeof p.values.policy === "string"
      ? await loadPolicy(p.values.policy)
      : undefined;
    const bar = new ProgressBar("dump", Deno.stderr.isTerminal() ? await estimateBytes(pid) : 0);
    const result = await checkpoint(pid, {
      dir,
      leaveRunning: Boolean(p.values["leave-running"]),
      policy,
      onProgress: (bytes) => bar.update(bytes),
    });
    bar.update(result.pageBytes);
    bar.finish();
    if (p.values.json) {
      printJson(result);
    } else {
      console.log(
        `dumped pid ${result.pid} to ${result.dir}: ${count(result.threads, "thread")}, ` +
          `${count(result.mappings, "mapping")}, ${count(result.fds, "fd")}, ` +
          `${formatBytes(result.pageBytes)} ` +
          `of pages; frozen ${result.frozenMs.toFixed(1)} ms; ` +
          (result.killed ? "process ended" : "process left running"),
      );
    }
    return 0;
  },
};
