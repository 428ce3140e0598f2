/**
 * A container's cgroup namespace (`unshare --cgroup`): rooted at the groups its init was in when
 * it was made, so that /proc/self/cgroup inside names them "/". What a process sees there is
 * asked of the container's init (an injected read of its /proc/self/cgroup, which the kernel
 * writes as its reader sees it). The restore makes a fresh one in the init once the init is back
 * in its groups (task/cgroups.ts, under the rules stated there: a group the dumping tool shared is
 * the restoring tool's) and before it forks the rest of the tree, so it is rooted at the same
 * groups and the tree inside reads the same.
 */
import { AT_FDCWD, CLONE, cstring, O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";

/** More than /proc/self/cgroup holds on a machine with every v1 controller mounted apart. */
const CGROUP_TEXT_MAX = 8192;

/** Each hierarchy's group the process `inj` runs in sees in its /proc/self/cgroup. */
function cgroupsSeen(inj: Injector): { hierarchy: string; path: string }[] {
  const fd = inj.call(
    "openat",
    AT_FDCWD,
    inj.put(cstring("/proc/self/cgroup"), 0),
    O.RDONLY | O.CLOEXEC,
    0,
  );
  let text: string;
  try {
    const buffer = inj.put(new Uint8Array(CGROUP_TEXT_MAX), 64);
    const n = Number(inj.call("read", fd, buffer, CGROUP_TEXT_MAX));
    text = new TextDecoder().decode(inj.mem.read(buffer, n));
  } finally {
    inj.call("close", fd);
  }
  return text.split("\n").filter(Boolean).map((line) => {
    const [, hierarchy, ...path] = line.split(":");
    return { hierarchy: hierarchy || "cgroup2", path: path.join(":") };
  });
}

/**
 * Why the process `inj` runs in is not at the root of its cgroup namespace in every hierarchy
 * (naming the first where it sees another group than "/"), or null.
 */
function offRoot(inj: Injector): string | null {
  const off = cgroupsSeen(inj).find((g) => g.path !== "/");
  return off ? `in hierarchy ${off.hierarchy} it is in group ${off.path} of it` : null;
}

/**
 * Refuses container init `pid` (`inj` runs in it) when it is not at the root of its cgroup
 * namespace: the restore makes the namespace where the init is.
 */
export function checkCgroupRoot(pid: number, inj: Injector): void {
  let why: string | null;
  try {
    why = offRoot(inj);
  } catch (err) {
    throw new DumpError(
      `cannot read what container ${pid} sees of its cgroups (its /proc/self/cgroup): ` +
        (err as Error).message,
    );
  }
  if (why) {
    throw new DumpError(
      `process ${pid} is not at the root of its cgroup namespace (${why}): a restore makes ` +
        `the namespace at the groups the container's init is in`,
    );
  }
}

/** Gives the process `inj` runs in a cgroup namespace rooted at the groups it is in. */
export function makeCgroup(inj: Injector): void {
  inj.call("unshare", CLONE.NEWCGROUP);
}

/** How the cgroup namespace of the restored init (`inj` runs in it) differs, or null. */
export function cgroupDiffers(inj: Injector): string | null {
  const why = offRoot(inj);
  return why && `it is not at the root of its cgroup namespace: ${why}`;
}
