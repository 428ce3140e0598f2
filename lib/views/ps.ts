/** The processes of this machine as rows: what `tardigrade ps` and the REPL's `ps()` show. */
import { PAGE_SIZE } from "../../ffi/mod.ts";
import { NoSuchProcess } from "../errors.ts";
import { type ImageProcess, memoryOf, type ProcessImage } from "../inspect/image_process.ts";
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
  /**
   * Scheduler state letter (R, S, T, Z …). An image records only whether a process was stopped
   * by job control: `T` then, else `-`.
   */
  state: string;
  /** Thread count. */
  threads: number;
  /** Resident memory in bytes (of a process in an image: the bytes of the pages it holds). */
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

/**
 * Lists every process with the fields `ps` shows (kernel threads included), or with `image`
 * every process of that image (its tree, parents first).
 */
export async function psRows(image?: ProcessImage): Promise<PsRow[]> {
  if (image) {
    // A container's namespaces are every process's of it: the root's entry records them.
    const kinds = image.root.entry.namespaces?.kinds ?? [];
    return image.processes().map((p) => imagePsRow(p, kinds));
  }
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

/** The `ps` row of a process of an image whose container namespaces are `kinds`. */
function imagePsRow(p: ImageProcess, kinds: string[]): PsRow {
  const e = p.entry;
  let stored = 0;
  for (const a of memoryOf(p).areas) {
    for (const piece of a.pieces) stored += Number(piece.end - piece.start);
  }
  return {
    pid: e.pid,
    ppid: e.ppid,
    uid: e.creds.uids[0],
    state: e.stopped ? "T" : "-",
    threads: e.threads.length,
    rssBytes: stored,
    comm: e.comm,
    cmdline: e.cmdline,
    namespaces: [...kinds],
    cgroups: e.cgroups ?? [],
  };
}
