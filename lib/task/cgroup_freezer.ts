/**
 * The freezer state of the groups a tree lives in: v1 `freezer.state` (the freezer hierarchy)
 * and v2 `cgroup.freeze`. Measured on Linux 6.18: a task of a frozen v1 group can be seized, but
 * takes its ptrace interrupt only once thawed (and then stops before it runs an instruction); a
 * task of a frozen v2 group stops for ptrace at once, but goes back to its freezer trap when
 * continued, so no syscall can be injected into it. Either kind of group reaches FROZEN while
 * its tasks sit in a ptrace stop, and a task let go then stays frozen. So a dump seizes a tree in
 * a frozen group while it is frozen, thaws the group, and freezes it again before it lets the
 * tree go (or once it has ended it); a restore freezes the group again before it lets the
 * restored processes run: they stay frozen exactly where they were.
 */
import { DumpError } from "../errors.ts";
import { pauseThread, releaseWhenStopped } from "../ptrace/bounded_wait.ts";
import { seizeAndInterrupt } from "../ptrace/freeze.ts";
import { threadIds } from "../inspect/procfs.ts";

/** How long a group may take to reach FROZEN once asked. */
const FREEZE_WAIT_MS = 10_000;

function readOr(file: string): string | undefined {
  try {
    return Deno.readTextFileSync(file).trim();
  } catch {
    return undefined;
  }
}

/** Whether group `dir` is a v1 freezer group (else a v2 one). */
const isV1 = (dir: string) => readOr(`${dir}/freezer.state`) !== undefined;

/** Whether group `dir` was frozen itself (not through a parent). */
export function selfFrozen(dir: string): boolean {
  return isV1(dir)
    ? readOr(`${dir}/freezer.self_freezing`) === "1"
    : readOr(`${dir}/cgroup.freeze`) === "1";
}

/** Whether group `dir` is frozen, or freezing, now: by itself or through a parent. */
export function frozenNow(dir: string): boolean {
  return isV1(dir)
    ? readOr(`${dir}/freezer.state`) !== "THAWED"
    : selfFrozen(dir) || /^frozen 1$/m.test(readOr(`${dir}/cgroup.events`) ?? "");
}

/** Whether every task of group `dir` is frozen. */
const reachedFrozen = (dir: string) =>
  isV1(dir)
    ? readOr(`${dir}/freezer.state`) === "FROZEN"
    : /^frozen 1$/m.test(readOr(`${dir}/cgroup.events`) ?? "");

/** Freezes or thaws group `dir`; a freeze waits until every task in it is frozen. */
export function setFrozen(dir: string, frozen: boolean): void {
  if (isV1(dir)) Deno.writeTextFileSync(`${dir}/freezer.state`, frozen ? "FROZEN" : "THAWED");
  else Deno.writeTextFileSync(`${dir}/cgroup.freeze`, frozen ? "1" : "0");
  if (!frozen) return;
  const deadline = performance.now() + FREEZE_WAIT_MS;
  while (!reachedFrozen(dir)) {
    if (performance.now() > deadline) {
      throw new Error(`cgroup ${dir} did not become FROZEN within ${FREEZE_WAIT_MS} ms`);
    }
    pauseThread(1);
  }
}

/** The processes in group `dir` (its cgroup.procs). */
export const procsOf = (dir: string): number[] =>
  (readOr(`${dir}/cgroup.procs`) ?? "").split("\n").filter(Boolean).map(Number);

/**
 * The frozen freezer groups (v1, v2) of a tree being dumped, thawed once every thread in them is
 * seized and interrupted (`seized`, for the freeze to await), and frozen again by `refreeze`.
 */
export class FreezerThaw {
  /** Threads seized here, whose stop the freeze awaits instead of asking for it. */
  readonly seized = new Set<number>();
  /** Not yet frozen again. */
  readonly #groups: string[];

  /** `groups`: the groups thawed here, frozen at the dump. */
  private constructor(readonly groups: readonly string[]) {
    this.#groups = [...groups];
  }

  /**
   * Thaws for the dump the frozen groups of the tree `tree` (each process with its v1 freezer and
   * v2 groups); undefined when none is frozen. Refuses a group frozen through a parent, or one that holds a process outside the tree
   * (thawing it would let that one run).
   */
  static thaw(tree: { pid: number; dirs: string[] }[]): FreezerThaw | undefined {
    const groups = [...new Set(tree.flatMap((p) => p.dirs))].filter(frozenNow);
    if (groups.length === 0) return undefined;
    const pids = new Set(tree.map((p) => p.pid));
    for (const dir of groups) {
      if (!selfFrozen(dir)) {
        throw new DumpError(
          `the tree is in cgroup ${dir}, frozen by a parent group it does not live in: ` +
            `tardigrade thaws for a dump only a frozen group of the tree's own`,
        );
      }
      const outside = procsOf(dir).find((p) => !pids.has(p));
      if (outside !== undefined) {
        throw new DumpError(
          `the tree is in the frozen cgroup ${dir}, which also holds process ${outside} ` +
            `outside the dump: thawing it for the dump would let that one run`,
        );
      }
    }
    const thaw = new FreezerThaw(groups);
    try {
      for (const dir of groups) {
        for (const pid of procsOf(dir)) {
          for (const tid of threadIds(pid)) if (seizeAndInterrupt(tid)) thaw.seized.add(tid);
        }
      }
      for (const dir of groups) setFrozen(dir, false);
    } catch (err) {
      // The seized threads stop once thawed, and stay frozen when let go once frozen again.
      for (const dir of groups) setFrozen(dir, false);
      thaw.refreeze();
      thaw.letGo();
      throw err;
    }
    return thaw;
  }

  /** Freezes the groups again (their tasks still in a ptrace stop, or ended); once only. */
  refreeze(): void {
    for (const dir of this.#groups.splice(0)) {
      try {
        setFrozen(dir, true);
      } catch { /* gone with its tasks */ }
    }
  }

  /** Lets go of the threads seized here that no freeze took over (a dump that failed first). */
  letGo(): void {
    for (const tid of this.seized) releaseWhenStopped(tid);
    this.seized.clear();
  }
}
