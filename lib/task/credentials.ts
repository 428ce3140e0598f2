/**
 * Credentials: user and group ids (real, effective, saved, filesystem), supplementary groups and
 * capability sets. Restored last in each thread: once they drop, the rest could not be set.
 */
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The credentials of a process, from /proc/PID/status. */
export async function dumpCredentials(proc: Process): Promise<ProcessEntry["creds"]> {
  const status = await proc.status(); // read once: the four below are its lines
  const [uids, gids, groups, caps] = await Promise.all([
    proc.uids(status),
    proc.gids(status),
    proc.groups(status),
    proc.capabilities(status),
  ]);
  return {
    uids: [uids.real, uids.effective, uids.saved, uids.fs],
    gids: [gids.real, gids.effective, gids.saved, gids.fs],
    groups,
    capInh: caps.inheritable,
    capPrm: caps.permitted,
    capEff: caps.effective,
    capBnd: caps.bounding,
    capAmb: caps.ambient,
  };
}

/**
 * Gives the thread `inj` runs in its credentials. A raw setresuid changes only its caller's, so
 * every thread gets them, the main one last.
 */
export function restoreCredentials(inj: Injector, creds: ProcessEntry["creds"]): void {
  const c = creds;
  if ([...c.uids, ...c.gids].every((id) => id === 0) && c.groups.length === 0) return;
  const groups = new Uint32Array(c.groups);
  inj.call("setgroups", groups.length, inj.put(new Uint8Array(groups.buffer), 0));
  inj.call("setresgid", c.gids[0], c.gids[1], c.gids[2]);
  inj.call("setresuid", c.uids[0], c.uids[1], c.uids[2]);
}
