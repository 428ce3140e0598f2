/**
 * The helpers a REPL session starts with. Listings resolve to arrays of plain rows, which the
 * REPL shows as tables; everything else is the SDK's own objects.
 */
import * as sdk from "../mod.ts";
import {
  checkpoint,
  type CheckpointResult,
  type FdsRow,
  fdsRows,
  type ImageSummary,
  inspectImage,
  type MapsRow,
  mapsRows,
  openTarget,
  type Policy,
  Process,
  type PsRow,
  psRows,
  restore as sdkRestore,
} from "../mod.ts";

/** One line of `help()`: a helper's call form and what it does. */
export const HELP: [string, string][] = [
  ["ps()", "every process: pid, ppid, uid, state, threads, rssBytes, comm, cmdline"],
  ["proc(pid)", "a Process object: await p.comm(), p.cmdline(), p.stat(), p.read(addr, n) …"],
  ["maps(pid | dir)", "the mappings of a process or of an image's root, with resident bytes"],
  ["fds(pid | dir)", "the open descriptors of a process or of an image's root"],
  ["dump(pid, dir, policy?, opts?)", "checkpoint pid into dir (ends it unless {leaveRunning})"],
  ["restore(dir, opts?)", "restore the process in dir ({pidNamespace} for a copy); {pid, …}"],
  ["clone(pid)", "a copy of a running process beside it, in its own pid namespace"],
  ["inspect(dir)", "what an image holds: threads, mappings, fds, totals"],
  ["help()", "this list"],
  ["sdk.*", "the whole SDK (also by name: Process, checkpoint, ImageReader, loadPolicy …)"],
];

/** Prints the helpers with one line each. */
export function help(): void {
  const w = Math.max(...HELP.map(([f]) => f.length));
  console.log(HELP.map(([f, d]) => `${f.padEnd(w)}  ${d}`).join("\n"));
  console.log(
    '\nA policy inline:  const p = { mapping: (m) => m.size > 64 << 20 ? "skip" : "dump" }' +
      '\n                  await dump(1234, "/tmp/img", p)',
  );
}

/** The helpers, by name. */
export const helpers = {
  /** Every process of the machine. */
  ps: (): Promise<PsRow[]> => psRows(),
  /** Opens a process. */
  proc: (pid: number): Promise<Process> => Process.open(pid),
  /** The mappings of a process, or of the root process of an image. */
  maps: async (target: number | string): Promise<MapsRow[]> => {
    using opened = await openTarget(target);
    return await mapsRows(opened.processes[0]);
  },
  /** The descriptors of a process, or of the root process of an image. */
  fds: async (target: number | string): Promise<FdsRow[]> => {
    using opened = await openTarget(target);
    return await fdsRows(opened.processes[0]);
  },
  /** Checkpoints `pid` into `dir`, with an optional policy. */
  dump: (
    pid: number,
    dir: string,
    policy?: Policy,
    opts: { leaveRunning?: boolean } = {},
  ): Promise<CheckpointResult> => checkpoint(pid, dir, { policy, ...opts }),
  /** Restores the process of an image. */
  restore: (dir: string, opts: sdk.RestoreOptions = {}): Promise<sdk.RestoreResult> =>
    sdkRestore(dir, opts),
  /** Dumps `pid` leaving it running and restores a copy of it in a new pid namespace. */
  clone: async (pid: number): Promise<sdk.RestoreResult> => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-clone-" });
    try {
      await checkpoint(pid, `${base}/image`, { leaveRunning: true });
      return await sdkRestore(`${base}/image`, { pidNamespace: true });
    } finally {
      await Deno.remove(base, { recursive: true });
    }
  },
  /** Summarizes an image. */
  inspect: (dir: string): Promise<ImageSummary> => inspectImage(dir),
  help,
};

/** The names a session starts with: the SDK's exports, `sdk`, and the helpers. */
export function initialScope(): Record<string, unknown> {
  return { ...sdk, sdk, ...helpers };
}

/**
 * What the helpers resolve to, so that `(await proc(1)).` completes with the members of a
 * Process without running anything.
 */
export const RESULT_SHAPES: Map<unknown, object> = new Map<unknown, object>([
  [helpers.proc, Process.prototype],
  [Process.open, Process.prototype],
  [helpers.ps, Array.prototype],
  [helpers.maps, Array.prototype],
  [helpers.fds, Array.prototype],
  [psRows, Array.prototype],
  [mapsRows, Array.prototype],
  [fdsRows, Array.prototype],
]);
