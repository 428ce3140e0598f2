/**
 * Pids inside a container's pid namespace. The tool reads the processes from outside, by their
 * host pids; the image keeps the ids the processes see (the container's init is 1), which the
 * restore gives them again inside a fresh pid namespace. Every id is read at the level of the
 * container's pid namespace from /proc/PID/status (NSpid, NSsid, NSpgid list an id for each level
 * from the tool's down): a session or process group led by a process outside the namespace is 0
 * there, as getsid and getpgid say inside.
 */
import { DumpError } from "../errors.ts";
import type { FrozenProcess } from "../ptrace/freeze.ts";
import { namespaceIds } from "../inspect/procfs.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { translateNestedMounts } from "./nested_mounts.ts";

/** Host pid or tid → the id the container's processes see. */
export class InnerPids {
  readonly #inner = new Map<number, number>();
  /** Host pid → its session and process group as it sees them (and its zombies theirs). */
  readonly #groups = new Map<number, { sid: number; pgid: number }>();

  /**
   * Reads the inner id of every process, thread and zombie child of the frozen `tree`, whose root
   * is its pid namespace's init, with the session and group of every process and zombie.
   */
  static read(tree: readonly FrozenProcess[], zombiesOf: (pid: number) => number[]): InnerPids {
    const ids = new InnerPids();
    // The root's own namespace, the container's: ids at other levels are not what it sees.
    const level = namespaceIds(tree[0].pid).length - 1;
    const read = (host: number) => {
      const inner = namespaceIds(host)[level];
      if (inner !== undefined) ids.#inner.set(host, inner);
    };
    for (const f of tree) {
      for (const t of f.threads) read(t.tid);
      for (const host of [f.pid, ...zombiesOf(f.pid)]) {
        read(host);
        const sid = namespaceIds(host, "NSsid")[level];
        const pgid = namespaceIds(host, "NSpgid")[level];
        if (sid !== undefined && pgid !== undefined) ids.#groups.set(host, { sid, pgid });
      }
    }
    return ids;
  }

  /** The inner id of host pid or tid `host`; `what` names it in the refusal when unknown. */
  of(host: number, what: string): number {
    const inner = this.#inner.get(host);
    if (inner === undefined) {
      throw new DumpError(`${what} ${host} is not in the container's pid namespace`);
    }
    return inner;
  }

  /** Rewrites the ids of `e` (read by host pid) into the ids its processes see. */
  translate(e: ProcessEntry, isRoot: boolean): void {
    const where = `process ${e.pid}`;
    const pid = (id: number, what: string) => this.of(id, `${what} of ${where}`);
    const groupsOf = (id: number, what: string) => {
      const g = this.#groups.get(id);
      if (!g) throw new DumpError(`${what} ${id} of ${where} was not asked its session`);
      return g;
    };
    const groups = groupsOf(e.pid, "process");
    e.ppid = isRoot ? 0 : pid(e.ppid, "the parent");
    for (const t of e.threads) t.tid = pid(t.tid, "thread");
    for (const z of e.zombies ?? []) {
      const g = groupsOf(z.pid, "zombie child");
      z.pid = pid(z.pid, "zombie child");
      z.sid = g.sid;
      z.pgid = g.pgid;
      if (z.thread !== undefined) z.thread = pid(z.thread, "the thread forking a zombie");
    }
    for (const t of e.posixTimers ?? []) t.targetTid = pid(t.targetTid, "a timer's thread");
    if (e.sharesFilesWith !== undefined) e.sharesFilesWith = pid(e.sharesFilesWith, "a sharer");
    if (e.sharesFsWith !== undefined) e.sharesFsWith = pid(e.sharesFsWith, "a sharer");
    if (e.nestedPid) e.nestedPid.init = pid(e.nestedPid.init, "the nested pid namespace's init");
    if (e.childPidNamespace !== undefined) {
      e.childPidNamespace = pid(e.childPidNamespace, "the children's pid namespace's init");
    }
    translateNestedMounts(e, (p) => pid(p, "the init mounting a nested /proc"));
    for (const f of e.files) {
      // Read by the tool in its own pid namespace: not translated yet, so refused.
      if (f.kind === "pidfd" || (f.owner && f.owner.pid !== 0)) {
        throw new DumpError(
          `${where} has ${f.kind === "pidfd" ? "a pidfd" : "an open file with an I/O owner"} ` +
            `(file ${f.id}) inside a pid namespace, which tardigrade does not dump yet`,
        );
      }
    }
    e.sid = groups.sid;
    e.pgid = groups.pgid;
    e.pid = pid(e.pid, "process");
  }
}
