/**
 * A container's namespaces as one image entry (`ProcessEntry.namespaces` of the root): what the
 * dump reads of each kind it carries, made anew by the restore inside the container's init (the
 * restored root) before it forks the rest of the tree, which inherits them; then checked. The
 * tool itself never enters them: everything inside runs as syscalls injected into the init.
 * The user namespace (user.ts) and the pid namespace (pid_namespace.ts) are made by the
 * restore's stub, in this order, so that the user namespace owns every other one.
 */
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { NamespacesEntry } from "../image/schema.ts";
import type { CarriedKind } from "./kinds.ts";
import { dumpMounts, makeMounts, mountsDiffer } from "./mounts.ts";
import { dumpUts, makeUts } from "./uts.ts";
import { dumpIpc, ipcDiffers, makeIpc } from "./ipc.ts";
import { dumpTime, makeTime, timeDiffers } from "./time.ts";
import { dumpNet, makeNet, netDiffers, openNet } from "./net.ts";
import { dumpUser, userDiffers } from "./user.ts";
import { JOINABLE_KINDS, type JoinableKind, joinHandedIn, namespaceOfFd } from "./joined.ts";
import { cgroupDiffers, checkCgroupRoot, makeCgroup } from "./cgroup.ts";

/**
 * The entry of container `pid` (its init, frozen; `inj` runs in it) that lives in namespaces of
 * `kinds`, with the processes `tree`, leaving out those of `joined` (`--external`); refuses what
 * a restore would not make again.
 */
export function dumpNamespaces(
  pid: number,
  inj: Injector,
  kinds: CarriedKind[],
  joined: readonly JoinableKind[] = [],
  tree: readonly number[] = [pid],
): NamespacesEntry {
  const entry: NamespacesEntry = { kinds: [...kinds] };
  if (joined.length) entry.joined = [...joined];
  // Joined or made, its maps say what the ids of the image mean.
  if (kinds.includes("user") || joined.includes("user")) entry.user = dumpUser(pid, tree);
  if (kinds.includes("cgroup")) checkCgroupRoot(pid, inj);
  if (kinds.includes("mnt")) entry.mounts = dumpMounts(pid);
  if (kinds.includes("uts")) entry.uts = dumpUts(inj);
  if (kinds.includes("ipc")) {
    const ipc = dumpIpc(inj);
    if (ipc) entry.ipc = ipc;
  }
  if (kinds.includes("time")) entry.time = dumpTime(pid, inj);
  if (kinds.includes("net")) entry.net = dumpNet(pid);
  return entry;
}

/** A net namespace handed in for a container to join: the tool's fd, and the init's pidfd of the tool. */
export interface JoinedNet {
  /** The tool's descriptor of the namespace. */
  fd: number;
  /** The init's descriptor of a pidfd of the tool, when it has one (in its own pid namespace). */
  toolPidfd?: number;
}

/** The namespaces of kinds an image's container joins, handed in: the tool's descriptors. */
export type JoinedFds = Partial<Record<JoinableKind, number>>;

/**
 * Splits the descriptors handed in (`inheritFds`) into the namespaces a container of the image
 * joins (`net`, `user`) and the external files; refuses one missing, given for nothing, or not a
 * namespace.
 */
export function checkJoined(
  entry: NamespacesEntry | undefined,
  given: Readonly<Record<string, number>>,
): { joined: JoinedFds; files: Record<string, number> } {
  const files = { ...given };
  const joined: JoinedFds = {};
  for (const kind of JOINABLE_KINDS) {
    const fd = files[kind];
    delete files[kind];
    const joins = entry?.joined?.includes(kind) ?? false;
    if (fd === undefined) {
      if (!joins) continue;
      throw new RestoreError(
        `the image's container was dumped with --external ${kind}: hand in the ${kind} ` +
          `namespace it joins (--inherit-fd fd[N]:${kind}, N open on ${
            kind === "net" ? "/run/netns/NAME or " : ""
          }/proc/PID/ns/${kind})`,
      );
    }
    if (!joins) {
      throw new RestoreError(
        `--inherit-fd fd[${fd}]:${kind}: the image joins no ${kind} namespace`,
      );
    }
    if (!namespaceOfFd(fd, kind)) {
      throw new RestoreError(
        `--inherit-fd fd[${fd}]:${kind}: fd ${fd} is not open on a ${kind} namespace`,
      );
    }
    joined[kind] = fd;
  }
  return { joined, files };
}

/**
 * Makes the namespaces of `entry` but user and pid (made already) in the restored init `inj`
 * runs in, before it forks the rest of the tree; joins the net namespace handed in (`joined`).
 */
export function makeNamespaces(inj: Injector, entry: NamespacesEntry, joined?: JoinedNet): void {
  try {
    // Once it is back in its groups (the restore puts it there first): they are its root.
    if (entry.kinds.includes("cgroup")) makeCgroup(inj);
    if (joined) joinHandedIn(inj, joined.fd, "net", joined.toolPidfd);
    if (entry.time) makeTime(inj, entry.time);
    if (entry.net) makeNet(inj, entry.net);
    if (entry.uts) makeUts(inj, entry.uts);
    if (entry.kinds.includes("ipc")) makeIpc(inj, entry.ipc);
    // Last: a sysfs or mqueue it mounts shows the namespaces made above.
    if (entry.kinds.includes("mnt")) makeMounts(inj, entry.mounts ?? []);
  } catch (err) {
    throw new RestoreError(`cannot make the container's namespaces: ${(err as Error).message}`);
  }
}

/**
 * Opens the namespaces of `entry` made by `makeNamespaces` to the outside once the restored tree's
 * connections run again: the outside ends of its veths come up.
 */
export function openNamespaces(entry: NamespacesEntry): void {
  if (entry.net) openNet(entry.net);
}

/**
 * How the namespaces of the restored container `pid` (its init, `inj` running in it) differ
 * from `entry`, or null: its mounts compared as the dump compared them, its names read again.
 */
export function namespacesDiffer(
  pid: number,
  inj: Injector,
  entry: NamespacesEntry,
  joined?: JoinedNet,
  joinedUser?: number,
): string | null {
  if (joined && Deno.readLinkSync(`/proc/${pid}/ns/net`) !== namespaceOfFd(joined.fd, "net")) {
    return "it is not in the net namespace handed in";
  }
  const user = joinedUser !== undefined && namespaceOfFd(joinedUser, "user");
  if (user && Deno.readLinkSync(`/proc/${pid}/ns/user`) !== user) {
    return "it is not in the user namespace handed in";
  }
  const maps = entry.user && userDiffers(pid, entry.user);
  if (maps) return `its user namespace differs: ${maps}`;
  const cgroup = entry.kinds.includes("cgroup") && cgroupDiffers(inj);
  if (cgroup) return `its cgroup namespace differs: ${cgroup}`;
  if (entry.kinds.includes("mnt")) {
    const why = mountsDiffer(pid, entry.mounts ?? []);
    if (why) return `its mount namespace differs: ${why}`;
  }
  if (entry.uts) {
    const now = dumpUts(inj);
    if (now.hostname !== entry.uts.hostname || now.domainname !== entry.uts.domainname) {
      return `its host name is ${now.hostname} (${now.domainname}), not ` +
        `${entry.uts.hostname} (${entry.uts.domainname})`;
    }
  }
  const ipc = entry.kinds.includes("ipc") && ipcDiffers(inj, entry.ipc);
  if (ipc) return `its IPC namespace differs: ${ipc}`;
  const net = entry.net && netDiffers(pid, entry.net);
  if (net) return `its net namespace differs: ${net}`;
  const time = entry.time && timeDiffers(pid, entry.time);
  if (time) return `its time namespace differs: ${time}`;
  return null;
}
