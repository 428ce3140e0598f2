/**
 * Mount namespaces made inside a dumped tree along with a nested pid namespace: `unshare --pid
 * --fork --mount-proc` (the maker unshares a mount namespace, a copy of its parent's, and the
 * nested init mounts a /proc showing its namespace), or clone with CLONE_NEWPID | CLONE_NEWNS.
 * The dump records, on the process that made it (its parent lives in another one), the mounts
 * added on the copy, compared with its parent's as the container code compares a container's
 * with the tool's (mounts.ts); each is made again as a container's is (mount_tree.ts).
 *
 * The restore makes the maker unshare a mount namespace (every mount private, as `unshare`
 * leaves it) before it forks its children, and make the mounts added before any /proc of a
 * nested namespace. Such a /proc, and every mount after it, is mounted by that namespace's init
 * before the first process living there is built (its files may be there: a directory open on
 * /proc), after the processes outside it (the maker), which open /proc/self while built and
 * would not be shown by it. The
 * comparison before resume reads each such namespace again against its maker's parent's.
 *
 * Refused at dump, naming them: a mount namespace made inside the tree that a process outside
 * it also lives in, two processes that made (joined) the same one, a propagating mount in it, a
 * mount it lacks of its parent's, a root of its own (pivot_root), and what a container's mounts
 * refuse.
 */
import { CLONE, cstring, MS } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { MountEntry, ProcessEntry } from "../image/schema.ts";
import {
  innermostPid,
  processState,
  readComm,
  readMountInfo,
  statusField,
} from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";
import { makeMount, mountEntries, mountName } from "./mount_tree.ts";
import { difference, mountLines, mountsDiffer } from "./mounts.ts";
import { namespaceOf } from "./kinds.ts";

/** `1234 (comm)`, as a refusal names a process. */
function named(pid: number): string {
  try {
    return `${pid} (${readComm(pid)})`;
  } catch {
    return String(pid);
  }
}

const parentOf = (pid: number) => Number(statusField(pid, "PPid") ?? 0);

/**
 * The mounts of each mount namespace made inside the tree (host pids, parents first, the root
 * first, frozen), by host pid of the process that made it; empty when none was.
 */
export function readNestedMounts(tree: readonly number[]): Map<number, MountEntry[]> {
  const made = new Map<number, MountEntry[]>();
  const makers = new Map<string, number>();
  for (const pid of tree.slice(1)) {
    const ns = namespaceOf(pid, "mnt");
    if (ns === null || ns === namespaceOf(parentOf(pid), "mnt")) continue;
    const other = makers.get(ns);
    if (other !== undefined) {
      throw new DumpError(
        `processes ${named(other)} and ${named(pid)} both entered mount namespace ${ns} from ` +
          `another one: tardigrade makes a mount namespace of the tree again from one process`,
      );
    }
    makers.set(ns, pid);
  }
  if (!makers.size) return made;
  refuseOutsiders(tree, makers);
  const rootPid = namespaceOf(tree[0], "pid");
  // The init of each nested pid namespace in the tree, by namespace.
  const inits = new Map<string, number>();
  for (const pid of tree) {
    const ns = namespaceOf(pid, "pid");
    if (ns !== null && ns !== rootPid && innermostPid(pid) === 1) inits.set(ns, pid);
  }
  for (const [ns, maker] of makers) {
    const nestedInit = (shown: string) => {
      const init = inits.get(shown);
      return init !== undefined && namespaceOf(init, "mnt") === ns ? init : null;
    };
    made.set(maker, dumpNestedMounts(maker, parentOf(maker), nestedInit));
  }
  return made;
}

/** Refuses a process outside `tree` living in a mount namespace made inside it. */
function refuseOutsiders(tree: readonly number[], makers: Map<string, number>): void {
  const inTree = new Set(tree);
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    if (inTree.has(pid) || pid === Deno.pid || processState(pid) === "Z") continue;
    const ns = namespaceOf(pid, "mnt");
    const maker = ns === null ? undefined : makers.get(ns);
    if (maker === undefined) continue;
    throw new DumpError(
      `mount namespace ${ns}, made by process ${named(maker)} of the dump, is also held by ` +
        `process ${named(pid)}, which is not in the dump: a restore would part them`,
    );
  }
}

/**
 * The mounts `maker` added on the copy of its parent's mount namespace it lives in; refuses what
 * the restore would not make again.
 */
function dumpNestedMounts(
  maker: number,
  parent: number,
  nestedInit: (shown: string) => number | null,
): MountEntry[] {
  const who = `the mount namespace of process ${named(maker)}`;
  const propagated = mountLines(maker).find((m) => m.propagation !== "");
  if (propagated) {
    throw new DumpError(
      `mount ${propagated.mountPoint} of ${who} propagates (${propagated.propagation}): a ` +
        `restore makes every mount of it private`,
    );
  }
  const rootOf = (p: number) => mountLines(p).find((m) => m.mountPoint === "/")?.key;
  if (rootOf(maker) !== rootOf(parent)) {
    throw new DumpError(
      `${who} has a root of its own (pivot_root), which tardigrade does not make again inside ` +
        `a dumped tree yet`,
    );
  }
  const { added, missing } = difference(maker, parent);
  if (missing.length) {
    throw new DumpError(
      `${who} lacks ${mountName(missing[0])}, which its parent's (${named(parent)}) has: a ` +
        `mount namespace made inside the tree is made again as a copy of its parent's with ` +
        `mounts added`,
    );
  }
  return mountEntries(maker, added, [], readMountInfo(parent), false, { who, nestedInit });
}

/** The host pid → dump-level pid translation of what `e`'s mount namespace names. */
export function translateNestedMounts(e: ProcessEntry, pid: (host: number) => number): void {
  for (const m of e.mountNamespace?.mounts ?? []) {
    if (m.pidNamespace !== undefined) m.pidNamespace = pid(m.pidNamespace);
  }
}

/** Mounts a nested namespace's init makes late, in the mount namespace it shares with its maker. */
export interface LateMounts {
  /** Dump-level pid of the init that mounts them. */
  init: number;
  /** The mounts, in order. */
  mounts: MountEntry[];
}

/**
 * Checks the mount namespaces `entries` made: a /proc of a nested namespace is mounted by that
 * namespace's init, a process of the image living below the maker.
 */
export function checkNestedMounts(entries: readonly ProcessEntry[]): void {
  const byPid = new Map(entries.map((e) => [e.pid, e]));
  for (const e of entries) {
    if (!e.mountNamespace) continue;
    if (e === entries[0]) {
      throw new RestoreError(
        `cannot restore: the root of the image made a mount namespace of its own inside the tree`,
      );
    }
    for (const m of e.mountNamespace.mounts) {
      const init = m.pidNamespace === undefined ? undefined : byPid.get(m.pidNamespace);
      if (m.pidNamespace !== undefined && init?.nestedPid?.init !== m.pidNamespace) {
        throw new RestoreError(
          `cannot restore: ${mountName(m)} of process ${e.pid}'s mount namespace shows a pid ` +
            `namespace whose init ${m.pidNamespace} is not in the image`,
        );
      }
    }
  }
}

/**
 * Gives the process `inj` runs in (a restore's maker `p`, before it forks) a mount namespace of
 * its own, a copy of its parent's with every mount private, with the mounts it added before any
 * /proc of a nested namespace; returns those its nested init mounts last.
 */
export function makeNestedMountNamespace(inj: Injector, p: ProcessEntry): LateMounts | null {
  const mounts = p.mountNamespace?.mounts ?? [];
  const make = (at: Injector, m: MountEntry) => {
    try {
      makeMount(at, m, "", `/proc/${at.pid}/root`);
    } catch (err) {
      throw new RestoreError(
        `cannot mount ${mountName(m)} again in the mount namespace of process ${p.pid}: ${
          (err as Error).message
        }`,
      );
    }
  };
  try {
    inj.call("unshare", CLONE.NEWNS);
    inj.call("mount", 0, inj.put(cstring("/"), 0), 0, MS.REC | MS.PRIVATE, 0);
  } catch (err) {
    throw new RestoreError(
      `cannot give process ${p.pid} a mount namespace of its own: ${(err as Error).message}`,
    );
  }
  const late = mounts.findIndex((m) => m.pidNamespace !== undefined);
  for (const m of late < 0 ? mounts : mounts.slice(0, late)) make(inj, m);
  return late < 0 ? null : { init: mounts[late].pidNamespace!, mounts: mounts.slice(late) };
}

/** Mounts `late` from its init (`inj` runs in it), before the processes of its namespace are built. */
export function makeLateMounts(inj: Injector, late: LateMounts): void {
  for (const m of late.mounts) {
    try {
      makeMount(inj, m, "", `/proc/${inj.pid}/root`);
    } catch (err) {
      throw new RestoreError(
        `cannot mount ${mountName(m)} again from nested init ${late.init}: ${
          (err as Error).message
        }`,
      );
    }
  }
}

/**
 * How the mount namespace restored maker `pid` (of image entry `p`) made differs from its image,
 * compared with its parent's (`parent`) as the dump compared them; null when it does not.
 */
export function nestedMountsDiffer(pid: number, parent: number, p: ProcessEntry): string | null {
  if (namespaceOf(pid, "mnt") === namespaceOf(parent, "mnt")) {
    return `process ${p.pid} lives in its parent's mount namespace, not one of its own`;
  }
  const why = mountsDiffer(pid, p.mountNamespace?.mounts ?? [], parent);
  return why && `the mount namespace of process ${p.pid} differs: ${why}`;
}
