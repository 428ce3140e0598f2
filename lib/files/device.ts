/**
 * Character devices and terminals reopened by path: /dev/null, /dev/zero, /dev/urandom, ttys,
 * /dev/tty, /dev/console, pty slaves whose master is not in the dump. A pty master, and its
 * slaves, are pty.ts's (which hands the other terminals here); a master it does not take (no
 * pty index) is refused: opening /dev/ptmx again makes a new pty, not the old one.
 */
import { O } from "../../ffi/mod.ts";
import { DumpError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import type { FileHandler, FileRestoreContext, PathOpen } from "./types.ts";
import { openPath, reopenFlags } from "./util.ts";

/** An open device file. */
export interface DeviceEntry extends FileEntry {
  kind: "device";
  path: string;
  /** st_rdev when dumped: the path must name the same device on restore. */
  rdev: bigint;
  tty: boolean;
  position: bigint;
}

const PTMX_RDEV = (5n << 8n) | 2n;

/** A device is its path opened again. */
function deviceOpen(e: DeviceEntry): PathOpen {
  return {
    path: e.path,
    // O_NOCTTY: reopening a tty must not make it the controlling terminal as a side effect.
    flags: reopenFlags(e.flags) | (e.tty ? O.NOCTTY : 0),
    position: e.position,
    // Most character devices have no position (ESPIPE): nothing to restore.
    seekMayFail: true,
  };
}

/** Describes a device or terminal reopened by path (refusing what cannot be). */
export function dumpDevice(fd: Fd): DeviceEntry {
  const where = `fd ${fd.fd} of ${fd.pid} (${fd.target})`;
  if (!fd.target.startsWith("/") || fd.target.endsWith(" (deleted)")) {
    throw new DumpError(`${where}: device has no path to reopen`);
  }
  if (fd.rdev === PTMX_RDEV || fd.target.endsWith("/ptmx")) {
    throw new DumpError(`${where}: a pty master cannot be reopened (it would be a new pty)`);
  }
  if ((fd.mode & 0o170000) === 0o060000) {
    throw new DumpError(`${where}: block devices are not handled`);
  }
  return {
    id: fd.fileId,
    kind: "device",
    flags: fd.flags,
    path: fd.target,
    rdev: fd.rdev,
    tty: fd.kind === "tty",
    position: fd.position,
  };
}

/** Character devices and ttys. */
export const deviceHandler: FileHandler<DeviceEntry> = {
  kind: "device",
  fields: { path: "text", rdev: "whole", tty: "bool", position: "whole" },
  fdKinds: ["device"], // and the terminals pty.ts hands on
  dump: dumpDevice,
  check(e: DeviceEntry, root = ""): string | null {
    let st: Deno.FileInfo;
    try {
      st = Deno.statSync(root + e.path);
    } catch {
      return `${e.path} no longer exists`;
    }
    if (!st.isCharDevice || BigInt(st.rdev ?? 0) !== e.rdev) {
      return `${e.path} is no longer the same device`;
    }
    return null;
  },
  open: (e: DeviceEntry, ctx: FileRestoreContext) => openPath(ctx, deviceOpen(e)),
  openByPath: deviceOpen,
};
