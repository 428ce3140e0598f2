/**
 * A container's namespaces as one image entry (`ProcessEntry.namespaces` of the root): what the
 * dump reads of each kind it carries, made anew by the restore inside the container's init (the
 * restored root) before it forks the rest of the tree, which inherits them; then checked. The
 * tool itself never enters them: everything inside runs as syscalls injected into the init.
 * The pid namespace itself is made by the restore's stub (pid_namespace.ts).
 */
import { CLONE } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { NamespacesEntry } from "../image/schema.ts";
import type { CarriedKind } from "./kinds.ts";
import { dumpMounts, makeMounts, mountsDiffer } from "./mounts.ts";
import { dumpUts, makeUts } from "./uts.ts";
import { dumpIpc, ipcDiffers, makeIpc } from "./ipc.ts";
import { dumpTime, makeTime, timeDiffers } from "./time.ts";
import { dumpNet, makeNet, netDiffers, openNet } from "./net.ts";

/**
 * The entry of container `pid` (its init, frozen; `inj` runs in it) that lives in namespaces of
 * `kinds`; refuses what a restore would not make again.
 */
export function dumpNamespaces(
  pid: number,
  inj: Injector,
  kinds: CarriedKind[],
  externalNet = false,
): NamespacesEntry {
  const entry: NamespacesEntry = { kinds: [...kinds] };
  if (externalNet) entry.joined = ["net"];
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

/**
 * Splits the descriptors handed in (`inheritFds`) into the net namespace a container of the
 * image joins (`net`) and the external files; refuses one missing, given for nothing, or not a
 * net namespace.
 */
export function checkJoined(
  entry: NamespacesEntry | undefined,
  given: Readonly<Record<string, number>>,
): { net?: number; files: Record<string, number> } {
  const { net, ...files } = given;
  const joins = entry?.joined?.includes("net") ?? false;
  if (net === undefined) {
    if (!joins) return { files };
    throw new RestoreError(
      `the image's container was dumped with --external net: hand in the net namespace it ` +
        `joins (--inherit-fd fd[N]:net, N open on /run/netns/NAME or /proc/PID/ns/net)`,
    );
  }
  if (!joins) {
    throw new RestoreError(`--inherit-fd fd[${net}]:net: the image joins no net namespace`);
  }
  if (!netnsOfFd(net)) {
    throw new RestoreError(`--inherit-fd fd[${net}]:net: fd ${net} is not open on a net namespace`);
  }
  return { net, files };
}

/**
 * The namespace (`net:[N]`) tool descriptor `fd` is open on (through /proc/PID/ns/net or a bind
 * mount of it, as /run/netns/NAME), or null when it is not a namespace; setns then refuses one of
 * another kind.
 */
function netnsOfFd(fd: number): string | null {
  try {
    const st = Deno.statSync(`/proc/self/fd/${fd}`);
    return st.dev === Deno.statSync("/proc/self/ns/net").dev ? `net:[${st.ino}]` : null;
  } catch {
    return null;
  }
}

/** Moves the process `inj` runs in into the net namespace handed in as `joined`. */
function joinNet(inj: Injector, joined: JoinedNet): void {
  const pidfd = joined.toolPidfd ?? inj.call("pidfd_open", Deno.pid, 0);
  try {
    const fd = inj.call("pidfd_getfd", pidfd, joined.fd, 0);
    try {
      inj.call("setns", fd, CLONE.NEWNET);
    } finally {
      inj.call("close", fd);
    }
  } finally {
    if (joined.toolPidfd === undefined) inj.call("close", pidfd);
  }
}

/**
 * Makes the namespaces of `entry` but pid (made already) in the restored init `inj` runs in,
 * before it forks the rest of the tree; joins the net namespace handed in (`joined`).
 */
export function makeNamespaces(inj: Injector, entry: NamespacesEntry, joined?: JoinedNet): void {
  try {
    if (joined) joinNet(inj, joined);
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
): string | null {
  if (joined && Deno.readLinkSync(`/proc/${pid}/ns/net`) !== netnsOfFd(joined.fd)) {
    return "it is not in the net namespace handed in";
  }
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
