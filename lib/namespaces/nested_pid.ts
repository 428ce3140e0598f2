/**
 * Pid namespaces nested below the one a dump carries (a container's, or the tool's for a plain
 * tree): not dumped yet. Their processes would need a pid at every level (clone3 `set_tid` of
 * several), a /proc of each level and sessions per level, so a dump refuses them; these refusals
 * name the nested namespace, the process holding it (its init, pid 1 there) and the one that
 * made it, read from /proc.
 */
import { DumpError } from "../errors.ts";
import {
  innermostPid,
  namespaceIds,
  readComm,
  readProcLink,
  statusField,
} from "../inspect/procfs.ts";

/** The pid namespace (`pid:[4026532183]`) process `pid` lives in, or its children, or null. */
function pidNamespace(pid: number, which: "pid" | "pid_for_children" = "pid"): string | null {
  try {
    return readProcLink(pid, `ns/${which}`);
  } catch {
    return null; // gone
  }
}

/** `1234 (comm)`, as a refusal names a process. */
function named(pid: number): string {
  try {
    return `${pid} (${readComm(pid)})`;
  } catch {
    return String(pid);
  }
}

/** The host pid of the init (pid 1 inside) of pid namespace `ns`, or null when it has none. */
function initOf(ns: string): number | null {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    try {
      if (pidNamespace(pid) === ns && innermostPid(pid) === 1) return pid;
    } catch { /* gone meanwhile */ }
  }
  return null;
}

/**
 * `pid:[N], held by its init 4321 (sleep), made by 4320 (unshare)`: who keeps `ns` alive (the
 * maker left out when it is `subject`, the process the refusal is about).
 */
function holderOf(ns: string, subject?: number): string {
  const init = initOf(ns);
  if (init === null) return `${ns}, which has no init left`;
  const maker = Number(statusField(init, "PPid") ?? 0);
  return `${ns}, held by its init ${named(init)}` +
    (maker > 0 && maker !== subject ? `, made by ${named(maker)}` : "");
}

const NOT_YET = "nested pid namespaces are not dumped yet";

/**
 * Refuses container init `root` when its pid namespace is nested in another one below the
 * tool's: the restore makes one level only. Names each namespace between it and the tool's.
 */
export function refuseNestedRoot(root: number): void {
  // One level below the tool's: the container's own.
  if (namespaceIds(root).length <= namespaceIds(Deno.pid).length + 1) return;
  const own = pidNamespace(Deno.pid);
  const levels: string[] = [];
  let outermostInit = root;
  // Up from the root: each init's parent lives in the namespace around the init's own.
  for (let p: number | null = root; p !== null && levels.length < 33;) {
    const ns = pidNamespace(p);
    if (ns === null || ns === own) break;
    levels.push(holderOf(ns));
    const init = initOf(ns);
    if (init === null) break;
    outermostInit = init;
    p = Number(statusField(init, "PPid") ?? 0) || null;
  }
  throw new DumpError(
    `process ${named(root)} lives in a pid namespace nested in another one than tardigrade's ` +
      `(innermost first: ${levels.join("; inside ")}): ${NOT_YET}; run tardigrade inside ` +
      `the outer one (nsenter --target ${outermostInit} --all) to dump it as a container of ` +
      `one level`,
  );
}

/**
 * Refuses process `pid` of the tree rooted at `root` when it lives in a pid namespace other than
 * the root's, or made one for its children (`unshare --pid`): a pid namespace nested in the one
 * the dump carries.
 */
export function refuseNestedPidNamespace(pid: number, root: number): void {
  const own = pidNamespace(pid);
  const forChildren = pidNamespace(pid, "pid_for_children");
  if (forChildren !== null && own !== null && forChildren !== own) {
    // One level below the tool's, its init can be dumped as a container.
    const init = own === pidNamespace(Deno.pid) ? initOf(forChildren) : null;
    throw new DumpError(
      `process ${named(pid)} made pid namespace ${holderOf(forChildren, pid)} for its ` +
        `children (unshare --pid), nested in ${
          pid === root ? "its own" : `the pid namespace of the dump's root ${root}`
        }: ${NOT_YET}` + (init === null ? "" : `; dump its init ${init} as a container instead`),
    );
  }
  if (pid === root || own === null || own === pidNamespace(root)) return;
  throw new DumpError(
    `process ${named(pid)} lives in pid namespace ${holderOf(own)}, nested in the pid ` +
      `namespace of the dump's root ${root}: ${NOT_YET}`,
  );
}
