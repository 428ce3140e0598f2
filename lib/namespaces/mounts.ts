/**
 * The mount namespace of a container, as far as it is carried: a copy of the tool's namespace in
 * which the container mounted a proc of its own on /proc (`unshare --mount-proc`). The dump
 * compares the container's mounts with the tool's (as multisets of mountinfo lines without their
 * ids) and records those the container added; any other difference (a mount it removed, moved or
 * made otherwise, another file system, shared propagation) is refused, naming the mount. The
 * restore makes a namespace of its own in the container's init, every mount private, and mounts
 * the recorded ones again; the restore's check compares the result the same way.
 */
import { CLONE, cstring, MS } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { MountEntry } from "../image/schema.ts";
import { type MountInfo, readMountInfo } from "../inspect/procfs.ts";

/** A mount with what two mounts compare: everything but the ids (the copy has its own). */
interface MountLine extends MountInfo {
  key: string;
}

function mountLines(pid: number | "self"): MountLine[] {
  return readMountInfo(pid).map((m) => ({
    ...m,
    key: [m.dev, m.root, m.mountPoint, m.options, m.fsType, m.source, m.superOptions].join(" "),
  }));
}

/** The lines of `a` not in `b`, each line of `b` matching one of `a` at most. */
function minus(a: MountLine[], b: MountLine[]): MountLine[] {
  const left = new Map<string, number>();
  for (const l of b) left.set(l.key, (left.get(l.key) ?? 0) + 1);
  return a.filter((l) => {
    const n = left.get(l.key) ?? 0;
    if (n > 0) left.set(l.key, n - 1);
    return n === 0;
  });
}

/** The mounts process `pid` has that the tool has not, and those the tool has that it lacks. */
function difference(pid: number): { added: MountLine[]; missing: MountLine[] } {
  const theirs = mountLines(pid), ours = mountLines("self");
  return { added: minus(theirs, ours), missing: minus(ours, theirs) };
}

const isProcMount = (m: MountEntry) =>
  m.fsType === "proc" && m.source === "proc" && m.mountPoint === "/proc";

/**
 * The mounts container `pid` added to a copy of the tool's mount namespace, to make again; refuses
 * a difference the restore would not make again, naming the mount.
 */
export function dumpMounts(pid: number): MountEntry[] {
  const { added, missing } = difference(pid);
  const name = (m: MountLine) => `${m.fsType} ${m.source} on ${m.mountPoint} (${m.options})`;
  if (missing.length) {
    throw new DumpError(
      `the mount namespace of container ${pid} lacks ${name(missing[0])}, which tardigrade's ` +
        `has: a container's mounts other than its own /proc are not dumped yet`,
    );
  }
  const other = added.find((m) => !isProcMount(m));
  if (other) {
    throw new DumpError(
      `container ${pid} mounted ${name(other)}: a container's mounts other than its own ` +
        `/proc are not dumped yet`,
    );
  }
  const propagated = mountLines(pid).find((m) => m.propagation !== "");
  if (propagated) {
    throw new DumpError(
      `mount ${propagated.mountPoint} of container ${pid} propagates (${propagated.propagation}): ` +
        `a restore makes every mount of the container private`,
    );
  }
  return added.map(({ mountPoint, fsType, source, options, superOptions }) => ({
    mountPoint,
    fsType,
    source,
    options,
    superOptions,
  }));
}

/** mount(2) flags of per-mount options as mountinfo shows them. */
const OPTION_FLAGS: Record<string, number> = {
  ro: MS.RDONLY,
  nosuid: MS.NOSUID,
  nodev: MS.NODEV,
  noexec: MS.NOEXEC,
  noatime: MS.NOATIME,
  nodiratime: MS.NODIRATIME,
  relatime: MS.RELATIME,
};

/**
 * Gives the process `inj` runs in (the container's init, before it forks) a mount namespace of
 * its own, a copy of the tool's with every mount private (nothing it mounts reaches the host),
 * and mounts `mounts` in it again.
 */
export function makeMounts(inj: Injector, mounts: readonly MountEntry[]): void {
  const str = (s: string, at: number) => inj.put(cstring(s), at);
  inj.call("unshare", CLONE.NEWNS);
  inj.call("mount", 0, str("/", 0), 0, MS.REC | MS.PRIVATE, 0);
  for (const m of mounts) {
    const flags = m.options.split(",").reduce((f, o) => f | (OPTION_FLAGS[o] ?? 0), 0);
    const data = m.superOptions.split(",").filter((o) => o !== "rw" && o !== "ro").join(",");
    inj.call(
      "mount",
      str(m.source, 0),
      str(m.mountPoint, 1024),
      str(m.fsType, 2048),
      flags,
      data ? str(data, 2304) : 0,
    );
  }
}

/**
 * How the mounts of restored container `pid` differ from what its image recorded, or null when
 * they do not: compared as the dump compared them.
 */
export function mountsDiffer(pid: number, mounts: readonly MountEntry[]): string | null {
  const { added, missing } = difference(pid);
  if (missing.length) return `it lacks the mount on ${missing[0].mountPoint}`;
  const want = mounts.map((m) => JSON.stringify(m));
  const have = added.map(({ mountPoint, fsType, source, options, superOptions }) =>
    JSON.stringify({ mountPoint, fsType, source, options, superOptions })
  );
  const extra = have.find((h) => !want.includes(h));
  if (extra) return `it has a mount its image does not: ${extra}`;
  const lacking = want.find((w) => !have.includes(w));
  if (lacking) return `it lacks a mount of its image: ${lacking}`;
  return null;
}
