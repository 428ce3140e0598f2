/**
 * How each mount of a container is made again. Of a container's mounts, in the order its
 * mountinfo lists them (a parent before what is mounted on it), one whose file system an earlier
 * mount of the container shows is a bind mount of that one (a masked path, a read-only /proc/sys);
 * one whose file system a mount of the tool's shows is a bind mount of the host's path (a
 * pivot_root'ed rootfs, a cgroup directory): checked at restore, never made; a proc, sysfs,
 * tmpfs (with its files), devpts or mqueue of its own is mounted afresh by the container's init,
 * which gives it the init's namespaces. An overlay of its own is mounted afresh on the same
 * lower, upper and work directories (its contents are theirs), which must exist at restore; in
 * a pivot_root'ed tree of its own it is refused (its directories' paths were the container's at
 * the time). Anything else (a file system mounted nowhere the tool sees) is refused at dump time,
 * naming it. Per-mount flags (read-only, nosuid, nodev, noexec, atime) are given again by a remount.
 */
import { cstring, MS } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { MountEntry } from "../image/schema.ts";
import type { MountInfo } from "../inspect/procfs.ts";
import { initOf } from "./nested_pid.ts";
import { dumpTmpfsFiles, makeTmpfsFiles } from "./tmpfs_files.ts";
import { optionsInside } from "./user.ts";

/** File systems a container's init mounts afresh: their contents are its namespaces'. */
const FRESH = ["proc", "sysfs", "tmpfs", "devpts", "mqueue"];

/** The options of an overlay that name its directories (lowerdir: layers joined by ":"). */
const OVERLAY_DIRS = ["lowerdir", "upperdir", "workdir"];

/** The directories the superblock options of an overlay name, each with its option. */
function overlayDirs(superOptions: string): { option: string; dir: string }[] {
  return superOptions.split(",").flatMap((o) => {
    const [option, value] = [o.slice(0, o.indexOf("=")), o.slice(o.indexOf("=") + 1)];
    if (!OVERLAY_DIRS.includes(option)) return [];
    return value.split(":").filter(Boolean).map((dir) => ({ option, dir }));
  });
}

/** Why overlay `m` of container `pid` cannot be mounted again, or null. */
function overlayRefused(m: MountInfo, pivoted: boolean): string | null {
  if (pivoted) return "in a root of its own, its directories' paths are no longer the same";
  if (m.root !== "/") return "it shows part of the overlay only";
  // Escaped characters (mountinfo's, overlay's) and the layer-by-layer syntax are not read here.
  if (m.superOptions.includes("\\") || /(^|,)(lowerdir|datadir)\+=/.test(m.superOptions)) {
    return "its options name directories in a form tardigrade does not read";
  }
  if (!overlayDirs(m.superOptions).some((d) => d.option === "lowerdir")) {
    return "its options name no lower directory";
  }
  return null;
}

/** `inner` below `outer` (both absolute), as a path relative to `outer`, or null. */
function below(inner: string, outer: string): string | null {
  if (outer === "/") return inner.slice(1);
  if (inner === outer) return "";
  return inner.startsWith(`${outer}/`) ? inner.slice(outer.length + 1) : null;
}

const join = (dir: string, rel: string) => rel ? `${dir === "/" ? "" : dir}/${rel}` : dir;

/** "tmpfs scratch on /mnt (rw,relatime)", for messages. */
export const mountName = (
  m: { fsType: string; source: string; mountPoint: string; options: string },
) => `${m.fsType} ${m.source} on ${m.mountPoint} (${m.options})`;

/** How `mountEntries` reads the mounts of a nested pid namespace's process. */
export interface NestedMountOptions {
  /** How messages name the process (`container 123`, `process 123`). */
  who?: string;
  /**
   * The host pid of the init of pid namespace `shown` (a nested one) when the tree has it and
   * it may mount a proc showing it, else null: such a proc is refused.
   */
  nestedInit?: (shown: string) => number | null;
}

/**
 * The entries of `mounts`, mounts of container `pid` in mountinfo order; `earlier` are those of
 * its mounts made before them (they may be bound from), `host` the tool's mounts (or those of the
 * mount namespace the mounts were added on); `pivoted`: they are a root of the container's own.
 */
export function mountEntries(
  pid: number,
  mounts: readonly MountInfo[],
  earlier: readonly MountInfo[],
  host: readonly MountInfo[],
  pivoted = false,
  nested: NestedMountOptions = {},
): MountEntry[] {
  const who = nested.who ?? `container ${pid}`;
  const made = [...earlier];
  return mounts.map((m) => {
    const entry: MountEntry = {
      mountPoint: m.mountPoint,
      fsType: m.fsType,
      source: m.source,
      options: m.options,
      superOptions: m.superOptions,
      ...(m.root !== "/" ? { root: m.root } : {}),
    };
    const inContainer = made.map((e) => ({
      e,
      rel: e.dev === m.dev ? below(m.root, e.root) : null,
    }))
      .find((x) => x.rel !== null);
    made.push(m);
    if (inContainer) {
      entry.bindFrom = join(inContainer.e.mountPoint, inContainer.rel!);
      return entry;
    }
    const onHost = host.map((h) => ({ h, rel: h.dev === m.dev ? below(m.root, h.root) : null }))
      .find((x) => x.rel !== null);
    if (onHost) {
      entry.bindFrom = join(onHost.h.mountPoint, onHost.rel!);
      entry.bindHost = true;
      return entry;
    }
    if (m.fsType === "overlay") {
      const why = overlayRefused(m, pivoted);
      if (why) {
        throw new DumpError(
          `${who} mounted ${mountName(m)}, which tardigrade cannot mount again: ${why}`,
        );
      }
      return entry;
    }
    if (!FRESH.includes(m.fsType) || m.root !== "/") {
      throw new DumpError(
        `${who} mounted ${mountName(m)}, whose file system tardigrade cannot make ` +
          `again (it is mounted nowhere tardigrade sees, and is not one a container mounts ` +
          `afresh: ${FRESH.join(", ")})`,
      );
    }
    if (m.fsType === "tmpfs") {
      entry.files = dumpTmpfsFiles(`/proc/${pid}/root${m.mountPoint}`, `tmpfs ${m.mountPoint}`);
    }
    if (m.fsType === "devpts") refuseUsedDevpts(pid, m);
    if (m.fsType === "proc") {
      const init = refuseOtherPidNamespace(pid, m, nested);
      if (init !== null) entry.pidNamespace = init;
    }
    return entry;
  });
}

/**
 * Refuses a proc of the container that shows another pid namespace than its init's (one nested
 * in it, mounted by `unshare --pid --fork --mount-proc` in the container's own mount namespace):
 * the restore mounts a proc from the init, which would show the init's; unless `nested` names
 * the init of the one it shows, which mounts it at restore: returns that init's host pid (null
 * for a proc of `pid`'s own).
 */
function refuseOtherPidNamespace(
  pid: number,
  m: MountInfo,
  nested: NestedMountOptions,
): number | null {
  const link = (path: string) => {
    try {
      return Deno.readLinkSync(path);
    } catch {
      return null;
    }
  };
  // Its pid 1 is the init of the namespace it shows.
  const shown = link(`/proc/${pid}/root${m.mountPoint}/1/ns/pid`);
  const own = link(`/proc/${pid}/ns/pid`);
  if (shown === own) return null;
  const mounter = shown === null ? null : nested.nestedInit?.(shown) ?? null;
  if (mounter !== null) return mounter;
  const init = shown === null ? null : initOf(shown);
  throw new DumpError(
    `${nested.who ?? `container ${pid}`} has ${mountName(m)} showing pid namespace ` +
      `${shown ?? "(none)"}, not its own ${own}: a /proc of a nested pid namespace is made ` +
      `again only in a mount namespace of that namespace's own (unshare --pid --fork ` +
      `--mount-proc)` + (init === null ? "" : `; dump its init ${init} as a container instead`),
  );
}

/** Refuses a devpts of the container with terminals in it: they are not made again in it. */
function refuseUsedDevpts(pid: number, m: MountInfo): void {
  const ptys = [...Deno.readDirSync(`/proc/${pid}/root${m.mountPoint}`)]
    .filter((e) => e.name !== "ptmx");
  if (ptys.length) {
    throw new DumpError(
      `container ${pid} has pseudo-terminals in its devpts on ${m.mountPoint} ` +
        `(${ptys.map((e) => e.name).join(", ")}), which tardigrade does not make again there`,
    );
  }
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

/** The per-mount flags of `options`; without relatime or noatime, strictatime. */
export function mountFlags(options: string): number {
  const words = options.split(",");
  const flags = words.reduce((f, o) => f | (OPTION_FLAGS[o] ?? 0), 0);
  return words.includes("relatime") || words.includes("noatime") ? flags : flags | MS.STRICTATIME;
}

/**
 * Mounts `m` again in the process `inj` runs in (the container's init, in its namespaces), at
 * `prefix` + its mount point (`prefix` "" or where its new root is being built); `toolPath` is
 * where the tool reaches what the init sees at "/" (/proc/INIT/root).
 */
export function makeMount(inj: Injector, m: MountEntry, prefix: string, toolPath: string): void {
  const str = (s: string, at: number) => inj.put(cstring(s), at);
  const target = `${prefix}${m.mountPoint === "/" ? "" : m.mountPoint}` || "/";
  const flags = mountFlags(m.options);
  const remount = (extra: number, data: string) =>
    inj.call(
      "mount",
      0,
      str(target, 1024),
      0,
      MS.REMOUNT | extra | flags,
      data ? str(data, 2304) : 0,
    );
  if (m.bindFrom !== undefined) {
    const from = m.bindHost ? m.bindFrom : `${prefix}${m.bindFrom}`;
    inj.call("mount", str(from, 0), str(target, 1024), 0, MS.BIND, 0);
    remount(MS.BIND, ""); // a bind takes its source's flags: its own
    return;
  }
  // Owners (tmpfs uid=, devpts gid=) as the init names them in its user namespace.
  const data = optionsInside(
    inj.pid,
    m.superOptions.split(",").filter((o) => o !== "rw" && o !== "ro"),
  )
    .join(",");
  if (m.fsType === "overlay") {
    const gone = overlayDirs(m.superOptions).find((d) => {
      try {
        return !Deno.statSync(`${toolPath}${prefix}${d.dir}`).isDirectory;
      } catch {
        return true;
      }
    });
    if (gone) throw new Error(`its ${gone.option} ${gone.dir} is not a directory here any more`);
  }
  // Writable until its files are in; else read-only at once when its superblock is: a
  // superblock of another user namespace than the mounter's (sysfs's is the machine's) cannot be
  // made read-only by a remount from inside a container's.
  const readOnlySuper = m.superOptions.split(",").includes("ro");
  const first = m.files || !readOnlySuper ? flags & ~MS.RDONLY : flags | MS.RDONLY;
  inj.call(
    "mount",
    str(m.source, 0),
    str(target, 1024),
    str(m.fsType, 2048),
    first,
    data ? str(data, 2304) : 0,
  );
  if (m.files) makeTmpfsFiles(inj, `${toolPath}${target}`, target, m.files);
  if (readOnlySuper && m.files) remount(MS.RDONLY, data); // the superblock too
  else if (flags & MS.RDONLY && !(first & MS.RDONLY)) remount(MS.BIND, "");
}
