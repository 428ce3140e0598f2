/**
 * Pid namespaces nested below the one a dump carries (a container's, or the tool's for a plain
 * tree): a process that ran `unshare --pid --fork` or clone(CLONE_NEWPID), a nested container,
 * a sandbox. Every process has a pid at every level (NSpid of /proc/PID/status, from the tool's
 * level down); the image keeps the dump-level one as `pid` and the deeper ones in `nestedPid`,
 * with the init of its innermost namespace, and a process whose children go into another
 * namespace than its own (unshare --pid) says which (`childPidNamespace`).
 *
 * The restore makes a nested namespace's init with clone3 CLONE_NEWPID and `set_tid` holding its
 * pid at every level, innermost first (1, then the outer ones: the kernel's order), from the
 * process that made it, which lives one level up; every process below it with its pid at every
 * level too. A process made into a nested namespace that is not its maker's own (a sibling of the
 * init forked after `unshare --pid`) is made once its maker joined that namespace for its
 * children (setns on a pidfd of the init) and left it again; a maker that had another namespace
 * for its children gets it back last (setns), once its threads are made.
 *
 * Refused at dump, naming them: a nested namespace whose init is not in the dump (it died: the
 * kernel ended every process in it, and its maker can fork there no more), a process that made
 * one for its children with no init yet, an init that its maker's death reparented to another
 * level, zombies inside nested namespaces, pidfds and I/O owners there, a nested namespace with a
 * mount namespace of its own (unshare --mount-proc: its own /proc), and the root of a dump in a
 * pid namespace nested below another one than the tool's (a container of a container dumped from
 * the host: dump the outer one).
 */
import { DumpError, RestoreError } from "../errors.ts";
import {
  innermostPid,
  namespaceIds,
  readComm,
  readProcLink,
  statusField,
} from "../inspect/procfs.ts";
import type { ProcessEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";
import { CLONE } from "../../ffi/mod.ts";

/** The pid namespace (`pid:[4026532183]`) process `pid` lives in, or its children, or null. */
function pidNamespace(pid: number, which: "pid" | "pid_for_children" = "pid"): string | null {
  try {
    return readProcLink(pid, `ns/${which}`);
  } catch {
    return null; // gone
  }
}

/** `1234 (comm)`, as a refusal names a process. */
function named(pid: number): string {
  try {
    return `${pid} (${readComm(pid)})`;
  } catch {
    return String(pid);
  }
}

/** The host pid of the init (pid 1 inside) of pid namespace `ns`, or null when it has none. */
export function initOf(ns: string): number | null {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    try {
      if (pidNamespace(pid) === ns && innermostPid(pid) === 1) return pid;
    } catch { /* gone meanwhile */ }
  }
  return null;
}

/**
 * `pid:[N], held by its init 4321 (sleep), made by 4320 (unshare)`: who keeps `ns` alive (the
 * maker left out when it is `subject`, the process the refusal is about).
 */
function holderOf(ns: string, subject?: number): string {
  const init = initOf(ns);
  if (init === null) return `${ns}, which has no init left`;
  const maker = Number(statusField(init, "PPid") ?? 0);
  return `${ns}, held by its init ${named(init)}` +
    (maker > 0 && maker !== subject ? `, made by ${named(maker)}` : "");
}

/**
 * Refuses container init `root` when its pid namespace is nested in another one below the
 * tool's: the restore makes the container's namespace one level below its own. Names each
 * namespace between it and the tool's.
 */
export function refuseNestedRoot(root: number): void {
  // One level below the tool's: the container's own.
  if (namespaceIds(root).length <= namespaceIds(Deno.pid).length + 1) return;
  const own = pidNamespace(Deno.pid);
  const levels: string[] = [];
  let outermostInit = root;
  // Up from the root: each init's parent lives in the namespace around the init's own.
  for (let p: number | null = root; p !== null && levels.length < 33;) {
    const ns = pidNamespace(p);
    if (ns === null || ns === own) break;
    levels.push(holderOf(ns));
    const init = initOf(ns);
    if (init === null) break;
    outermostInit = init;
    p = Number(statusField(init, "PPid") ?? 0) || null;
  }
  throw new DumpError(
    `process ${named(root)} lives in a pid namespace nested in another one than tardigrade's ` +
      `(innermost first: ${levels.join("; inside ")}): a container is dumped from the init of ` +
      `the outermost one (its nested namespaces come with it); dump ${outermostInit}, or run ` +
      `tardigrade inside the outer one (nsenter --target ${outermostInit} --all)`,
  );
}

/**
 * Checks process `pid` of the tree rooted at `root` before it is frozen: a pid namespace it made
 * for its children must have an init (else its maker could fork there no more: the restore could
 * not make it so), and one it lives in must be nested in the root's.
 */
export function checkNestedPidNamespace(pid: number, root: number): void {
  const own = pidNamespace(pid);
  const forChildren = pidNamespace(pid, "pid_for_children");
  // The kernel shows no namespace for children before its init is forked.
  const noInit = forChildren === null || (forChildren !== own && initOf(forChildren) === null);
  if (own !== null && noInit) {
    throw new DumpError(
      `process ${named(pid)} made pid namespace ${forChildren ? `${forChildren} ` : ""}for ` +
        `its children (unshare --pid) whose init has ended or was never forked: a nested pid ` +
        `namespace without its init cannot be made again`,
    );
  }
  if (pid === root || own === null || own === pidNamespace(root)) return;
  if (namespaceIds(pid).length <= namespaceIds(root).length) {
    throw new DumpError(
      `process ${named(pid)} lives in pid namespace ${holderOf(own)}, which is not nested in ` +
        `the pid namespace of the dump's root ${root}`,
    );
  }
}

/** What the dump knows of each task of a tree with nested pid namespaces, by host pid. */
export class NestedPids {
  private constructor(
    /** Index in NSpid of the dump's level (the root's namespace). */
    readonly level: number,
    /** Host pid of a nested process → its nested-namespace record (init by host pid). */
    readonly processes: Map<number, { init: number; pids: number[] }>,
    /** Host pid → host pid of the init of the namespace its children go into, when not its own. */
    readonly childNamespaces: Map<number, number>,
  ) {}

  /**
   * Reads the tree (host pids, parents first; the root first) whose processes are frozen, and
   * the zombie children of each (`zombiesOf`); null when no nested namespace is in it. Refuses
   * the shapes a restore could not make again (see the module's note), naming them.
   */
  static read(
    tree: readonly number[],
    zombiesOf: (pid: number) => number[],
  ): NestedPids | null {
    const root = tree[0];
    const level = namespaceIds(root).length - 1;
    const rootNs = pidNamespace(root);
    const inTree = new Set(tree);
    const processes = new Map<number, { init: number; pids: number[] }>();
    const childNamespaces = new Map<number, number>();
    // The init of each nested namespace in the tree, by namespace.
    const inits = new Map<string, number>();
    for (const pid of tree) {
      const ns = pidNamespace(pid);
      if (ns !== rootNs && ns !== null && innermostPid(pid) === 1) inits.set(ns, pid);
    }
    const depth = (pid: number) => namespaceIds(pid).length - 1 - level;
    for (const pid of tree) {
      const ns = pidNamespace(pid)!;
      const forChildren = pidNamespace(pid, "pid_for_children");
      if (forChildren !== null && forChildren !== ns) {
        const init = inits.get(forChildren);
        if (init === undefined) {
          throw new DumpError(
            `process ${named(pid)} made pid namespace ${holderOf(forChildren, pid)} for its ` +
              `children, whose init is not in the dump: dump the tree it is in`,
          );
        }
        childNamespaces.set(pid, init);
      }
      for (const z of zombiesOf(pid)) {
        if (namespaceIds(z).length - 1 > level) {
          throw new DumpError(
            `process ${named(pid)} has zombie child ${z} in a nested pid namespace, which ` +
              `tardigrade does not make again yet (let it be reaped first)`,
          );
        }
      }
      if (ns === rootNs) continue;
      const init = inits.get(ns);
      if (init === undefined) {
        throw new DumpError(
          `process ${named(pid)} lives in pid namespace ${holderOf(ns)}, whose init is not in ` +
            `the dump`,
        );
      }
      const parent = Number(statusField(pid, "PPid") ?? 0);
      if (init === pid && (!inTree.has(parent) || depth(parent) !== depth(pid) - 1)) {
        throw new DumpError(
          `process ${named(pid)}, init of nested pid namespace ${ns}, has parent ${named(parent)} ${
            inTree.has(parent) ? "at another level (its maker ended)" : "outside the dump"
          }: tardigrade makes a nested namespace's init from a process one level up`,
        );
      }
      processes.set(pid, { init, pids: namespaceIds(pid).slice(level + 1) });
    }
    if (!processes.size && !childNamespaces.size) return null;
    return new NestedPids(level, processes, childNamespaces);
  }

  /**
   * Adds to entry `e` (still by host pids, as dumped) where it lives and where its children go,
   * and the nested ids of its threads; refuses pidfds and I/O owners in a nested namespace.
   */
  describe(e: ProcessEntry): void {
    const nested = this.processes.get(e.pid);
    const child = this.childNamespaces.get(e.pid);
    if (child !== undefined) e.childPidNamespace = child;
    if (!nested) return;
    e.nestedPid = { init: nested.init, pids: [...nested.pids] };
    for (const t of e.threads) {
      const ids = namespaceIds(t.tid).slice(this.level + 1);
      if (ids.length !== nested.pids.length) {
        throw new DumpError(`thread ${t.tid} of process ${e.pid} is not in its pid namespace`);
      }
      t.nestedTids = ids;
    }
    for (const f of e.files) {
      if (f.kind === "pidfd" || (f.owner && f.owner.pid !== 0)) {
        throw new DumpError(
          `process ${e.pid} has ${
            f.kind === "pidfd" ? "a pidfd" : "an open file with an I/O owner"
          } ` +
            `(file ${f.id}) inside a nested pid namespace, which tardigrade does not dump yet`,
        );
      }
    }
  }
}

/** The image's processes by dump-level pid, with what makes a nested namespace again. */
export class NestedPlan {
  readonly #byPid: Map<number, ProcessEntry>;

  /** Checks that what `entries` (the root first) say of nested namespaces holds together. */
  constructor(entries: readonly ProcessEntry[]) {
    this.#byPid = new Map(entries.map((e) => [e.pid, e]));
    const bad = (why: string) => {
      throw new RestoreError(`cannot restore: ${why}`);
    };
    for (const e of entries) {
      const n = e.nestedPid;
      if (n) {
        const init = this.#byPid.get(n.init);
        if (
          !init?.nestedPid || init.nestedPid.init !== n.init || init.nestedPid.pids.at(-1) !== 1
        ) {
          bad(
            `process ${e.pid} lives in a nested pid namespace whose init ${n.init} is not in the image`,
          );
        }
        if (init!.nestedPid!.pids.length !== n.pids.length) {
          bad(`process ${e.pid} is not at the level of its pid namespace's init ${n.init}`);
        }
        for (const t of e.threads) {
          if (t.nestedTids?.length !== n.pids.length) {
            bad(`thread ${t.tid} of process ${e.pid} has no id at every nested level`);
          }
        }
        if (e === entries[0]) bad(`the root of the image is in a nested pid namespace`);
      }
      if (e.childPidNamespace !== undefined) {
        const init = this.#byPid.get(e.childPidNamespace);
        if (init?.nestedPid?.init !== e.childPidNamespace) {
          bad(
            `process ${e.pid} makes its children in a pid namespace whose init is not in the image`,
          );
        }
      }
    }
  }

  /** Whether any process of the image lives in a nested namespace. */
  get any(): boolean {
    return [...this.#byPid.values()].some((e) => e.nestedPid || e.childPidNamespace);
  }

  /** How deep process `pid` lives below the dump's level (0: at it). */
  depth(pid: number): number {
    return this.#byPid.get(pid)?.nestedPid?.pids.length ?? 0;
  }

  /** The namespace `pid` lives in: the dump-level pid of its init, 0 for the dump's level. */
  namespaceOf(pid: number): number {
    return this.#byPid.get(pid)?.nestedPid?.init ?? 0;
  }

  /**
   * The `set_tid` array of a task of process `e` (its dump-level id `id`, its nested ids
   * `nested`, outermost first): innermost first, as clone3 reads it.
   */
  static setTid(id: number, nested: readonly number[] | undefined): number[] {
    return [...(nested ?? [])].reverse().concat(id);
  }

  /**
   * How maker `from` makes process `p`: with CLONE_NEWPID when `p` is the init of a namespace
   * nested in the maker's; after joining `p`'s namespace for its children (`join`: the
   * dump-level pid of that namespace's init) when that is not the maker's own.
   */
  makeFrom(from: number, p: ProcessEntry): { flags: bigint; join?: number } {
    const ns = this.namespaceOf(p.pid);
    if (ns === this.namespaceOf(from)) return { flags: 0n };
    if (ns === p.pid) {
      if (this.depth(from) !== this.depth(p.pid) - 1) {
        throw new RestoreError(
          `cannot restore: process ${p.pid}, init of a nested pid namespace, is made by process ` +
            `${from}, which is not one level up`,
        );
      }
      return { flags: CLONE.NEWPID };
    }
    return { flags: 0n, join: ns };
  }
}

/**
 * Makes the process `inj` runs in (stopped, a restore's) make its children in the pid namespace
 * of host pid `hostInit` (a namespace nested in its own), or, with null, in its own again: setns
 * on a pidfd of that init (of itself), as `unshare --pid` had left it.
 */
export function setChildPidNamespace(inj: Injector, hostInit: number | null): void {
  const viewer = namespaceIds(inj.pid);
  const target = hostInit === null ? viewer : namespaceIds(hostInit);
  const seen = target[viewer.length - 1];
  if (seen === undefined || target.length < viewer.length) {
    throw new RestoreError(
      `process ${inj.pid} cannot make children in the pid namespace of ${hostInit}: it is not ` +
        `nested in its own`,
    );
  }
  const pidfd = inj.call("pidfd_open", seen, 0);
  try {
    inj.call("setns", pidfd, CLONE.NEWPID);
  } finally {
    inj.call("close", pidfd);
  }
}
