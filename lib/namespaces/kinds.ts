/**
 * Which namespaces a process lives in, and which of them a dump carries. A process whose
 * namespaces differ from the tool's is (part of) a container: the dump takes its pid, mount, UTS,
 * IPC, time, net, user and cgroup namespaces with it, and the restore makes fresh ones of the
 * same kinds. Every other kind, a process of the tree in a namespace of its own below the root's
 * (a nested one, but a pid namespace and a mount namespace made with it), and a namespace that a process outside the dump also lives in are refused,
 * naming them.
 */
import { DumpError } from "../errors.ts";
import type { JoinableKind } from "./joined.ts";
import { checkNestedPidNamespace, refuseNestedRoot } from "./nested_pid.ts";
import {
  innermostPid,
  processState,
  readComm,
  readMountInfo,
  readProcLink,
  statusField,
} from "../inspect/procfs.ts";

/** Every kind of namespace a process lives in (the names of /proc/PID/ns). */
export const NAMESPACE_KINDS = [
  "pid",
  "mnt",
  "uts",
  "ipc",
  "net",
  "user",
  "time",
  "cgroup",
] as const;

/** A kind of namespace. */
export type NamespaceKind = typeof NAMESPACE_KINDS[number];

/** The kinds a dump takes and a restore makes anew. */
export const CARRIED_KINDS = [
  "pid",
  "mnt",
  "uts",
  "ipc",
  "time",
  "net",
  "user",
  "cgroup",
] as const;

/** A kind of namespace a dump takes. */
export type CarriedKind = typeof CARRIED_KINDS[number];

/** The namespace of kind `kind` process `pid` lives in (`uts:[4026532183]`), null if unknown. */
export function namespaceOf(
  pid: number,
  kind: NamespaceKind | "time_for_children",
): string | null {
  try {
    return readProcLink(pid, `ns/${kind}`);
  } catch {
    return null; // gone (the freeze says so) or a kind this kernel lacks
  }
}

/** The kinds in which process `pid` lives in other namespaces than the tool. */
export function foreignKinds(pid: number): NamespaceKind[] {
  return NAMESPACE_KINDS.filter((k) => {
    const ns = namespaceOf(pid, k);
    return ns !== null && ns !== namespaceOf(Deno.pid, k);
  });
}

const isCarried = (k: NamespaceKind): k is CarriedKind =>
  (CARRIED_KINDS as readonly string[]).includes(k);

/**
 * The namespaces the dump of the tree rooted at `root` makes anew (empty: it lives in the tool's);
 * those of `joined` (`--external net`, `--external user`) are left out, to be joined at restore.
 * Refuses a kind not carried, and a pid namespace whose init is not `root`: the restore makes the
 * root pid 1 of a fresh one, which only the container's init may be.
 */
export function containerKinds(root: number, joined: readonly JoinableKind[] = []): CarriedKind[] {
  let kinds = foreignKinds(root);
  for (const kind of joined) {
    if (!kinds.includes(kind)) {
      throw new DumpError(
        `--external ${kind}: process ${root} lives in tardigrade's own ${kind} namespace, which ` +
          `a restore is in anyway`,
      );
    }
  }
  const userns = kinds.includes("user");
  kinds = kinds.filter((k) => !(joined as readonly string[]).includes(k)); // joined, not made
  const refused = kinds.filter((k) => !isCarried(k));
  if (refused.length) {
    throw new DumpError(
      `process ${root} lives in ${refused.length > 1 ? "namespaces" : "a namespace"} of its ` +
        `own (${refused.join(", ")}), which tardigrade does not dump yet (it carries pid, mnt, ` +
        `uts, ipc, time, net, user and cgroup namespaces); run tardigrade ` +
        `inside them (nsenter --target ${root} --all) to dump it as a plain process`,
    );
  }
  if (userns && !kinds.includes("pid")) {
    throw new DumpError(
      `process ${root} lives in a user namespace of its own but in tardigrade's pid namespace: ` +
        `a user namespace is carried with the container's pid namespace (unshare --user --pid ` +
        `--fork), whose processes the restore makes inside it`,
    );
  }
  if (userns && joined.includes("net")) {
    throw new DumpError(
      `--external net: process ${root} lives in a user namespace of its own, from which a ` +
        `restore cannot join a net namespace of tardigrade's`,
    );
  }
  if (kinds.includes("pid")) {
    refuseNestedRoot(root);
    const inner = innermostPid(root);
    if (inner !== 1) {
      throw new DumpError(
        `process ${root} is pid ${inner} of its pid namespace, not its init: a container is ` +
          `dumped from its init (pid 1 inside), which a restore makes again first`,
      );
    }
  }
  return kinds.filter(isCarried);
}

/** The pid namespace process `pid` makes its children in, null if unknown. */
function readPidForChildren(pid: number): string | null {
  try {
    return readProcLink(pid, "ns/pid_for_children");
  } catch {
    return null;
  }
}

/**
 * Refuses process `pid` of the tree when one of its namespaces is not the root's: it made a
 * namespace of its own inside the container (or joined another one), which is not carried yet.
 */
export function checkSameNamespaces(pid: number, root: number): void {
  const forChildren = namespaceOf(pid, "time_for_children");
  if (forChildren !== null && forChildren !== namespaceOf(pid, "time")) {
    throw new DumpError(
      `process ${pid} made a time namespace for its children (unshare --time without ` +
        `entering it), which tardigrade does not dump`,
    );
  }
  checkNestedPidNamespace(pid, root);
  if (pid === root) return;
  // It lives in a nested pid namespace, or made one for its children.
  const rootPid = namespaceOf(root, "pid");
  const nestedPid = namespaceOf(pid, "pid") !== rootPid ||
    readPidForChildren(pid) !== rootPid;
  for (const k of NAMESPACE_KINDS) {
    if (k === "pid") continue; // a nested one is carried (nested_pid.ts)
    const ns = namespaceOf(pid, k);
    if (ns !== null && ns !== namespaceOf(root, k)) {
      // Made with the nested pid namespace (unshare --mount-proc): nested_mounts.ts.
      if (nestedPid && k === "mnt") continue;
      throw new DumpError(
        `process ${pid} lives in another ${k} namespace than the root of the dump (${root}): ` +
          `namespaces made inside a container are not dumped yet`,
      );
    }
  }
}

/**
 * Refuses a container whose namespaces (of `kinds`) a process outside the dump (`tree`) lives in
 * too: the restore would part them. The root's parent may share those other than pid: it is what
 * made the container (`unshare --fork`), waiting for its child; it keeps the originals.
 */
export function refuseOutsideHolders(root: number, tree: readonly number[], kinds: CarriedKind[]) {
  if (!kinds.length) return;
  const inTree = new Set(tree);
  const parent = Number(statusField(root, "PPid") ?? 0);
  const wanted = new Map(kinds.map((k) => [k, namespaceOf(root, k)]));
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const pid = Number(e.name);
    // A zombie holds nothing but its pid: the dump's are zombie children of the tree.
    if (inTree.has(pid) || pid === Deno.pid || processState(pid) === "Z") continue;
    for (const [k, ns] of wanted) {
      if (k !== "pid" && pid === parent) continue;
      if (namespaceOf(pid, k) !== ns) continue;
      let comm = "?";
      try {
        comm = readComm(pid);
      } catch { /* gone meanwhile */ }
      throw new DumpError(
        `the ${k} namespace of container ${root} is also held by process ${pid} (${comm}), ` +
          `which is not in the dump: a restore would part them${
            k === "net" || k === "user"
              ? ` (--external ${k} leaves it out, to be joined at restore)`
              : ""
          }`,
      );
    }
  }
}

/**
 * Refuses a container namespace of `kinds` (those of `root`) that a mount in the tool's mount
 * namespace holds (`ip netns add` binds one on /run/netns/NAME): a restore would part them.
 */
export function refuseMountedHolders(root: number, kinds: CarriedKind[]): void {
  const nsfs = readMountInfo("self").filter((m) => m.fsType === "nsfs");
  for (const k of kinds) {
    const ns = namespaceOf(root, k);
    const held = nsfs.find((m) => m.root === ns);
    if (held) {
      throw new DumpError(
        `the ${k} namespace of container ${root} is also held by a mount on ${held.mountPoint}, ` +
          `outside the dump: a restore would part them${
            k === "net" || k === "user"
              ? ` (--external ${k} leaves it out, to be joined at restore)`
              : ""
          }`,
      );
    }
  }
}
