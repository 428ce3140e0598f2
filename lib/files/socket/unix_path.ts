/**
 * Where a UNIX socket's path is: the file bind() made, found at dump, and made again at restore
 * also when it was removed or replaced since (a ghost socket).
 *
 * Dump: sock_diag (UDIAG_SHOW_VFS) gives the inode and device of the file the socket made when it
 * was bound, which the kernel holds whatever happened to its path since. A path is looked up
 * where it resolves: an absolute one as is, a relative one from the cwd of each process of the
 * dump (the process may have changed directory since it bound, or a child may have bound it),
 * their ancestors and a few levels of directories below them; the directory where it finds that
 * very file (same device and inode) is the socket's `cwd`. Where it finds it nowhere, an absolute
 * path was removed (nothing there now) or replaced (another file there now); a relative one could
 * be anywhere, and is refused.
 *
 * Restore of a ghost: the socket is bound at its path again (the missing directories made for the
 * while, a file now at the path moved aside in its directory for the while and put back), then
 * its file is unlinked: the socket has its address, and the path is as it was. A removed path is
 * unlinked only once the restore's processes are all made (the scope's release), after the
 * datagram sockets connected to the ghost have connected to it (standalone.ts); a replaced one at
 * once, to put back what is there.
 */
import { major, minor } from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileDumpContext } from "../types.ts";
import { unixPath } from "./address.ts";
import { type UnixDiag, unixDiag } from "./diag.ts";
import { socketHolders } from "./unix_pair.ts";
import { entryExists } from "../util.ts";
import { mountRoot } from "../../inspect/mount_root.ts";

/** What became of a UNIX socket's path since bind(). */
export type PathFate = "removed" | "replaced";

/** Whether the file at `path` is the one `file` names (sock_diag's view). */
function isBoundFile(path: string, file: NonNullable<UnixDiag["file"]>): boolean {
  try {
    const st = Deno.lstatSync(path);
    return st.isSocket === true && (st.ino ?? 0) % 2 ** 32 === file.inode &&
      major(st.dev) === file.major &&
      minor(st.dev) === file.minor;
  } catch {
    return false;
  }
}

const join = (dir: string, path: string) => `${dir.replace(/\/$/, "")}/${path}`;

// How far a relative path's directory is looked for below the working directories.
const SEARCH_DEPTH = 3, SEARCH_LIMIT = 4000;

/**
 * Where a relative path may have been bound from: the working directories, their ancestors,
 * then the directories below them, breadth first, a few levels and a few thousand at most (the
 * file found must be the very one, so a wider search cannot find a wrong one).
 */
function* searchedDirectories(cwds: readonly string[], root: string): Generator<string> {
  const seen = new Set<string>();
  const fresh = (d: string) => !seen.has(d) && !!seen.add(d);
  for (const cwd of cwds) if (fresh(cwd)) yield cwd;
  for (const cwd of cwds) {
    for (let d = cwd; d !== "/";) {
      d = d.slice(0, d.lastIndexOf("/")) || "/";
      if (fresh(d)) yield d;
    }
  }
  let level = [...new Set(cwds)];
  for (let depth = 0; depth < SEARCH_DEPTH && level.length; depth++) {
    const next: string[] = [];
    for (const dir of level) {
      try {
        for (const e of Deno.readDirSync(root + dir)) {
          if (!e.isDirectory) continue;
          const d = join(dir, e.name);
          if (seen.size >= SEARCH_LIMIT) return;
          if (fresh(d)) {
            yield d;
            next.push(d);
          }
        }
      } catch { /* unreadable: not searched */ }
    }
    level = next;
  }
}

/**
 * Where the path `path` of a socket bound to it resolves: the directory a relative path is
 * relative to (`cwd`, the first of `cwds`, the process's own, when sock_diag does not tell), and
 * whether its file was removed or replaced since (`fate`), its paths found under `root`
 * (lib/inspect/mount_root.ts). Refuses, with `name` describing the socket, a relative path whose
 * file is found in no process's cwd.
 */
export function locateBoundPath(
  path: string,
  file: UnixDiag["file"],
  cwds: readonly string[],
  name: string,
  root = "",
): { cwd: string; fate: PathFate | null } {
  const cwd = cwds[0];
  if (!file) return { cwd, fate: null };
  if (path.startsWith("/")) {
    if (isBoundFile(root + path, file)) return { cwd, fate: null };
    return { cwd, fate: entryExists(root + path) ? "replaced" : "removed" };
  }
  for (const dir of searchedDirectories(cwds, root)) {
    if (isBoundFile(root + join(dir, path), file)) return { cwd: dir, fate: null };
  }
  throw new DumpError(
    `${name} is bound to the relative path ${path}, whose file is neither in, above nor ` +
      `a few levels below the working directories of the dump's processes ` +
      `(${[...new Set(cwds)].join(", ")}): bound from elsewhere, or removed since; tardigrade ` +
      `cannot tell where to bind it again; a policy can skip it`,
  );
}

/** The working directory of process `pid`, as a path (one removed since reads as it was). */
function cwdOf(pid: number): string | null {
  try {
    return Deno.readLinkSync(`/proc/${pid}/cwd`).replace(/ \(deleted\)$/, "");
  } catch {
    return null;
  }
}

/** Where a standalone UNIX socket's own path and its peer's are (see the top). */
export interface UnixPaths {
  /** The directory its relative path resolves from (the process's cwd otherwise). */
  cwd: string;
  /** What became of its own path, when it was removed or replaced. */
  pathFate?: PathFate;
  /** "removed": it is connected to a ghost of the dump, whose path was removed. */
  peerFate?: "removed";
  /** Its peer is a socket of the dump: connected once that is made again (standalone.ts). */
  peerInImage?: boolean;
  /**
   * The permissions and owner of the file its bind() made, where it still is at its path: given
   * again to the file a restore's bind() makes (with the restoring process's umask and ids), as
   * they decide who may connect.
   */
  boundFile?: BoundFile;
}

/** A bound UNIX socket's file: its permission bits and owner. */
export interface BoundFile {
  mode: number;
  uid: number;
  gid: number;
}

/** The image fields of `BoundFile`. */
export const BOUND_FILE = {
  optional: { map: { mode: "whole", uid: "whole", gid: "whole" } },
} as const;

/** Gives the file a restore's bind() made at `path` the permissions and owner it had. */
export function restoreBoundFile(path: string, file: BoundFile): void {
  Deno.chownSync(path, file.uid, file.gid);
  Deno.chmodSync(path, file.mode);
}

/**
 * Locates the paths of the UNIX socket `fd` (bound to `address`, connected to `peer`); `name`
 * describes it in refusals.
 */
export function dumpUnixPaths(
  fd: Fd,
  ctx: FileDumpContext,
  address: Uint8Array | null,
  peer: Uint8Array | null,
  name: string,
): UnixPaths {
  const cwds = [fd.pid, ...(ctx.pids ?? [])].map(cwdOf).filter((d): d is string => d !== null);
  if (!cwds.length) cwds.push("/");
  const out: UnixPaths = { cwd: cwds[0] };
  const own = address ? unixPath(address) : "";
  const diag = own || peer ? unixDiag(fd.inode) : null;
  const root = mountRoot(fd.pid);
  if (own) {
    const { cwd, fate } = locateBoundPath(own, diag?.file ?? null, cwds, name, root);
    out.cwd = cwd;
    if (fate) out.pathFate = fate;
    else if (diag?.file) {
      const st = Deno.lstatSync(root + (own.startsWith("/") ? own : join(cwd, own)));
      out.boundFile = { mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? 0, gid: st.gid ?? 0 };
    }
  }
  const peerPath = peer ? unixPath(peer) : "";
  if (peerPath.startsWith("/") && diag?.peer) {
    const peerFile = unixDiag(BigInt(diag.peer))?.file ?? null;
    const { fate } = locateBoundPath(peerPath, peerFile, cwds, name, root);
    if (fate === "replaced") {
      throw new DumpError(
        `${name} is connected to ${peerPath}, a socket whose path now names another file; ` +
          `tardigrade cannot connect to it again; a policy can skip it`,
      );
    }
    if (fate === "removed") {
      if (!socketHolders(ctx).has(BigInt(diag.peer))) {
        throw new DumpError(
          `${name} is connected to ${peerPath}, a socket outside the dump whose path was ` +
            `removed; tardigrade cannot connect to it again; a policy can skip it`,
        );
      }
      out.peerFate = "removed";
    }
  }
  if (peer && peer.length > 2 && diag?.peer && socketHolders(ctx).has(BigInt(diag.peer))) {
    out.peerInImage = true;
  }
  return out;
}

// Ghost paths bound by a restore and kept until its processes are all made, by scope.
const ghosts = new WeakMap<object, string[]>();

/**
 * Binds the socket with `bind` at `path` (absolute), which was removed or replaced since the dump
 * (`fate`), and leaves the path as it is now; `scope` keeps a removed path until `unlinkGhosts`.
 * The tool finds the path under `root` (lib/inspect/mount_root.ts); `bind` binds it inside.
 */
export function bindGhost(
  path: string,
  fate: PathFate,
  scope: object,
  what: string,
  bind: () => void,
  root = "",
): void {
  const made: string[] = [];
  const dir = path.slice(0, path.lastIndexOf("/")) || "/";
  for (
    let d = dir;
    d !== "/" && !entryExists(root + d);
    d = d.slice(0, d.lastIndexOf("/")) || "/"
  ) {
    made.unshift(root + d);
  }
  const file = root + path;
  let aside: string | null = null;
  try {
    for (const d of made) Deno.mkdirSync(d, { mode: 0o700 });
    if (entryExists(file)) {
      aside = `${file}.tardigrade-aside-${Deno.pid}`;
      if (entryExists(aside)) throw new RestoreError(`${what}: ${aside} is in the way`);
      Deno.renameSync(file, aside);
    }
    bind();
    if (fate === "removed" && !aside && !made.length) {
      let list = ghosts.get(scope);
      if (!list) ghosts.set(scope, list = []);
      list.push(file);
    } else Deno.removeSync(file);
  } finally {
    if (aside) {
      try {
        Deno.removeSync(file);
      } catch { /* bind failed: nothing there */ }
      Deno.renameSync(aside, file);
    }
    for (const d of made.reverse()) {
      try {
        Deno.removeSync(d);
      } catch { /* not empty: someone else's now */ }
    }
  }
}

/** Unlinks the removed paths a restore bound ghosts at (see the top). */
export function unlinkGhosts(scope: object): void {
  for (const path of ghosts.get(scope) ?? []) {
    try {
      Deno.removeSync(path);
    } catch { /* gone already */ }
  }
  ghosts.delete(scope);
}
