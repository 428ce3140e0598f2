/**
 * Regular files, directories and O_PATH descriptors of symlinks, reopened by path at the dumped
 * position. A file deleted since it was opened cannot be reopened by path: its contents go into
 * the image as a memory object and the restore reopens that object through /proc/self/fd. A
 * directory removed since it was opened is made again as an empty directory of the same path,
 * mode and owner, opened, and removed again (removed.ts). Both get back their mode, owner and
 * access and modification times (to the nanosecond), set by the tool through the restored
 * descriptor; their inode number is a new one.
 *
 * Files of /proc/PID/… describe a process: reopened by path, inside the restored process, so
 * /proc/PID is its /proc (in a new pid namespace as well, where the image's pids are the restored
 * processes'). One of a process outside the image is reopened only in the same pid namespace, and
 * only if that process is still the one it was (the same start time).
 */
import { encodeFileHandle, fileHandleOf, O, setFileTimes, stat } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import { tryReadStat } from "../inspect/procfs.ts";
import type { Fd } from "../inspect/fds.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import type { FileEntry } from "../image/schema.ts";
import { checkLocks, FILE_LOCK, type FileLock, readLocks, restoreLocks } from "./locks.ts";
import { recreate, REMOVED_FIELDS, type RemovedAttributes, whyNotRecreatable } from "./removed.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext, PathOpen } from "./types.ts";
import { injectOpen, injectSeek, openPath, reopenFlags } from "./util.ts";

/** An open regular file or directory. */
export interface RegularEntry extends FileEntry {
  kind: "regular";
  /** The path as the target saw it (without " (deleted)"). */
  path: string;
  directory: boolean;
  position: bigint;
  /** Size and mtime of the file when dumped, to notice changes before restoring. */
  size: number;
  mtimeMs: number;
  inode: bigint;
  dev: bigint;
  /** Set when the file was deleted: the memory object holding its contents. */
  object?: number;
  /** flock, OFD and POSIX locks and leases taken through this open file; absent when none. */
  locks?: FileLock[];
  /** An O_PATH | O_NOFOLLOW descriptor of the symlink itself; absent otherwise. */
  symlink?: boolean;
  /**
   * A deleted file or removed directory: its mode and owner, and its access and modification
   * times (ns since the epoch), to make it again alike.
   */
  removed?: RemovedAttributes & { atimeNs: bigint; mtimeNs: bigint };
  /**
   * A file of /proc/PID/… (`path` names it): that pid; with `startTime` (stat field 22) when the
   * process was not in the dump, to tell at restore that it is still the same one.
   */
  proc?: { pid: number; startTime?: bigint };
}

const DELETED = " (deleted)";
const O_TMPFILE_BIT = 0o20000000;

/** Opens a stored memory object again with `flags` and `position` (deleted files, memfds). */
export function reopenObject(
  ctx: FileRestoreContext,
  object: number,
  flags: number,
  position: bigint,
): number {
  // A fresh open through /proc gives an open file of our own with the dumped flags; the object's
  // fd belongs to the context (mappings may use it too), so it stays open.
  // O_DIRECTORY | __O_TMPFILE of an O_TMPFILE file would ask for a new tmpfile: not a reopen.
  const mode = reopenFlags(flags) & ~(O.DIRECTORY | O_TMPFILE_BIT);
  const objectFd = ctx.objectFd(object);
  // O_NOFOLLOW (F_GETFL shows it) refuses the /proc magic link (ELOOP): such a file (Python's
  // multiprocessing opens its /dev/shm arena so, then unlinks it) is opened by its handle,
  // which names the inode itself, relative to the object's own fd.
  const fd = (mode & O.NOFOLLOW)
    ? Number(ctx.injector.call(
      "open_by_handle_at",
      objectFd,
      ctx.put(encodeFileHandle(fileHandleOf(`/proc/${ctx.pid}/fd/${objectFd}`))),
      mode,
    ))
    : injectOpen(ctx, `/proc/self/fd/${objectFd}`, mode);
  if (position !== 0n) injectSeek(ctx, fd, position);
  return fd;
}

function dump(fd: Fd, ctx: FileDumpContext): RegularEntry {
  const deleted = fd.target.endsWith(DELETED);
  const path = deleted ? fd.target.slice(0, -DELETED.length) : fd.target;
  if (!path.startsWith("/")) {
    throw new DumpError(`fd ${fd.fd} of ${fd.pid}: cannot reopen "${fd.target}" by path`);
  }
  // stat of the open file itself, not of whatever the path names now.
  const st = Deno.statSync(`/proc/${fd.pid}/fd/${fd.fd}`);
  const entry: RegularEntry = {
    id: fd.fileId,
    kind: "regular",
    flags: fd.flags,
    path,
    directory: fd.kind === "directory",
    position: fd.position,
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
    inode: fd.inode,
    dev: fd.dev,
  };
  const locks = readLocks(fd.pid, fd.fd);
  if (locks.length) entry.locks = locks;
  if (fd.kind === "symlink") entry.symlink = true;
  if (deleted) {
    // Before its contents are read into the image, which may touch its access time.
    const now = stat(`/proc/${fd.pid}/fd/${fd.fd}`);
    const { uid, gid, atimeNs, mtimeNs } = now;
    entry.removed = { mode: now.mode & 0o7777, uid, gid, atimeNs, mtimeNs };
    if (!entry.directory) entry.object = ctx.storeObject(fd);
  }
  const proc = procPid(path);
  if (proc !== null) {
    entry.proc = { pid: proc };
    if (!(ctx.pids ?? [ctx.pid]).includes(proc)) {
      const start = tryReadStat(proc)?.starttime;
      if (start === undefined) {
        throw new DumpError(`fd ${fd.fd} of ${fd.pid}: ${path}: process ${proc} ended meanwhile`);
      }
      entry.proc.startTime = start;
    }
  }
  return entry;
}

/** The pid of a /proc/PID/… path, or null for any other path. */
function procPid(path: string): number | null {
  const m = /^\/proc\/(\d+)(\/|$)/.exec(path);
  return m ? Number(m[1]) : null;
}

function check(e: RegularEntry, root = ""): string | null {
  const why = checkFile(e, root);
  if (why || e.object !== undefined) return why;
  return checkLocks(e.path, e.locks, root);
}

function checkFile(e: RegularEntry, root: string): string | null {
  if (e.object !== undefined) return null;
  if (e.removed) return whyNotRecreatable(e.path, "directory", root);
  // A file of a process's /proc entry: the process is made by the restore (or checked then).
  if (e.proc) return null;
  let st: Deno.FileInfo;
  try {
    st = e.symlink ? Deno.lstatSync(root + e.path) : Deno.statSync(root + e.path);
  } catch {
    return `${e.path} no longer exists`;
  }
  if (e.symlink) return st.isSymlink ? null : `${e.path} is no longer a symlink`;
  if (e.directory) return st.isDirectory ? null : `${e.path} is no longer a directory`;
  if (!st.isFile) return `${e.path} is no longer a regular file`;
  if ((e.flags & O.ACCMODE) === O.RDONLY) {
    const mtime = st.mtime?.getTime() ?? 0;
    if (st.size !== e.size || mtime !== e.mtimeMs) {
      return `${e.path} changed since the dump (size ${e.size} → ${st.size}, mtime ${e.mtimeMs} → ${mtime})`;
    }
  } else if (BigInt(st.size) < e.position) {
    // A file the process writes may grow; shorter than its position means it lost data.
    return `${e.path} is shorter (${st.size}) than the dumped position ${e.position}`;
  }
  return null;
}

/** Refuses a /proc/PID/… file of a process that is not the one it described. */
function checkProcess(e: RegularEntry & { proc: { pid: number } }, ctx: FileRestoreContext): void {
  const { pid, startTime } = e.proc;
  if (startTime === undefined) return; // a process of the image: made before its files
  const what = `fd ${ctx.fdOfFile(e.id)} of process ${ctx.pid} (${e.path})`;
  if (ctx.tasks?.ownNamespace) {
    throw new RestoreError(
      `${what}: process ${pid} is not in the image; restored in a new pid namespace, its /proc ` +
        `entry names another process or none there`,
    );
  }
  if (tryReadStat(pid)?.starttime !== startTime) {
    throw new RestoreError(`${what}: process ${pid} (not in the image) has ended`);
  }
}

/** Mode, owner and times of a deleted file or removed directory, through target fd `fd`. */
function restoreRemoved(e: RegularEntry, ctx: FileRestoreContext, fd: number): void {
  if (!e.removed) return;
  const through = `/proc/${ctx.pid}/fd/${fd}`;
  const { mode, uid, gid, atimeNs, mtimeNs } = e.removed;
  Deno.chownSync(through, uid, gid);
  Deno.chmodSync(through, mode); // after chown, which clears set-id bits
  setFileTimes(through, atimeNs, mtimeNs);
}

function open(e: RegularEntry, ctx: FileRestoreContext): number {
  if (e.object !== undefined) {
    const fd = reopenObject(ctx, e.object, e.flags, e.position);
    restoreRemoved(e, ctx, fd);
    return fd;
  }
  if (e.proc) checkProcess(e as RegularEntry & { proc: { pid: number } }, ctx);
  if (e.removed) {
    // Removed again once every process of the restore has opened it.
    const what = `fd of process ${ctx.pid}`;
    recreate(ctx.scope ?? ctx, e.path, "directory", e.removed, what, mountRoot(ctx.pid));
  }
  const fd = openPath(ctx, pathOpen(e));
  if (e.removed) restoreRemoved(e, ctx, fd);
  return fd;
}

/** The path and flags a regular file is opened again with. */
function pathOpen(e: RegularEntry): PathOpen {
  // O_PATH descriptors have no position.
  return {
    path: e.path,
    flags: reopenFlags(e.flags),
    position: e.flags & O.PATH ? 0n : e.position,
  };
}

/** A file that is only its path opened again: not a memory object, removed, nor under /proc. */
function openByPath(e: RegularEntry): PathOpen | null {
  return e.object !== undefined || e.removed || e.proc ? null : pathOpen(e);
}

/** After every fd is in place: the file's locks, taken again by the restored process. */
function finish(e: RegularEntry, fd: number, ctx: FileRestoreContext): void {
  restoreLocks(ctx, fd, e.path, e.locks);
}

/** Regular files and directories. */
export const regularHandler: FileHandler<RegularEntry> = {
  kind: "regular",
  fields: {
    path: "text",
    directory: "bool",
    position: "whole",
    size: "whole",
    mtimeMs: "number",
    inode: "whole",
    dev: "whole",
    object: { optional: "whole" },
    locks: { optional: { list: FILE_LOCK } },
    symlink: { optional: "bool" },
    removed: {
      optional: {
        map: { ...REMOVED_FIELDS, atimeNs: "whole", mtimeNs: "whole" },
      },
    },
    proc: { optional: { map: { pid: "whole", startTime: { optional: "whole" } } } },
  },
  fdKinds: ["file", "directory", "symlink"],
  dump,
  check,
  open,
  openByPath,
  finish,
};
