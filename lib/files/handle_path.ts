/**
 * Paths found again for what inotify and fanotify show only by identity: an inode by its file
 * handle and device, a mount by its id, a filesystem by its device. Each is looked up from the
 * tool, in the mount namespace of the process (through /proc/PID/root and its mountinfo).
 */
import { close, O, open, openByHandle } from "../../ffi/mod.ts";
import { readMountInfo } from "../inspect/procfs.ts";

/** An inode as fdinfo shows it: its number, its filesystem (kernel dev_t) and file handle. */
export interface HandledInode {
  ino: bigint;
  /** Kernel dev_t of its filesystem (major << 20 | minor). */
  sdev: number;
  /** The file handle as hex, with its type. */
  fhandle?: { type: number; handle: string };
}

/** A mount point (as seen in `pid`'s mount namespace) of the filesystem with kernel dev `sdev`. */
export function mountOfDevice(pid: number, sdev: number): string | null {
  const want = `${sdev >>> 20}:${sdev & 0xfffff}`;
  let best: string | null = null;
  for (const m of readMountInfo(pid)) {
    if (m.dev !== want) continue;
    if (m.root === "/") return m.mountPoint; // a mount of the filesystem's root resolves every handle
    best ??= m.mountPoint;
  }
  return best;
}

/** The mount point (as seen in `pid`'s mount namespace) of the mount with id `mntId`. */
export function mountPointOf(pid: number, mntId: number): string | null {
  return readMountInfo(pid).find((m) => m.id === mntId)?.mountPoint ?? null;
}

/** The path of an inode, found again through its file handle; null if it has none now. */
export function pathOfHandle(pid: number, inode: HandledInode): string | null {
  if (!inode.fhandle) return null;
  const mnt = mountOfDevice(pid, inode.sdev);
  if (mnt === null) return null;
  const hex = inode.fhandle.handle;
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  const mfd = open(`/proc/${pid}/root${mnt}`, O.RDONLY | O.DIRECTORY);
  try {
    const fd = openByHandle(mfd, { type: inode.fhandle.type, bytes }, O.PATH);
    if (fd === null) return null; // ESTALE (deleted) and the like
    try {
      const path = Deno.readLinkSync(`/proc/self/fd/${fd}`);
      if (path.endsWith(" (deleted)") || !path.startsWith("/")) return null;
      // The path names the inode itself (a symlink is not followed).
      return BigInt(Deno.lstatSync(path).ino ?? -1) === inode.ino ? path : null;
    } finally {
      close(fd);
    }
  } finally {
    close(mfd);
  }
}
