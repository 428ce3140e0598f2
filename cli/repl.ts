/** `tardigrade repl`: the interactive TypeScript shell of repl/. */
import { parseVerb, type Verb } from "./common.ts";

/** The verb. */
export const repl: Verb = {
  name: "repl",
  summary: "Start an interactive TypeScript shell with the SDK and helpers in scope.",
  usage: "tardigrade repl",
  help: `Helpers: ps(), proc(pid), maps(pid), fds(pid), dump(pid, dir, policy?, {leaveRunning}?),
restore(dir), clone(pid) (a copy beside it, in its own pid namespace), inspect(dir), help(); the
SDK as sdk.* and as named exports. Dot-commands: .help, .ps, .maps PID, .fds PID, .inspect DIR,
.stack (the whole last error). On a terminal: Tab lists the members of the object before the
dot; history in ~/.tardigrade_history, Ctrl-R searches it; Ctrl-C clears the line or interrupts
the input being evaluated (a dump's frozen process is released, the dump fails).`,
  async run(args) {
    const p = parseVerb(this, args, {}, { min: 0, max: 0 });
    if (!p) return 0;
    const { startRepl } = await import("../repl/server.ts");
    return await startRepl();
  },
};
