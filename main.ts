/**
 * The `tardigrade` command: inspect, checkpoint and restore live processes.
 * Install with `deno install -g -A -n tardigrade main.ts`; `tardigrade --help` lists the verbs.
 * @module
 */
import { parseArgs } from "node:util";
import { check } from "./cli/check.ts";
import { errorLine, EXIT, UsageError, type Verb } from "./cli/common.ts";
import { diff } from "./cli/diff.ts";
import { dump } from "./cli/dump.ts";
import { fds } from "./cli/fds.ts";
import { inspect } from "./cli/inspect.ts";
import { maps } from "./cli/maps.ts";
import { ps } from "./cli/ps.ts";
import { repl } from "./cli/repl.ts";
import { restore } from "./cli/restore.ts";
import { unlock } from "./cli/unlock.ts";
import { serve } from "./cli/serve.ts";
import { migrate } from "./cli/migrate.ts";
import { search } from "./cli/search.ts";
import { TOOL_VERSION } from "./mod.ts";

const VERBS: Verb[] = [
  ps,
  maps,
  fds,
  search,
  check,
  dump,
  restore,
  unlock,
  migrate,
  serve,
  inspect,
  diff,
  repl,
];
const USAGE = "tardigrade [--help] [--version] VERB [ARGS] (tardigrade VERB --help)";

function toolHelp(): string {
  const width = Math.max(...VERBS.map((v) => v.name.length));
  return `usage: ${USAGE}

Checkpoint, inspect and restore live Linux processes.

verbs:
${VERBS.map((v) => `  ${v.name.padEnd(width)}  ${v.summary}`).join("\n")}

options (every verb): --help, --verbose (also: stack traces on errors); --json where there is
output (bigints as "0x..." strings). Exit codes: 0 ok, 1 failure, 2 usage error.`;
}

/** Runs the tool with `args`; resolves to the exit code. */
export async function main(args: string[]): Promise<number> {
  const verbose = args.includes("--verbose") || args.includes("-v");
  try {
    const i = args.findIndex((a) => !a.startsWith("-"));
    const globals = i < 0 ? args : args.slice(0, i);
    const { values } = parseArgs({
      args: globals,
      options: {
        help: { type: "boolean", short: "h" },
        version: { type: "boolean" },
        verbose: { type: "boolean", short: "v" },
      },
      strict: true,
    });
    if (values.version) {
      console.log(`tardigrade ${TOOL_VERSION}`);
      return EXIT.OK;
    }
    if (i < 0) {
      if (values.help) {
        console.log(toolHelp());
        return EXIT.OK;
      }
      throw new UsageError("no verb given", USAGE);
    }
    const verb = VERBS.find((v) => v.name === args[i]);
    if (!verb) throw new UsageError(`unknown verb '${args[i]}'`, USAGE);
    if (values.help) return await verb.run(["--help"]);
    return await verb.run(args.slice(i + 1));
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(errorLine(err));
      console.error(`usage: ${err.usage}`);
      return EXIT.USAGE;
    }
    if (err instanceof TypeError && /^Unknown option|^Option/.test(err.message)) {
      console.error(errorLine(err.message[0].toLowerCase() + err.message.slice(1)));
      console.error(`usage: ${USAGE}`);
      return EXIT.USAGE;
    }
    console.error(errorLine(err));
    if (verbose && err instanceof Error && err.stack) console.error(err.stack);
    return EXIT.FAILURE;
  }
}

if (import.meta.main) Deno.exit(await main(Deno.args));
