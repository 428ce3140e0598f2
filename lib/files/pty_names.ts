/**
 * What names a pseudo-terminal: its master's paths, its slave's, and its index. Apart from
 * pty.ts so that the outside-peer check can name ptys without the pty handler.
 */
import type { Fd } from "../inspect/fds.ts";

/** A pty slave's path. */
export const PTY_SLAVE = /^\/dev\/pts\/(\d+)$/;

/** Whether `fd` is a pty master (an open file of /dev/ptmx). */
export function isPtyMaster(fd: Pick<Fd, "target">): boolean {
  return fd.target === "/dev/ptmx" || fd.target === "/dev/pts/ptmx";
}

/** The index of the pty behind a master or slave descriptor, or null for another terminal. */
export function ptyIndex(fd: Pick<Fd, "target" | "info">): number | null {
  if (isPtyMaster(fd)) {
    const index = (fd.info as Record<string, string>)["tty-index"];
    return index === undefined ? null : Number(index);
  }
  const m = PTY_SLAVE.exec(fd.target);
  return m ? Number(m[1]) : null;
}

/** The path of pty `index`'s slave. */
export function ptySlavePath(index: number): string {
  return `/dev/pts/${index}`;
}
