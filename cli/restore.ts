/** `tardigrade restore DIR`: bring a checkpointed process back. */
import { restore as sdkRestore } from "../mod.ts";
import { parseVerb, printJson, type Verb } from "./common.ts";
import { ProgressBar } from "./progress.ts";

/** The verb. */
export const restore: Verb = {
  name: "restore",
  summary: "Restore a process from an image directory; prints its pid and returns.",
  usage: "tardigrade restore DIR [--pidfile FILE] [--json]",
  help: `The process gets its dumped pid back and runs detached from this tool. Things that
could not be restored exactly are printed as warnings on stderr.

options:
  --pidfile FILE  also write the pid (and a newline) to FILE
  --json          {pid, threads, pageBytes, warnings[]}

A progress bar goes to stderr when it is a terminal.`,
  async run(args) {
    const p = parseVerb(this, args, {
      pidfile: { type: "string" },
      json: { type: "boolean" },
    }, { min: 1, max: 1 });
    if (!p) return 0;
    let bar: ProgressBar | undefined;
    const result = await sdkRestore(p.positionals[0], {
      onProgress: (bytes, total) => {
        bar ??= new ProgressBar("restore", total);
        bar.update(bytes);
      },
    });
    bar?.finish();
    if (typeof p.values.pidfile === "string") {
      await Deno.writeTextFile(p.values.pidfile, `${result.pid}\n`);
    }
    if (p.values.json) {
      const { pid, threads, pageBytes, warnings } = result;
      printJson({ pid, threads, pageBytes, warnings });
    } else {
      for (const w of result.warnings) console.error(`tardigrade: warning: ${w}`);
      console.log(result.pid);
    }
    return 0;
  },
};
