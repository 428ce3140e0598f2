/** The processes of this machine as rows: what `tardigrade ps` and the REPL's `ps()` show. */
import { PAGE_SIZE } from "../../ffi/mod.ts";
import { NoSuchProcess } from "../errors.ts";
import { processes } from "../inspect/process.ts";
import { foreignKinds } from "../namespaces/kinds.ts";
import { cgroupsOf } from "../task/cgroups.ts";
import type { CgroupMembership } from "../image/schema.ts";

/** One row of `ps --json`. */
export interface PsRow {
  /** Process id. */
  pid: number;
  /** Parent pid. */
  ppid: number;
  /** Real user id. */
  uid: number;
  /** Scheduler state letter (R, S, T, Z …). */
  state: string;
  /** Thread count. */
  threads: number;
  /** Resident memory in bytes. */
  rssBytes: number;
  /** Command name. */
  comm: string;
  /** Arguments (empty for a kernel thread). */
  cmdline: string[];
  /** The kinds of namespace it lives in apart from the tool (a container's: pid, mnt …). */
  namespaces: string[];
  /** Its group in every cgroup hierarchy (`hierarchy` "" for cgroup v2); empty when gone. */
  cgroups: CgroupMembership[];
}

/** Lists every process with the fields `ps` shows (kernel threads included). */
export async function psRows(): Promise<PsRow[]> {
  const rows: PsRow[] = [];
  for await (const p of processes()) {
    try {
      const [s, uids, cmdline] = await Promise.all([p.stat(), p.uids(), p.cmdline()]);
      rows.push({
        pid: p.pid,
        ppid: s.ppid,
        uid: uids.real,
        state: s.state,
        threads: s.numThreads,
        rssBytes: Number(s.rss) * PAGE_SIZE, // stat counts pages
        comm: s.comm,
        cmdline,
        namespaces: foreignKinds(p.pid),
        cgroups: cgroupsOf(p.pid),
      });
    } catch (err) {
      if (!(err instanceof NoSuchProcess)) throw err; // exited while we looked
    }
  }
  return rows;
}
