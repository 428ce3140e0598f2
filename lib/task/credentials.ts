/**
 * Credentials: user and group ids (real, effective, saved, filesystem), supplementary groups and
 * capability sets, per thread (a raw setresuid or capset changes its caller's only). Restored
 * late in each thread: once they drop, the rest could not be set.
 */
import type { Credentials } from "../image/schema.ts";
import { hexMask, readStatus } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";
import { idMapsOf, insideId } from "../namespaces/user.ts";
import {
  currentCapabilities,
  dumpSecurebits,
  KEEP_CAPABILITIES_ACROSS_SETUID,
  limitBoundingSet,
  raiseAmbient,
  setCapabilitySets,
  setSecurebits,
} from "./capabilities.ts";

/**
 * The credentials of thread `tid` of process `pid` (the main thread by default), from /proc: the
 * ids it sees, translated through the maps of its user namespace when that is not the tool's.
 */
export function dumpCredentials(pid: number, tid = pid): Credentials {
  const status = readStatus(pid, tid);
  const maps = idMapsOf(pid);
  const ids = (name: string, kind: "uid" | "gid") =>
    (status.get(name) ?? "").split(/\s+/).filter(Boolean).map(Number)
      .map((id) => maps ? insideId(maps[kind], id) : id);
  return {
    uids: ids("Uid", "uid"),
    gids: ids("Gid", "gid"),
    groups: ids("Groups", "gid"),
    capInh: hexMask(status.get("CapInh")),
    capPrm: hexMask(status.get("CapPrm")),
    capEff: hexMask(status.get("CapEff")),
    capBnd: hexMask(status.get("CapBnd")),
    capAmb: hexMask(status.get("CapAmb")),
  };
}

const same = (x: readonly number[], y: readonly number[]) =>
  x.length === y.length && x.every((v, i) => v === y[i]);

const sameGroups = (a: readonly number[], b: readonly number[]) =>
  same([...a].sort((x, y) => x - y), [...b].sort((x, y) => x - y));

function sameCredentials(a: Credentials, b: Credentials): boolean {
  return same(a.uids, b.uids) && same(a.gids, b.gids) && sameGroups(a.groups, b.groups) &&
    a.capInh === b.capInh && a.capPrm === b.capPrm && a.capEff === b.capEff &&
    a.capBnd === b.capBnd && a.capAmb === b.capAmb;
}

/**
 * Gives the thread `inj` runs in its credentials and securebits. It starts as the tool's root
 * with every capability the tool has, and each step needs what a later one takes away:
 * - groups (unless they are the thread's already: a user namespace may deny setgroups) and gids
 *   first (CAP_SETGID);
 * - the inheritable set, then the ambient set (a capability is raised only while permitted and
 *   inheritable), then the bounding set (CAP_SETPCAP; no new inheritable outside it after);
 * - the uids under SECBIT_NO_SETUID_FIXUP, so leaving uid 0 clears no capability yet;
 * - the securebits (CAP_SETPCAP), then the three sets, which only shrink (ambient follows them).
 */
export function restoreCredentials(
  inj: Injector,
  c: Credentials,
  securebits = 0,
  securebitsNow = dumpSecurebits(inj),
): void {
  // Often what the thread has already (a root program's are the tool's): read from outside, and
  // the securebits (`securebitsNow`, asked in the thread), instead of the fifteen or more calls.
  const now = dumpCredentials(inj.pid, inj.tid);
  if (sameCredentials(now, c) && securebitsNow === securebits) return;
  if (!sameGroups(now.groups, c.groups)) {
    const groups = new Uint32Array(c.groups);
    inj.call("setgroups", groups.length, inj.put(new Uint8Array(groups.buffer), 0));
  }
  inj.call("setresgid", c.gids[0], c.gids[1], c.gids[2]);
  inj.call("setfsgid", c.gids[3]);

  setCapabilitySets(inj, { ...currentCapabilities(inj), inheritable: c.capInh });
  raiseAmbient(inj, c.capAmb);
  limitBoundingSet(inj, c.capBnd);

  setSecurebits(inj, KEEP_CAPABILITIES_ACROSS_SETUID);
  inj.call("setresuid", c.uids[0], c.uids[1], c.uids[2]);
  inj.call("setfsuid", c.uids[3]);

  setSecurebits(inj, securebits);
  setCapabilitySets(inj, { effective: c.capEff, permitted: c.capPrm, inheritable: c.capInh });
}
