/** `tardigrade migrate PID --to ADDR:PORT`: move a process to a `tardigrade serve`. */
import { formatBytes, parsePid, parseVerb, printJson, type Verb } from "./common.ts";
import { parseAddress, readKey } from "./migrate_args.ts";
import { loadPolicy, migrate as migrateProcess } from "../mod.ts";

/** The verb. */
export const migrate: Verb = {
  name: "migrate",
  summary: "Move a process (and its children) to a receiver while it runs, frozen only briefly.",
  usage:
    "tardigrade migrate PID --to ADDR:PORT --key FILE [--lazy | --post-copy] [--no-warm-up] [--single] [--policy FILE.ts] [--json]",
  help: `Streams the process's memory to the receiver (tardigrade serve) while it runs,
tracking what it writes meanwhile, then freezes it for the rest and the receiver restores
it; the process here ends only once the receiver says it runs. If anything fails before,
it runs on here untouched. On one machine (the tests) the receiver needs its pids: the
process ends here once the receiver holds the whole image, and is restored here again if
the receiver's restore fails. TCP connections move with it only if the address moves too
(the receiver must own the local addresses; peers see a delay, not a reset).

options:
  --to ADDR:PORT   the receiver
  --key FILE       the secret the receiver holds too
  --lazy           the receiver restores lazily (the process runs before its memory is in)
  --post-copy      shorter freeze: the pages written in the last round are sent after the
                   process runs on the receiver (lazily). Until they are all in, it needs both
                   machines: if the stream breaks then, the receiver kills it (with a message)
                   and the image is kept here; the original cannot resume (see README)
  --no-warm-up     no rehearsal: each side runs the code of the freeze and the restore for
                   the first time during the freeze (slower; to measure what the rehearsal on
                   a throwaway process saves)
  --single         PID alone, not its children
  --policy FILE.ts a module whose default export is a Policy (as for dump), e.g. an fd answer
                   "skip" for a descriptor inherited by accident
  --json           {pid, remoteDir, sameMachine, bytesSent, postCopyBytes?, dump: {...}}`,
  async run(args) {
    const p = parseVerb(this, args, {
      to: { type: "string" },
      key: { type: "string" },
      lazy: { type: "boolean" },
      "post-copy": { type: "boolean" },
      "no-warm-up": { type: "boolean" },
      single: { type: "boolean" },
      policy: { type: "string" },
      json: { type: "boolean" },
    }, { min: 1, max: 1 });
    if (!p) return 0;
    const pid = parsePid(p.positionals[0], this);
    const key = readKey(p.values.key, this);
    const to = parseAddress(String(p.values.to ?? ""), this);
    const r = await migrateProcess(pid, {
      ...to,
      key,
      lazy: Boolean(p.values.lazy),
      postCopy: Boolean(p.values["post-copy"]),
      warmUp: !p.values["no-warm-up"],
      single: Boolean(p.values.single),
      policy: typeof p.values.policy === "string" ? await loadPolicy(p.values.policy) : undefined,
    });
    if (p.values.json) printJson(r);
    else {
      console.log(
        `migrated pid ${pid} to ${to.hostname}:${to.port}: running there as pid ${r.pid}; ` +
          `${formatBytes(r.bytesSent)} sent` +
          (r.postCopyBytes !== undefined
            ? ` (${formatBytes(r.postCopyBytes)} held back at the freeze)`
            : "") +
          `, frozen ${r.dump.frozenMs.toFixed(1)} ms here`,
      );
    }
    return 0;
  },
};
