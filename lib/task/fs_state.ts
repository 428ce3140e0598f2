/**
 * The process's fs state: working directory, root directory (chroot) and umask. Processes that
 * share one (clone with CLONE_FS) are made sharing it (ptrace/stub.ts) and it is set once.
 *
 * Paths are as the tool sees them (from outside a chroot: the host path). A working directory
 * that was removed comes back as a removed directory of the same path, mode and owner
 * (lib/files/removed.ts): a new inode, which the restore says in a warning.
 */
import { SyscallError } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { recreate, type RemovedAttributes } from "../files/removed.ts";
import type { ProcessEntry } from "../image/schema.ts";
import type { Process } from "../inspect/process.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The fs state of a process. */
export type FsState = Pick<ProcessEntry, "cwd" | "root" | "umask" | "removedCwd">;

/** What readlink of a removed directory ends with. */
const DELETED = " (deleted)";

/** The fs state of a process, from /proc. */
export async function dumpFsState(proc: Process): Promise<FsState> {
  const [cwd, root, umask] = await Promise.all([proc.cwd(), proc.root(), proc.umask()]);
  const state: FsState = { cwd, root, umask };
  if (cwd.endsWith(DELETED)) {
    // Of the directory itself, through the link (the path names nothing now).
    const st = Deno.statSync(`/proc/${proc.pid}/cwd`);
    state.removedCwd = { mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? 0, gid: st.gid ?? 0 };
  }
  return state;
}

function removedAttributes(fs: FsState): RemovedAttributes {
  return fs.removedCwd ?? { mode: 0o700, uid: 0, gid: 0 };
}

/**
 * chdir, chroot and umask in the target; once every process of the restore has its descriptors
 * (the chroot would hide the host paths they are opened by). The cwd is entered first, by its
 * host path, then the root changed: a cwd inside the root stays where it is. A removed cwd is
 * made again for `scope` (and removed when the scope is released). Returns warnings.
 */
export function restoreFsState(inj: Injector, fs: FsState, scope: object): string[] {
  // Queued, the paths beside the calls: one run with what follows.
  const path = (p: string) => inj.queueData(new TextEncoder().encode(p + "\0"));
  const warnings: string[] = [];
  let cwd = fs.cwd;
  if (cwd.endsWith(DELETED)) {
    cwd = cwd.slice(0, -DELETED.length);
    const what = "the removed working directory";
    recreate(scope, cwd, "directory", removedAttributes(fs), what, mountRoot(inj.pid));
    warnings.push(
      `its working directory ${cwd} had been removed; it is back in an empty removed ` +
        `directory of that path, mode and owner, with another inode number`,
    );
  }
  inj.queue("chdir", [path(cwd)], (r) => {
    if (r >= 0n) return;
    const err = new SyscallError(`chdir in ${inj.tid}`, [cwd], Number(-r));
    throw new RestoreError(`cannot enter the working directory ${cwd}: ${err.message}`, {
      cause: err,
    });
  });
  if (fs.root !== "/") inj.queue("chroot", [path(fs.root)]);
  inj.queue("umask", [fs.umask]);
  return warnings;
}
