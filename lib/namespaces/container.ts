/**
 * A container's namespaces as one image entry (`ProcessEntry.namespaces` of the root): what the
 * dump reads of each kind it carries, made anew by the restore inside the container's init (the
 * restored root) before it forks the rest of the tree, which inherits them; then checked. The
 * tool itself never enters them: everything inside runs as syscalls injected into the init.
 * The pid namespace itself is made by the restore's stub (pid_namespace.ts).
 */
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { NamespacesEntry } from "../image/schema.ts";
import type { CarriedKind } from "./kinds.ts";
import { dumpMounts, makeMounts, mountsDiffer } from "./mounts.ts";
import { dumpUts, makeUts } from "./uts.ts";
import { checkIpcCarried, makeIpc } from "./ipc.ts";
import { dumpSysvIpc, makeSysvIpc } from "./sysv_ipc.ts";
import { dumpTime, makeTime, timeDiffers } from "./time.ts";
import { dumpNet, makeNet, netDiffers } from "./net.ts";

/**
 * The entry of container `pid` (its init, frozen; `inj` runs in it) that lives in namespaces of
 * `kinds`; refuses what a restore would not make again.
 */
export function dumpNamespaces(pid: number, inj: Injector, kinds: CarriedKind[]): NamespacesEntry {
  const entry: NamespacesEntry = { kinds: [...kinds] };
  if (kinds.includes("mnt")) entry.mounts = dumpMounts(pid);
  if (kinds.includes("uts")) entry.uts = dumpUts(inj);
  if (kinds.includes("ipc")) {
    checkIpcCarried(inj, pid);
    const ipc = dumpSysvIpc(inj);
    if (ipc.msg.length || ipc.sem.length) entry.ipc = ipc;
  }
  if (kinds.includes("time")) entry.time = dumpTime(pid, inj);
  if (kinds.includes("net")) entry.net = dumpNet(pid);
  return entry;
}

/**
 * Makes the namespaces of `entry` but pid (made already) in the restored init `inj` runs in,
 * before it forks the rest of the tree.
 */
export function makeNamespaces(inj: Injector, entry: NamespacesEntry): void {
  try {
    if (entry.time) makeTime(inj, entry.time);
    if (entry.net) makeNet(inj, entry.net);
    if (entry.kinds.includes("mnt")) makeMounts(inj, entry.mounts ?? []);
    if (entry.uts) makeUts(inj, entry.uts);
    if (entry.kinds.includes("ipc")) makeIpc(inj);
    if (entry.ipc) {
      makeSysvIpc(inj, entry.ipc);
      // Read back as the dump read them: ids, owners, messages and values.
      if (sysvText(dumpSysvIpc(inj)) !== sysvText(entry.ipc)) {
        throw new RestoreError("its System V objects did not come back as dumped");
      }
    }
  } catch (err) {
    throw new RestoreError(`cannot make the container's namespaces: ${(err as Error).message}`);
  }
}

/** The System V objects of an entry as comparable text (message types are bigints). */
const sysvText = (ipc: NonNullable<NamespacesEntry["ipc"]>) =>
  JSON.stringify(
    ipc,
    (_k, v) => typeof v === "bigint" ? `${v}n` : v instanceof Uint8Array ? [...v] : v,
  );

/**
 * How the namespaces of the restored container `pid` (its init, `inj` running in it) differ
 * from `entry`, or null: its mounts compared as the dump compared them, its names read again.
 */
export function namespacesDiffer(
  pid: number,
  inj: Injector,
  entry: NamespacesEntry,
): string | null {
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
  const net = entry.net && netDiffers(pid, entry.net);
  if (net) return `its net namespace differs: ${net}`;
  const time = entry.time && timeDiffers(pid, entry.time);
  if (time) return `its time namespace differs: ${time}`;
  return null;
}
