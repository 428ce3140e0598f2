/**
 * fanotify groups: the fanotify_init flags, the flags of the event descriptors it hands out, and
 * its marks (on an inode, a mount or a filesystem: mask, ignored mask, mark flags) from fdinfo.
 *
 * Dump finds each mark's path again from the tool: an inode through its file handle (as inotify
 * watches are), a mount by its id in the process's mountinfo, a filesystem by its device. A mark
 * whose path cannot be found is refused, naming it; so is a group with events queued (FIONREAD):
 * they hold descriptors of the files they report and cannot be queued again; and a mark for
 * permission events (FAN_OPEN_PERM …): every access it covers would wait for an answer from a
 * process the restore still holds stopped.
 *
 * Restore makes the group with fanotify_init and adds the marks with fanotify_mark, the oldest
 * first (the kernel lists the newest first), the inode ones without following a symlink; once
 * every other file of every process is open (`deferred`), so that its marks see none of the
 * restore's own opens.
 */
import {
  AT_FDCWD,
  close,
  FAN_MARK,
  FAN_PERMISSION_EVENTS,
  pidfdGetfd,
  SOCK_IOCTL,
  SYS,
  tryIoctlInt,
} from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { FanotifyInfo, FanotifyMark, Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { mountOfDevice, mountPointOf, pathOfHandle } from "./handle_path.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { injectRaw } from "./util.ts";

/** One mark of a fanotify group, with the path it is made again on. */
export interface FanotifyMarkEntry extends Omit<FanotifyMark, "fhandle"> {
  /** The marked inode's path, or a path on the marked mount or filesystem. */
  path: string;
}

/** A fanotify group. */
export interface FanotifyEntry extends FileEntry {
  kind: "fanotify";
  /** fanotify_init(2) flags. */
  initFlags: number;
  /** open(2) flags of the event descriptors (fanotify_init's second argument). */
  eventFlags: number;
  /** The marks as the kernel lists them, the newest first. */
  marks: FanotifyMarkEntry[];
}

/** The flags kept by a mark that are given again when it is made. */
const KEPT_MARK_FLAGS = FAN_MARK.EVICTABLE;

function markPath(pid: number, m: FanotifyMark): string | null {
  switch (m.type) {
    case "inode":
      return pathOfHandle(pid, { ino: m.ino!, sdev: m.sdev!, fhandle: m.fhandle });
    case "mount":
      return mountPointOf(pid, m.mntId!);
    case "filesystem":
      return mountOfDevice(pid, m.sdev!);
  }
}

function describeMark(m: FanotifyMark): string {
  if (m.type === "inode") return `inode ${m.ino} of device ${m.sdev?.toString(16)}`;
  return m.type === "mount" ? `mount ${m.mntId}` : `filesystem ${m.sdev?.toString(16)}`;
}

function dump(fd: Fd, ctx: FileDumpContext): FanotifyEntry {
  const info = fd.info as FanotifyInfo;
  const what = `fd ${fd.fd} of process ${fd.pid} (a fanotify group)`;
  const mine = pidfdGetfd(ctx.pidfd, fd.fd);
  let queued: number;
  try {
    queued = tryIoctlInt(mine, SOCK_IOCTL.FIONREAD);
  } finally {
    close(mine);
  }
  if (queued > 0) {
    throw new DumpError(`${what} has ${queued} bytes of events queued, which cannot be restored`);
  }
  const marks = info.marks.map((m): FanotifyMarkEntry => {
    if (m.mask & FAN_PERMISSION_EVENTS) {
      throw new DumpError(
        `${what}: the mark on ${describeMark(m)} asks for permission events, which would hold ` +
          `the restore's own accesses until the stopped process answered`,
      );
    }
    const path = markPath(fd.pid, m);
    if (path === null) {
      throw new DumpError(`${what}: the mark on ${describeMark(m)} has no path to make it again`);
    }
    const { fhandle: _, ...rest } = m;
    return { ...rest, path };
  });
  return {
    id: fd.fileId,
    kind: "fanotify",
    flags: fd.flags,
    initFlags: info.flags,
    eventFlags: info.eventFlags,
    marks,
  };
}

function addMark(ctx: FileRestoreContext, group: number, m: FanotifyMarkEntry): void {
  const on = m.type === "mount"
    ? FAN_MARK.MOUNT
    : m.type === "filesystem"
    ? FAN_MARK.FILESYSTEM
    : FAN_MARK.DONT_FOLLOW;
  const base = FAN_MARK.ADD | on | (m.mflags & KEPT_MARK_FLAGS);
  const path = ctx.putString(m.path);
  const mark = (flags: number, mask: number) =>
    injectRaw(ctx, "fanotify_mark", SYS.fanotify_mark, group, flags, mask, AT_FDCWD, path);
  if (m.mask) mark(base, m.mask);
  if (m.ignoredMask) {
    const ignore = m.mflags & FAN_MARK.IGNORE ? FAN_MARK.IGNORE : FAN_MARK.IGNORED_MASK;
    mark(base | ignore | (m.mflags & FAN_MARK.IGNORED_SURV_MODIFY), m.ignoredMask);
  }
}

function open(e: FanotifyEntry, ctx: FileRestoreContext): number {
  const group = Number(
    injectRaw(ctx, "fanotify_init", SYS.fanotify_init, e.initFlags, e.eventFlags),
  );
  for (const m of [...e.marks].reverse()) addMark(ctx, group, m);
  return group;
}

/** A mark whose path no longer names what it marked: the restore would mark something else. */
function check(e: FanotifyEntry, root = ""): string | null {
  for (const m of e.marks) {
    let st: Deno.FileInfo;
    try {
      st = Deno.lstatSync(root + m.path);
    } catch {
      return `the fanotify mark on ${m.path} cannot be made again: it no longer exists`;
    }
    if (m.type === "inode" && BigInt(st.ino ?? -1) !== m.ino) {
      return `the fanotify mark on ${m.path} cannot be made again: it is another file now`;
    }
  }
  return null;
}

/** fanotify groups. */
export const fanotifyHandler: FileHandler<FanotifyEntry> = {
  kind: "fanotify",
  fields: {
    initFlags: "whole",
    eventFlags: "whole",
    marks: {
      list: {
        map: {
          type: { oneOf: ["inode", "mount", "filesystem"] },
          ino: { optional: "whole" },
          sdev: { optional: "whole" },
          mntId: { optional: "whole" },
          mflags: "whole",
          mask: "whole",
          ignoredMask: "whole",
          path: "text",
        },
      },
    },
  },
  fdKinds: ["fanotify"],
  deferred: true,
  dump,
  check,
  open,
};
