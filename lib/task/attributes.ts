/**
 * Process attributes: the personality, the parent-death signal, the dumpable flag, transparent
 * huge pages disabled, child subreaper, membarrier registrations (personality(2), prctl(2) and
 * membarrier(2), asked in the target) and the OOM score adjustment (/proc/PID/oom_score_adj).
 * The restore sets each where nothing later undoes it: THP before the memory is made, most before
 * the threads are made, the parent-death signal and the dumpable flag after the credentials
 * (a change of uid clears the one and resets the other).
 */
import {
  close,
  Errno,
  errnoText,
  MEMBARRIER_CMD,
  O,
  open,
  PR,
  SyscallError,
  writeAll,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The attributes of a process. */
export type Attributes = Pick<
  ProcessEntry,
  | "personality"
  | "pdeathsig"
  | "oomScoreAdj"
  | "thpDisable"
  | "childSubreaper"
  | "membarrier"
  | "dumpable"
>;

/** PR_SET_DUMPABLE takes these only; 2 (suid_dumpable) comes from a change of credentials. */
const SETTABLE_DUMPABLE = [0, 1];

/**
 * Reads them: the OOM score adjustment from /proc, the rest asked in the target (queued: one run
 * in a restored process).
 */
export async function dumpAttributes(proc: Process, inj: Injector): Promise<Attributes> {
  inj.queue("prctl", [PR.GET_PDEATHSIG, inj.scratch()]);
  inj.queue("prctl", [PR.GET_CHILD_SUBREAPER, inj.scratch() + 8n]);
  // Before Linux 6.3 the kernel cannot tell: absent then (not restored, not compared).
  let membarrier = -1n;
  inj.queue("membarrier", [MEMBARRIER_CMD.GET_REGISTRATIONS, 0, 0], (r) => (membarrier = r));
  const thpDisable = inj.queueCall("prctl", [PR.GET_THP_DISABLE, 0, 0, 0, 0]);
  const dumpable = inj.queueCall("prctl", [PR.GET_DUMPABLE, 0, 0, 0, 0]);
  inj.flush();
  const ints = new DataView(inj.get(0, 12).slice().buffer);
  return {
    personality: await proc.personality(),
    pdeathsig: ints.getInt32(0, true),
    oomScoreAdj: Number(Deno.readTextFileSync(`/proc/${proc.pid}/oom_score_adj`).trim()),
    thpDisable: Number(thpDisable()),
    childSubreaper: ints.getInt32(8, true) !== 0,
    ...(membarrier >= 0n ? { membarrier: Number(membarrier) } : {}),
    dumpable: Number(dumpable()),
  };
}

/**
 * Before the memory is made: THP disabled (a flag of the address space that decides how the pages
 * written next are backed).
 */
export function restoreThpDisable(inj: Injector, a: Attributes): void {
  // PR_GET_THP_DISABLE answers 1 with the flags PR_SET_THP_DISABLE was given.
  if (a.thpDisable) inj.call("prctl", PR.SET_THP_DISABLE, 1, a.thpDisable & ~1, 0, 0);
}

/**
 * Before the threads are made (the personality is per thread, and they inherit it): the
 * personality, child subreaper, membarrier registrations and the OOM score adjustment. Queued:
 * made with what follows.
 */
export function restoreAttributes(inj: Injector, a: Attributes): void {
  inj.queue("personality", [a.personality]);
  if (a.childSubreaper) inj.queue("prctl", [PR.SET_CHILD_SUBREAPER, 1, 0, 0, 0]);
  // Each registration bit is the command that registers it.
  for (let bit = 1; bit <= (a.membarrier ?? 0); bit <<= 1) {
    if (a.membarrier! & bit) inj.queue("membarrier", [bit, 0, 0]);
  }
  if (a.oomScoreAdj !== undefined) restoreOomScoreAdj(inj.pid, a.oomScoreAdj);
}

/**
 * Writes /proc/PID/oom_score_adj (from the tool: the file is the process's, any writer with the
 * right may set it). Going below the lowest value a process inherited needs CAP_SYS_RESOURCE.
 */
function restoreOomScoreAdj(pid: number, value: number): void {
  const path = `/proc/${pid}/oom_score_adj`;
  if (Number(Deno.readTextFileSync(path).trim()) === value) return;
  let fd = -1;
  try {
    fd = open(path, O.WRONLY);
    writeAll(fd, new TextEncoder().encode(String(value)));
  } catch (err) {
    if (!(err instanceof SyscallError)) throw err;
    const why = err.errno === Errno.EACCES
      ? "lowering it below what the process inherited needs CAP_SYS_RESOURCE, which tardigrade " +
        "lacks here"
      : errnoText(err.errno);
    throw new RestoreError(
      `process ${pid}: oom_score_adj ${value} cannot be set: ${err.code} (${why})`,
      { cause: err },
    );
  } finally {
    if (fd >= 0) close(fd);
  }
}

/**
 * Last, after every thread's credentials: a change of uid clears the parent-death signal and
 * resets the dumpable flag (of the whole address space, from any thread).
 */
export function restoreAttributesAfterCredentials(inj: Injector, a: Attributes): void {
  if (a.pdeathsig) inj.call("prctl", PR.SET_PDEATHSIG, a.pdeathsig);
  if (a.dumpable === undefined) return;
  const now = Number(inj.call("prctl", PR.GET_DUMPABLE, 0, 0, 0, 0));
  if (now === a.dumpable) return;
  if (!SETTABLE_DUMPABLE.includes(a.dumpable)) {
    throw new RestoreError(
      `process ${inj.pid}: dumpable ${a.dumpable} (from fs.suid_dumpable when it changed ` +
        `credentials) cannot be set again; it came back ${now}`,
    );
  }
  inj.call("prctl", PR.SET_DUMPABLE, a.dumpable, 0, 0, 0);
}
