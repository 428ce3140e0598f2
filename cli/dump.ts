/** `tardigrade dump PID DIR`: checkpoint a process into an image directory. */
import { checkpoint, loadPolicy, type Policy, Process, streamImage } from "../mod.ts";
import { parseAddress, readKey } from "./migrate_args.ts";
import {
  count,
  formatBytes,
  parseMs,
  parsePid,
  parseVerb,
  printJson,
  UsageError,
  type Verb,
} from "./common.ts";
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

/** `dump PID --to ADDR:PORT`: the image goes to a receiver, which stores it. */
async function streamTo(
  verb: Verb,
  pid: number,
  to: string,
  key: unknown,
  single: boolean,
): Promise<number> {
  const r = await streamImage(pid, { ...parseAddress(to, verb), key: readKey(key, verb), single });
  console.log(
    `dumped pid ${pid} to ${to}: ${formatBytes(r.bytesSent)} sent, stored there in ` +
      `${r.remoteDir}; frozen ${r.dump.frozenMs.toFixed(1)} ms; process ended`,
  );
  return 0;
}

/** The verb. */
export const dump: Verb = {
  name: "dump",
  summary:
    "Checkpoint a process and its children into an image (they end, unless --leave-running).",
  usage: "tardigrade dump PID (DIR | --to ADDR:PORT --key FILE) [--leave-running] [--single] " +
    "[--pre-copy] [--parent PREV] [--external KEY]... [--policy FILE.ts] [--freeze-timeout MS] " +
    "[--json]",
  help: `DIR must not exist or be empty; it appears complete or not at all. The processes PID
started (its children, theirs …) are dumped with it and restored as its children.
With --to, the image streams to a receiver (tardigrade serve), which stores it; the
processes end once it holds the whole image, and run on if the sending fails.

options:
  --leave-running   let the processes run on after the dump
  --single          dump PID alone, not its children
  --pre-copy        copy private anonymous memory while the processes run (tracking writes
                    with userfaultfd), then freeze and copy again only the pages written
                    meanwhile: a much shorter freeze for large, mostly idle memory
  --parent PREV     an incremental dump: pages equal to those in the image PREV (an earlier
                    dump of the same process) are not written again but refer to PREV, which
                    must then stay, unchanged, as long as DIR is to be restored
  --external KEY    leave an open file outside the image, to be handed in at restore
                    (restore --inherit-fd fd[N]:KEY); KEY is pipe:[12345], socket:[6789],
                    a FIFO's or terminal's path (as \`tardigrade fds PID\` shows it), or fd:N
                    for fd N of PID; repeatable. KEY net leaves a container's net namespace
                    out: restore joins the one handed in (--inherit-fd fd[N]:net); KEY user
                    its user namespace, held outside the dump (--inherit-fd fd[N]:user,
                    one with the same maps). A pipe, FIFO, pseudo-terminal or connected
                    UNIX socket whose other side a process outside the dump holds (\`prog |
                    tee log\`, dumping prog) is refused unless declared so
  --policy FILE.ts  a module whose default export is a Policy (mapping/fd/beforeFreeze/
                    afterDump hooks), see examples/policies/
  --freeze-timeout MS
                    how long each thread may take to stop (default 10000): one asleep
                    where no signal reaches it (a vfork parent, uninterruptible I/O) fails
                    the dump, naming it, and the processes run on as they were
  --to ADDR:PORT    send the image to a receiver instead of writing DIR here
  --key FILE        with --to: the secret the receiver holds too
  --json            {dir, pid, processes, threads, mappings, fds, pageBytes, frozenMs, killed}
                    (and preCopy: {armFrozenMs, copiedBytes, reusedBytes} with --pre-copy,
                    incremental: {parent, reusedBytes} with --parent)

A progress bar goes to stderr when it is a terminal.`,
  async run(args) {
    const p = parseVerb(this, args, {
      "leave-running": { type: "boolean" },
      single: { type: "boolean" },
      "pre-copy": { type: "boolean" },
      parent: { type: "string" },
      external: { type: "string", multiple: true },
      policy: { type: "string" },
      "freeze-timeout": { type: "string" },
      to: { type: "string" },
      key: { type: "string" },
      json: { type: "boolean" },
    }, { min: 1, max: 2 });
    if (!p) return 0;
    const pid = parsePid(p.positionals[0], this);
    if (typeof p.values.to === "string") {
      if (p.positionals.length > 1) {
        throw new UsageError(
          "DIR and --to exclude each other: --to keeps no image here",
          this.usage,
        );
      }
      return await streamTo(this, pid, p.values.to, p.values.key, Boolean(p.values.single));
    }
    const dir = p.positionals[1];
    if (dir === undefined) throw new UsageError("missing argument DIR", this.usage);
    const policy: Policy | undefined = typeof p.values.policy === "string"
      ? await loadPolicy(p.values.policy)
      : undefined;
    const bar = new ProgressBar("dump", Deno.stderr.isTerminal() ? await estimateBytes(pid) : 0);
    const result = await checkpoint(pid, dir, {
      leaveRunning: Boolean(p.values["leave-running"]),
      single: Boolean(p.values.single),
      preCopy: Boolean(p.values["pre-copy"]),
      parent: typeof p.values.parent === "string" ? p.values.parent : undefined,
      external: p.values.external as string[] | undefined,
      policy,
      freezeTimeoutMs: parseMs(p.values["freeze-timeout"], "--freeze-timeout", this),
      onProgress: (bytes) => bar.update(bytes),
    });
    bar.update(result.pageBytes);
    bar.finish();
    if (p.values.json) {
      printJson(result);
    } else {
      console.log(
        `dumped pid ${result.pid} to ${result.dir}: ` +
          (result.processes.length > 1
            ? `${count(result.processes.length, "process", "processes")}, `
            : "") +
          `${count(result.threads, "thread")}, ` +
          `${count(result.mappings, "mapping")}, ${count(result.fds, "fd")}, ` +
          `${formatBytes(result.pageBytes)} ` +
          `of pages` +
          (result.incremental
            ? ` (${formatBytes(result.incremental.reusedBytes)} unchanged, in ` +
              `${result.incremental.parent})`
            : "") +
          `; frozen ${result.frozenMs.toFixed(1)} ms; ` +
          (result.killed ? "process ended" : "process left running"),
      );
    }
    return 0;
  },
};
