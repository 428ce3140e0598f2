/**
 * cgroup membership, v1 hierarchies and v2 alike (a hybrid machine has both): each process's
 * group in every hierarchy, as /proc/PID/cgroup names it, and each thread's where it is in
 * another (v1 `tasks`, v2 threaded groups, made threaded again). The groups the tree lives in
 * that the dumping tool does not are its own: the dump records their settings (SETTING_FILES),
 * their freezer state (cgroup_freezer.ts), and their parents the tool is not below. A group it
 * shares with the dumping tool is the environment's (the session's, the machine's): marked so,
 * it is not put back, as the restored process starts in the restoring tool's groups, which stand
 * for it. The restore puts each process back in its own groups, then each thread in its own:
 * made again with their settings when missing (with their parents gone too) and checked when
 * present (their recorded parents too), frozen again before the tree runs. Nothing else is
 * touched: no group the tree does not live in is made, changed or joined (a parent is made only
 * when gone), and a failed restore removes the groups it made.
 */
import { DumpError, RestoreError } from "../errors.ts";
import type { CgroupEntry, CgroupMembership, ProcessEntry } from "../image/schema.ts";
import { readMountInfo } from "../inspect/procfs.ts";
import { frozenNow, procsOf, selfFrozen, setFrozen } from "./cgroup_freezer.ts";

/**
 * The settings recorded of a group, in the order they are made: the commonly set limits and
 * weights of every controller, v1 and v2, each a single value a write gives back as read. Not
 * every writable file: some are actions (`memory.force_empty`, `cgroup.kill`), some name devices
 * by numbers another machine gives others (`io.max`), and telling a set value from a default
 * would need a fresh group made beside the tree's, in a parent the tree may not own. Cpuset first
 * (a cpuset group takes no task without them); a period before its quota, a limit before the
 * memory+swap limit that may not be below it.
 */
const SETTING_FILES = [
  "cgroup.type", // v2, recorded when "threaded": made so before a thread can join it
  "cpuset.cpus",
  "cpuset.mems",
  "cpuset.cpu_exclusive",
  "cpuset.mem_exclusive",
  "pids.max",
  "memory.limit_in_bytes",
  "memory.memsw.limit_in_bytes",
  "memory.soft_limit_in_bytes",
  "memory.swappiness",
  "memory.max",
  "memory.high",
  "memory.low",
  "memory.min",
  "memory.swap.max",
  "memory.oom.group",
  "cpu.shares",
  "cpu.cfs_period_us",
  "cpu.cfs_quota_us",
  "cpu.cfs_burst_us",
  "cpu.rt_period_us",
  "cpu.rt_runtime_us",
  "cpu.max",
  "cpu.weight",
  "cpu.idle",
  "blkio.weight",
];

/** The membership /proc/PID/cgroup (of thread `tid`, or of the tool with "self") shows. */
function membership(pid: number | "self", tid?: number): CgroupMembership[] {
  const file = tid === undefined ? `/proc/${pid}/cgroup` : `/proc/${pid}/task/${tid}/cgroup`;
  return Deno.readTextFileSync(file).split("\n").filter(Boolean).map((line) => {
    const [, hierarchy, ...path] = line.split(":");
    return { hierarchy, path: path.join(":") };
  });
}

/** The groups of process `pid` in every hierarchy; none once it is gone. */
export function cgroupsOf(pid: number): CgroupMembership[] {
  try {
    return membership(pid);
  } catch {
    return [];
  }
}

/** How the tool names a hierarchy: its controllers (`pids`, `name=systemd`), cgroup2 for v2. */
const hierarchyName = (h: string) => h === "" ? "cgroup2" : h;

/** Where each hierarchy the tool sees is mounted (/proc/self/mountinfo), by its name in /proc. */
function hierarchyMounts(): Map<string, string> {
  const mounts = new Map<string, string>();
  const cgroupMounts = readMountInfo("self")
    .filter((m) => m.fsType === "cgroup" || m.fsType === "cgroup2")
    .map((m) => ({ point: m.mountPoint, fsType: m.fsType, options: m.superOptions.split(",") }));
  for (const { hierarchy } of membership("self")) {
    const tokens = hierarchy.split(",");
    const m = cgroupMounts.find((m) =>
      hierarchy === ""
        ? m.fsType === "cgroup2"
        : m.fsType === "cgroup" && tokens.every((t) => m.options.includes(t))
    );
    if (m) mounts.set(hierarchy, m.point);
  }
  return mounts;
}

/** `list` with the groups the dumping tool is in too marked as the tool's. */
function markTool(list: CgroupMembership[]): CgroupMembership[] {
  const tool = membership("self");
  return list.map((m) =>
    tool.some((t) => t.hierarchy === m.hierarchy && t.path === m.path) ? { ...m, tool: true } : m
  );
}

/** The groups of process `pid` in every hierarchy. */
export function dumpCgroups(pid: number): CgroupMembership[] {
  return markTool(membership(pid));
}

/**
 * The groups thread `tid` of process `pid` is in apart from its process's (v1 `tasks`, v2
 * threaded groups), one a hierarchy; undefined when it is in all of its process's.
 */
export function dumpThreadCgroups(pid: number, tid: number): CgroupMembership[] | undefined {
  if (tid === pid) return undefined;
  const own = membership(pid);
  const apart = membership(pid, tid).filter((m) =>
    !own.some((o) => o.hierarchy === m.hierarchy && o.path === m.path)
  );
  return apart.length ? markTool(apart) : undefined;
}

/**
 * A membership as the restore's comparison sees it: a group of the tool's is the tool's, on
 * either side (the restored process is in the restoring tool's, as it was in the dumping tool's).
 */
export function cgroupView(m: CgroupMembership): string {
  return `${hierarchyName(m.hierarchy)}:${m.tool ? "(the tool's)" : m.path}`;
}

/** The directories of the groups of process `pid` that can be frozen: v1 freezer, v2. */
export function freezerDirsOf(pid: number): string[] {
  const mounts = hierarchyMounts();
  return cgroupsOf(pid)
    .filter((g) => g.hierarchy === "" || g.hierarchy.split(",").includes("freezer"))
    .map((g) => groupDir(mounts, g))
    .filter((dir): dir is string => dir !== null);
}

/** The path of the parent of group `path` ("/" for a group at the root). */
const parentOf = (path: string) => path.slice(0, path.lastIndexOf("/")) || "/";

function isDir(dir: string): boolean {
  try {
    return Deno.statSync(dir).isDirectory;
  } catch {
    return false;
  }
}

/** The path of group `g` on this machine, or null when its hierarchy is not mounted. */
function groupDir(mounts: Map<string, string>, g: CgroupMembership): string | null {
  const point = mounts.get(g.hierarchy);
  return point === undefined ? null : `${point}${g.path === "/" ? "" : g.path}`;
}

function readSettings(dir: string): Record<string, string> {
  const settings: Record<string, string> = {};
  for (const file of SETTING_FILES) {
    try {
      const value = Deno.readTextFileSync(`${dir}/${file}`).trim();
      // A domain group's type follows its children ("domain threaded"): nothing to make.
      if (file !== "cgroup.type" || value === "threaded") settings[file] = value;
    } catch { /* not a file of this hierarchy */ }
  }
  return settings;
}

/**
 * The groups processes of `memberships` live in that the dumping tool does not, with their limits
 * and whether they were frozen (`thawed`: the groups the dump thawed, frozen before it).
 */
export function dumpCgroupGroups(
  memberships: CgroupMembership[][],
  thawed: readonly string[] = [],
): CgroupEntry[] {
  // Read once a group of its own needs it: mountinfo is long on a machine with many mounts.
  let mounts: Map<string, string> | undefined;
  const tool = membership("self");
  const out: CgroupEntry[] = [];
  const add = (m: CgroupMembership) => {
    if (out.some((g) => g.hierarchy === m.hierarchy && g.path === m.path)) return;
    const dir = groupDir(mounts ??= hierarchyMounts(), m);
    if (dir === null) {
      throw new DumpError(
        `the tree lives in cgroup ${m.path} of hierarchy ${hierarchyName(m.hierarchy)}, ` +
          `which is not mounted here: its limits cannot be read`,
      );
    }
    const frozen = selfFrozen(dir) || thawed.includes(dir);
    out.push({ ...m, settings: readSettings(dir), ...(frozen ? { frozen: true } : {}) });
  };
  for (const { tool: shared, ...m } of memberships.flat()) {
    if (shared) continue;
    // Its parents the tool is not below, parents first: a restore makes again those gone too.
    const toolPath = tool.find((t) => t.hierarchy === m.hierarchy)?.path ?? "/";
    const parents: string[] = [];
    for (let path = parentOf(m.path); path !== "/"; path = parentOf(path)) parents.unshift(path);
    for (const path of parents) {
      if (toolPath !== path && !toolPath.startsWith(`${path}/`)) add({ ...m, path });
    }
    add(m);
  }
  return out;
}

/** What the restore does to put a process back in one of its groups. */
type Step = { dir: string; make?: CgroupEntry[]; thaw?: boolean } | null;

/** Puts restored processes back in their cgroups; removes the groups it made if asked. */
export class CgroupRestore {
  /** Read once a group is not the tool's (`#plan`): most restores need no mountinfo. */
  #mounts?: Map<string, string>;

  #hierarchies(): Map<string, string> {
    return this.#mounts ??= hierarchyMounts();
  }
  readonly #made: string[] = [];
  /** Groups found frozen and empty, thawed to take the tree, until it is frozen again. */
  readonly #thawed: string[] = [];
  /** Groups frozen again, thawed if the restore fails after all (a frozen task cannot die). */
  readonly #frozen: string[] = [];

  /** `groups`: the root entry's `cgroupGroups` (absent in older images). */
  constructor(readonly groups: readonly CgroupEntry[]) {}

  /**
   * What to do for group `m` of `who` (a process, or a thread: "thread 7 of process 5") whose
   * restored copy starts where the tool is; throws a RestoreError naming a group it cannot put
   * it back in.
   */
  #plan(who: string, m: CgroupMembership): Step {
    if (m.tool) return null; // the tool's, then and now: the stub's, which it inherits
    const where = `${who} was in cgroup ${m.path} of ${hierarchyName(m.hierarchy)}`;
    const now = membership("self").find((t) => t.hierarchy === m.hierarchy);
    if (now?.path === m.path) return null; // the stub's, which it inherits
    const dir = groupDir(this.#hierarchies(), m);
    if (dir === null || now === undefined) {
      throw new RestoreError(`cannot restore: ${where}, a hierarchy this machine does not mount`);
    }
    const own = this.#entry(m.hierarchy, m.path);
    if (!isDir(dir)) {
      if (!own) {
        throw new RestoreError(
          `cannot restore: ${where}, which is gone, and the image has not its limits to make it`,
        );
      }
      return { dir, make: this.#chain(where, own) };
    }
    if (own) this.#checkSettings(where, dir, own);
    if (frozenNow(dir) && !this.#thawed.includes(dir)) {
      if (!own?.frozen || !selfFrozen(dir) || procsOf(dir).length) {
        throw new RestoreError(
          `cannot restore: ${where}, which is frozen now` +
            (own?.frozen && selfFrozen(dir)
              ? ` and holds processes (thawing it to restore the tree in it would let them run)`
              : `, and was not frozen itself at the dump (the tree would stop)`),
        );
      }
      return { dir, thaw: true };
    }
    return { dir };
  }

  #entry(hierarchy: string, path: string): CgroupEntry | undefined {
    return this.groups.find((g) => g.hierarchy === hierarchy && g.path === path);
  }

  /**
   * The groups to make, parents first, for the missing group `own`: it and each parent gone too,
   * up to one that exists (refused where the image has not a missing parent's settings).
   */
  #chain(where: string, own: CgroupEntry): CgroupEntry[] {
    const chain = [own];
    for (let path = parentOf(own.path); path !== "/"; path = parentOf(path)) {
      if (isDir(groupDir(this.#hierarchies(), { hierarchy: own.hierarchy, path })!)) break;
      const parent = this.#entry(own.hierarchy, path);
      if (!parent) {
        throw new RestoreError(
          `cannot restore: ${where}, whose parent ${path} is gone too, and the image has not ` +
            `its settings to make it (the tool was below it at the dump)`,
        );
      }
      chain.unshift(parent);
    }
    return chain;
  }

  /** Refuses group `dir` (of `where`) whose settings are not `own`'s. */
  #checkSettings(where: string, dir: string, own: CgroupEntry): void {
    const now = readSettings(dir);
    for (const [file, value] of Object.entries(own.settings)) {
      if (now[file] !== value) {
        throw new RestoreError(
          `cannot restore: ${where}, whose ${file} is ${now[file] ?? "missing"} now, not ` +
            `${value} as dumped (the tree would run under other limits)`,
        );
      }
    }
  }

  /** Refuses, before anything is made, a group a process of `entries` cannot be put back in. */
  check(entries: readonly ProcessEntry[]): void {
    for (const e of entries) {
      for (const m of e.cgroups ?? []) this.#plan(`process ${e.pid}`, m);
      for (const t of e.threads) {
        for (const m of t.cgroups ?? []) this.#plan(`thread ${t.tid} of process ${e.pid}`, m);
      }
    }
    // Its parents recorded, where present: they limit the tree too.
    for (const g of this.groups) {
      const dir = groupDir(this.#hierarchies(), g);
      const where = `the tree lived below cgroup ${g.path} of ${hierarchyName(g.hierarchy)}`;
      if (dir !== null && isDir(dir)) this.#checkSettings(where, dir, g);
    }
  }

  /** Puts the restored process `hostPid` (the image's `pid`) into `cgroups`. */
  join(pid: number, hostPid: number, cgroups: readonly CgroupMembership[] | undefined): void {
    for (const m of cgroups ?? []) {
      const step = this.#plan(`process ${pid}`, m);
      if (!step) continue;
      this.#prepare(step);
      this.#enter(step.dir, "cgroup.procs", `process ${pid}`, hostPid);
    }
  }

  /**
   * Puts the restored thread `hostTid` (the image's `tid`, of process `pid`, which is in its
   * process's groups by now) into the groups it had apart from its process.
   */
  joinThread(pid: number, tid: number, hostTid: number, cgroups?: readonly CgroupMembership[]) {
    const who = `thread ${tid} of process ${pid}`;
    for (const m of cgroups ?? []) {
      const step = this.#plan(who, m);
      // The tool's group: the restoring tool's, where the thread's process did not follow it.
      const now = membership("self").find((t) => t.hierarchy === m.hierarchy)!;
      const dir = step?.dir ?? groupDir(this.#hierarchies(), now)!;
      if (step) this.#prepare(step);
      this.#enter(dir, m.hierarchy === "" ? "cgroup.threads" : "tasks", who, hostTid);
    }
  }

  /** Makes the group of `step` when missing, or thaws it while it takes the tree. */
  #prepare(step: NonNullable<Step>): void {
    for (const g of step.make ?? []) this.#make(groupDir(this.#hierarchies(), g)!, g);
    if (!step.thaw) return;
    setFrozen(step.dir, false);
    this.#thawed.push(step.dir);
  }

  /**
   * Freezes again the groups that were frozen at the dump, once the tree is back in them and
   * before it runs: its processes, still in their ptrace stop, stay frozen once let go.
   */
  freezeAgain(): void {
    for (const g of this.groups) {
      const dir = g.frozen ? groupDir(this.#hierarchies(), g) : null;
      if (dir === null) continue;
      try {
        setFrozen(dir, true);
        this.#frozen.push(dir);
      } catch (err) {
        throw new RestoreError(`cannot freeze cgroup ${dir} again: ${(err as Error).message}`);
      }
    }
    this.#thawed.length = 0;
  }

  /** Thaws the groups `freezeAgain` froze, so that a failed restore can end its processes. */
  thawToEnd(): void {
    for (const dir of this.#frozen.splice(0)) {
      try {
        setFrozen(dir, false);
        this.#thawed.push(dir);
      } catch { /* gone */ }
    }
  }

  /** Writes task `id` (of `who`) into `file` of group `dir`. */
  #enter(dir: string, file: string, who: string, id: number): void {
    try {
      Deno.writeTextFileSync(`${dir}/${file}`, String(id));
    } catch (err) {
      throw new RestoreError(`cannot put ${who} back in cgroup ${dir}: ${(err as Error).message}`);
    }
  }

  /** Makes group `dir` with the limits of `g` (its parent must exist). */
  #make(dir: string, g: CgroupEntry): void {
    let file = "";
    try {
      Deno.mkdirSync(dir);
      this.#made.push(dir);
      const fresh = readSettings(dir);
      for (file of SETTING_FILES) {
        const value = g.settings[file];
        // Only what differs: a write of the default may be refused (an exclusive cpuset's 0).
        if (value !== undefined && value !== fresh[file]) {
          Deno.writeTextFileSync(`${dir}/${file}`, value);
        }
      }
    } catch (err) {
      const what = file ? ` (its ${file})` : "";
      throw new RestoreError(`cannot make cgroup ${dir} again${what}: ${(err as Error).message}`);
    }
  }

  /** Removes the groups this restore made (once the processes it put there are gone). */
  abort(): void {
    // A group found frozen is left frozen, as it was; one made goes.
    for (const dir of this.#thawed.splice(0)) {
      try {
        if (!this.#made.includes(dir)) setFrozen(dir, true);
      } catch { /* gone */ }
    }
    for (const dir of this.#made.splice(0).reverse()) {
      try {
        Deno.removeSync(dir);
      } catch { /* still used, or gone */ }
    }
  }
}
