/**
 * inotify instances: the watches (wd, mask, inode, device, file handle) from fdinfo.
 *
 * Dump finds each watched inode's path again from the tool: open_by_handle_at with the file
 * handle fdinfo shows, on a mount of the watch's device, then readlink. A watch whose inode has
 * no path any more (deleted, or a filesystem without file handles) is kept with `path: null`.
 *
 * Restore makes the instance with inotify_init1 and adds the watches by path in wd order. wd
 * numbers are handed out one after another, so to give every watch its dumped wd the gaps are
 * burnt: a throwaway watch on a scratch directory of the tool, removed at once, and the
 * IN_IGNORED events that leaves are read away. Watches with no path are burnt the same way (the
 * program keeps its wd, which gets no events). Events queued at dump time are not restored.
 */
import { Errno, F, O, SYS } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Fd, InotifyInfo } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { pathOfHandle } from "./handle_path.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";

/** One inotify watch. */
export interface InotifyWatchEntry {
  wd: number;
  mask: number;
  ino: bigint;
  /** Kernel dev_t of the watched inode's filesystem (major << 20 | minor). */
  sdev: number;
  /** The watched inode's path, null when it could not be found again. */
  path: string | null;
}

/** An inotify instance. */
export interface InotifyEntry extends FileEntry {
  kind: "inotify";
  watches: InotifyWatchEntry[];
}

/** inotify event: the watched file itself was deleted (a mask that never fires here). */
const IN_DELETE_SELF = 0x400;

function addWatch(ctx: FileRestoreContext, ifd: number, path: string, mask: number): number {
  return Number(
    ctx.injector.call("inotify_add_watch", ifd, ctx.putString(path), mask),
  );
}

function restoreWatches(e: InotifyEntry, ifd: number, ctx: FileRestoreContext): void {
  let next = 1;
  let burnDir: string | undefined;
  try {
    for (const w of [...e.watches].sort((a, b) => a.wd - b.wd)) {
      // Burn the numbers before this wd (and this wd itself when its path is gone).
      const upto = w.path === null ? w.wd : w.wd - 1;
      while (next <= upto) {
        burnDir ??= Deno.makeTempDirSync({ prefix: "tardigrade-inotify-" });
        const wd = addWatch(ctx, ifd, burnDir, IN_DELETE_SELF);
        ctx.injector.call("inotify_rm_watch", ifd, wd);
        next = wd + 1;
      }
      if (w.path === null) continue;
      const wd = addWatch(ctx, ifd, w.path, w.mask);
      if (wd !== w.wd) {
        throw new RestoreError(`inotify watch on ${w.path}: got wd ${wd}, the process had ${w.wd}`);
      }
      next = wd + 1;
    }
  } finally {
    // Every watch on it was removed again: nothing of the process refers to it.
    if (burnDir) Deno.removeSync(burnDir);
  }
  if (!burnDir) return;
  // Read away the IN_IGNORED events of the burnt watches (the instance is non-blocking here).
  // Events of real watches that arrived meanwhile go with them.
  const buf = ctx.put(new Uint8Array(4096));
  for (;;) {
    const r = ctx.injector.raw(SYS.read, ifd, buf, 4096);
    if (r === -BigInt(Errno.EAGAIN) || r <= 0n) break;
  }
}

/** inotify instances. */
export const inotifyHandler: FileHandler<InotifyEntry> = {
  kind: "inotify",
  fields: {
    watches: {
      list: {
        map: {
          wd: "whole",
          mask: "whole",
          ino: "whole",
          sdev: "whole",
          path: { nullable: "text" },
        },
      },
    },
  },
  fdKinds: ["inotify"],
  dump(fd: Fd): InotifyEntry {
    const watches = (fd.info as InotifyInfo).watches.map((w): InotifyWatchEntry => ({
      wd: w.wd,
      mask: w.mask,
      ino: w.ino,
      sdev: w.sdev,
      path: pathOfHandle(fd.pid, w),
    }));
    return { id: fd.fileId, kind: "inotify", flags: fd.flags, watches };
  },
  open(e: InotifyEntry, ctx: FileRestoreContext): number {
    const ifd = Number(ctx.injector.call("inotify_init1", O.NONBLOCK));
    restoreWatches(e, ifd, ctx);
    if (!(e.flags & O.NONBLOCK)) ctx.injector.call("fcntl", ifd, F.SETFL, 0);
    return ifd;
  },
};
