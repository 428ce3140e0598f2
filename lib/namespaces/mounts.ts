/**
 * The mount namespace of a container. Either a copy of the tool's mount namespace with mounts the
 * container added on it (`unshare --mount-proc`: its own /proc; a tmpfs, a bind mount): the dump
 * compares the container's mounts with the tool's (as multisets of mountinfo lines without their
 * ids) and records those it added, refusing one it removed or changed; or a root of its own
 * (pivot_root'ed, as an OCI runtime makes it): every mount of it is recorded, the root first.
 * How each is made again is mount_tree.ts's. Shared or slave propagation is refused, naming the
 * mount: the restore makes every mount of the container private.
 *
 * The restore gives the container's init (after its other namespaces: a sysfs shows its net
 * namespace, an mqueue its IPC namespace) a mount namespace of its own, a copy of the tool's with
 * every mount private. It mounts the added ones on it; or builds the container's tree on a
 * directory of the tool's /tmp, moves the init's root there (pivot_root) and lets go of the old
 * one. The restore's check compares the result the same way as the dump.
 */
import { CLONE, cstring, MNT, MS } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { MountEntry } from "../image/schema.ts";
import { type MountInfo, readMountInfo } from "../inspect/procfs.ts";
import { makeMount, mountEntries, mountName } from "./mount_tree.ts";

/** A mount with what two mounts compare: everything but the ids (the copy has its own). */
export interface MountLine extends MountInfo {
  key: string;
}

/** The mounts of `pid`'s mount namespace, each with its key. */
export function mountLines(pid: number | "self"): MountLine[] {
  return readMountInfo(pid).map((m) => ({
    ...m,
    key: [m.dev, m.root, m.mountPoint, m.options, m.fsType, m.source, m.superOptions].join(" "),
  }));
}

/** The lines of `a` not in `b`, each line of `b` matching one of `a` at most. */
export function minus(a: MountLine[], b: MountLine[]): MountLine[] {
  const left = new Map<string, number>();
  for (const l of b) left.set(l.key, (left.get(l.key) ?? 0) + 1);
  return a.filter((l) => {
    const n = left.get(l.key) ?? 0;
    if (n > 0) left.set(l.key, n - 1);
    return n === 0;
  });
}

/**
 * The mounts process `pid` has that `base` (the tool, or the process whose mount namespace `pid`'s
 * was copied from) has not, and those `base` has that it lacks.
 */
export function difference(
  pid: number,
  base: number | "self" = "self",
): { added: MountLine[]; missing: MountLine[] } {
  const theirs = mountLines(pid), ours = mountLines(base);
  return { added: minus(theirs, ours), missing: minus(ours, theirs) };
}

/** Whether the root of `pid`'s mount namespace is another than the tool's (pivot_root'ed). */
function ownRoot(pid: number): boolean {
  const rootOf = (p: number | "self") => mountLines(p).find((m) => m.mountPoint === "/")?.key;
  return rootOf(pid) !== rootOf("self");
}

/** The mounts of container `pid` to make again; refuses what the restore would not make. */
export function dumpMounts(pid: number): MountEntry[] {
  const propagated = mountLines(pid).find((m) => m.propagation !== "");
  if (propagated) {
    throw new DumpError(
      `mount ${propagated.mountPoint} of container ${pid} propagates (${propagated.propagation}): ` +
        `a restore makes every mount of the container private`,
    );
  }
  const host = readMountInfo("self");
  if (ownRoot(pid)) return mountEntries(pid, readMountInfo(pid), [], host, true);
  const { added, missing } = difference(pid);
  if (missing.length) {
    throw new DumpError(
      `the mount namespace of container ${pid} lacks ${mountName(missing[0])}, which ` +
        `tardigrade's has: a container's mounts are a copy of the tool's with mounts added, or ` +
        `a root of its own`,
    );
  }
  return mountEntries(pid, added, [], host);
}

/**
 * Gives the process `inj` runs in (the container's init, before it forks) a mount namespace of
 * its own, a copy of the tool's with every mount private (nothing it mounts reaches the host),
 * and makes `mounts` in it again: on the copy, or as a root of its own.
 */
export function makeMounts(inj: Injector, mounts: readonly MountEntry[]): void {
  const str = (s: string, at: number) => inj.put(cstring(s), at);
  inj.call("unshare", CLONE.NEWNS);
  inj.call("mount", 0, str("/", 0), 0, MS.REC | MS.PRIVATE, 0);
  const make = (m: MountEntry, prefix: string) => {
    try {
      makeMount(inj, m, prefix, `/proc/${inj.pid}/root`);
    } catch (err) {
      const from = m.bindHost ? ` (bound from ${m.bindFrom} of tardigrade's)` : "";
      throw new RestoreError(
        `cannot mount ${mountName(m)}${from} again: ${(err as Error).message}`,
      );
    }
  };
  if (mounts[0]?.mountPoint !== "/") {
    for (const m of mounts) make(m, "");
    return;
  }
  // Its own root, built where the init sees the tool's /tmp, then made its root.
  const staging = Deno.makeTempDirSync({ prefix: "tardigrade-root-" });
  try {
    for (const m of mounts) make(m, staging);
    inj.call("chdir", str(staging, 0));
    inj.call("pivot_root", str(".", 0), str(".", 0));
    inj.call("umount2", str(".", 0), MNT.DETACH); // the old root, stacked below the new one
    inj.call("chdir", str("/", 0));
  } finally {
    Deno.removeSync(staging);
  }
}

/** A mount as the restore's check compares it: as mountinfo shows it, but its ids and device. */
const shown = (m: MountEntry | MountInfo) =>
  [m.mountPoint, m.fsType, m.source, m.options, m.superOptions, m.root ?? "/"].join(" ");

/**
 * How the mounts of restored container `pid` differ from what its image recorded, or null when
 * they do not: compared as the dump compared them.
 */
export function mountsDiffer(
  pid: number,
  mounts: readonly MountEntry[],
  base: number | "self" = "self",
): string | null {
  let have: string[];
  if (mounts[0]?.mountPoint === "/") have = readMountInfo(pid).map(shown);
  else {
    const { added, missing } = difference(pid, base);
    if (missing.length) return `it lacks the mount on ${missing[0].mountPoint}`;
    have = added.map(shown);
  }
  const want = mounts.map(shown);
  const extra = have.find((h) => !want.includes(h));
  if (extra) return `it has a mount its image does not: ${extra}`;
  const lacking = want.find((w) => !have.includes(w));
  if (lacking) return `it lacks a mount of its image: ${lacking}`;
  return null;
}
