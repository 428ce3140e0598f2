/**
 * A container's user namespace: its uid and gid maps and its setgroups state, read from outside
 * (/proc/PID/uid_map, gid_map, setgroups), and written again by the tool into the fresh one the
 * restore's stub makes (an injected unshare) before it makes the container's pid namespace, so
 * that every namespace made after it (pid by the stub, the others by the init) is owned by it.
 *
 * The credentials of a process inside are kept as the ids it sees (what getuid() says there):
 * the tool reads them by its own view (/proc/PID/status) and translates them through the maps,
 * and the restore gives them with setresuid and the rest injected inside. An id the namespace
 * does not map (the process sees the overflow id 65534) could not be given back and is refused.
 */
import { CLONE, parentNamespaceInode, PR } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import { readProcText, readStatus, threadIds } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { IdRange, ProcessEntry, UserEntry } from "../image/schema.ts";
import { namespaceOf } from "./kinds.ts";
import { joinHandedIn } from "./joined.ts";

/** The id a process sees for one its user namespace does not map (/proc/sys/kernel/overflowuid). */
const OVERFLOW_ID = 65534;

/** The uid and gid maps of a user namespace. */
export interface IdMaps {
  uid: IdRange[];
  gid: IdRange[];
}

/** The ranges of /proc/PID/`file` (uid_map or gid_map), as the tool sees them. */
function readIdMap(pid: number, file: "uid_map" | "gid_map"): IdRange[] {
  return readProcText(pid, file).split("\n").filter((l) => l.trim()).map((l) => {
    const [inside, outside, count] = l.trim().split(/\s+/).map(Number);
    return { inside, outside, count };
  });
}

/** `id` seen from the other side of `map` (`from` the side it is on), null when not mapped. */
function across(map: readonly IdRange[], id: number, from: "inside" | "outside"): number | null {
  const to = from === "inside" ? "outside" : "inside";
  const r = map.find((r) => id >= r[from] && id < r[from] + r.count);
  return r ? r[to] + (id - r[from]) : null;
}

/** Whether process `pid` lives in another user namespace than the tool. */
export function inOwnUserNamespace(pid: number): boolean {
  const ns = namespaceOf(pid, "user");
  return ns !== null && ns !== namespaceOf(Deno.pid, "user");
}

/** The maps through which process `pid` sees ids; null in the tool's user namespace. */
export function idMapsOf(pid: number): IdMaps | null {
  if (!inOwnUserNamespace(pid)) return null;
  return { uid: readIdMap(pid, "uid_map"), gid: readIdMap(pid, "gid_map") };
}

/** The id a process that sees ids through `map` has for the tool's `id` (65534 when unmapped). */
export function insideId(map: readonly IdRange[], id: number): number {
  return across(map, id, "outside") ?? OVERFLOW_ID;
}

/**
 * Mount options as the tool reads them in mountinfo (`uid=100000`), as process `pid` names them
 * inside its user namespace (`uid=0`): a mount it makes takes the ids it sees.
 */
export function optionsInside(pid: number, options: string[]): string[] {
  const maps = idMapsOf(pid);
  if (!maps) return options;
  return options.map((o) => {
    const owner = o.match(/^(uid|gid)=(\d+)$/);
    if (!owner) return o;
    const kind = owner[1] as "uid" | "gid";
    return `${kind}=${insideId(maps[kind], Number(owner[2]))}`;
  });
}

/** The host ids of thread `tid` of `pid` no range of `maps` covers, named ("uid 1000"). */
function unmappedIds(pid: number, tid: number, maps: IdMaps): string[] {
  const status = readStatus(pid, tid);
  const ids = (name: string) => (status.get(name) ?? "").split(/\s+/).filter(Boolean).map(Number);
  const missing = (kind: "uid" | "gid", list: number[]) =>
    [...new Set(list)].filter((id) => across(maps[kind], id, "outside") === null)
      .map((id) => `${kind} ${id}`);
  return [...missing("uid", ids("Uid")), ...missing("gid", [...ids("Gid"), ...ids("Groups")])];
}

/**
 * The user namespace of container `root`, whose processes are `tree`: its maps and setgroups
 * state. Refuses one nested in another than the tool's, and an id of a process or thread that
 * it does not map.
 */
export function dumpUser(root: number, tree: readonly number[]): UserEntry {
  const own = Deno.statSync("/proc/self/ns/user").ino;
  if (parentNamespaceInode(`/proc/${root}/ns/user`) !== BigInt(own ?? -1)) {
    throw new DumpError(
      `process ${root} lives in a user namespace nested in another one than tardigrade's: ` +
        `nested user namespaces are not dumped`,
    );
  }
  const maps = idMapsOf(root)!;
  for (const pid of tree) {
    for (const tid of threadIds(pid)) {
      const missing = unmappedIds(pid, tid, maps);
      if (!missing.length) continue;
      throw new DumpError(
        `process ${pid} (thread ${tid}) has ${missing.join(", ")}, which its user namespace ` +
          `does not map (it sees 65534): a restore could not give ${
            missing.length > 1 ? "them" : "it"
          } back`,
      );
    }
  }
  const setgroups = readProcText(root, "setgroups").trim() === "deny" ? "deny" : "allow";
  return { uidMap: maps.uid, gidMap: maps.gid, setgroups };
}

/** A map as /proc/PID/uid_map takes it: one `inside outside count` line a range. */
const mapText = (map: readonly IdRange[]) =>
  map.map((r) => `${r.inside} ${r.outside} ${r.count}\n`).join("");

/**
 * Moves the seized, stopped stub `stub` into a fresh user namespace with the maps of `user`, or
 * into the one the tool's descriptor `joinFd` is open on (`--external user`: it must have those
 * maps), before it makes the container's pid namespace. `groups` are the supplementary groups
 * (as seen inside) of the container's processes: set first, from outside, when the namespace
 * denies setgroups. The stub then becomes root inside (when root is mapped), as a runtime starts
 * a container, so what its init makes (System V objects) is root's.
 */
export function enterUserNamespace(
  stub: Injector,
  user: UserEntry,
  groups: number[],
  joinFd?: number,
): void {
  try {
    if (user.setgroups === "deny") {
      const outside = groups.map((g) => across(user.gidMap, g, "inside")!);
      const list = new Uint32Array(outside);
      stub.call("setgroups", list.length, stub.put(new Uint8Array(list.buffer), 0));
    }
    if (joinFd === undefined) {
      stub.call("unshare", CLONE.NEWUSER);
      const write = (file: string, text: string) =>
        Deno.writeTextFileSync(`/proc/${stub.pid}/${file}`, text);
      write("setgroups", user.setgroups); // before gid_map, which it decides
      write("uid_map", mapText(user.uidMap));
      write("gid_map", mapText(user.gidMap));
    } else {
      joinHandedIn(stub, joinFd, "user");
      const why = userDiffers(stub.pid, user);
      if (why) throw new RestoreError(`the one handed in is not the image's: ${why}`);
    }
    if (across(user.gidMap, 0, "inside") !== null) stub.call("setresgid", 0, 0, 0);
    if (across(user.uidMap, 0, "inside") !== null) stub.call("setresuid", 0, 0, 0);
    // A change of uid made it undumpable: its copies could not take each other's files.
    stub.call("prctl", PR.SET_DUMPABLE, 1, 0, 0, 0);
  } catch (err) {
    throw new RestoreError(`cannot make the container's user namespace: ${(err as Error).message}`);
  }
}

/**
 * Why the processes of `entries`, a container whose user namespace denies setgroups, cannot be
 * given their groups: they all inherit the stub's, so every thread must have the root's.
 * Undefined when they can.
 */
export function groupsProblem(user: UserEntry, entries: ProcessEntry[]): string | undefined {
  if (user.setgroups !== "deny" || !entries.length) return undefined;
  const text = (g: number[]) => [...g].sort((a, b) => a - b).join(",");
  const want = text(entries[0].creds.groups);
  for (const p of entries) {
    for (const t of p.threads) {
      const groups = text((t.creds ?? p.creds).groups);
      if (groups === want) continue;
      return `process ${p.pid} (thread ${t.tid}) has groups [${groups}], the container's ` +
        `init [${want}]: in a user namespace that denies setgroups they all have the same`;
    }
  }
  return undefined;
}

/** How the user namespace of restored process `pid` differs from `user`, or null. */
export function userDiffers(pid: number, user: UserEntry): string | null {
  const maps = idMapsOf(pid);
  if (!maps) return "it is in tardigrade's own user namespace";
  if (mapText(maps.uid) !== mapText(user.uidMap)) return `its uid map is ${mapText(maps.uid)}`;
  if (mapText(maps.gid) !== mapText(user.gidMap)) return `its gid map is ${mapText(maps.gid)}`;
  const setgroups = readProcText(pid, "setgroups").trim();
  return setgroups === user.setgroups ? null : `its setgroups is ${setgroups}`;
}
