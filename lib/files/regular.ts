/**
 * Regular files and directories, reopened by path at the dumped position. A file deleted since
 * it was opened cannot be reopened by path: its contents go into the image as a memory object
 * and the restore reopens that object through /proc/self/fd.
 */
import { O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { checkLocks, type FileLock, readLocks, restoreLocks } from "./locks.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { injectOpen, injectSeek, reopenFlags } from "./util.ts";

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
  /** flock, OFD and POSIX locks taken through this open file; absent when none. */
  locks?: FileLock[];
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
  const fd = injectOpen(ctx, `/proc/self/fd/${ctx.objectFd(object)}`, mode);
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
  if (deleted) {
    if (entry.directory) {
      throw new DumpError(`fd ${fd.fd} of ${fd.pid}: directory ${path} was deleted`);
    }
    entry.object = ctx.storeObject(fd);
  }
  return entry;
}

function check(e: RegularEntry): string | null {
  const why = checkFile(e);
  if (why || e.object !== undefined) return why;
  return checkLocks(e.path, e.locks);
}

function checkFile(e: RegularEntry): string | null {
  if (e.object !== undefined) return null;
  let st: Deno.FileInfo;
  try {
    st = Deno.statSync(e.path);
  } catch {
    return `${e.path} no longer exists`;
  }
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

function open(e: RegularEntry, ctx: FileRestoreContext): number {
  if (e.object !== undefined) return reopenObject(ctx, e.object, e.flags, e.position);
  const fd = injectOpen(ctx, e.path, reopenFlags(e.flags));
  // O_PATH descriptors have no position.
  if (e.position !== 0n && !(e.flags & O.PATH)) injectSeek(ctx, fd, e.position);
  return fd;
}

/** After every fd is in place: the file's locks, taken again by the restored process. */
function finish(e: RegularEntry, fd: number, ctx: FileRestoreContext): void {
  restoreLocks(ctx, fd, e.path, e.locks);
}

/** Regular files and directories. */
export const regularHandler: FileHandler<RegularEntry> = {
  kind: "regular",
  fdKinds: ["file", "directory"],
  dump,
  check,
  open,
  finish,
};
