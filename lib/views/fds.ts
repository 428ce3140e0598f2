/** The descriptors of a process as rows: what `tardigrade fds` and the REPL's `fds()` show. */
import { Process } from "../inspect/process.ts";
import type { ProcessView } from "../inspect/view.ts";

/** One row of `fds --json`. */
export interface FdsRow {
  /** Descriptor number. */
  fd: number;
  /** What it refers to (file, pipe, socket …). */
  kind: string;
  /** readlink of /proc/PID/fd/N. */
  target: string;
  /** open(2) flags as an octal string, as /proc/PID/fdinfo shows them. */
  flags: string;
  /** File position. */
  position: number;
  /** FD_CLOEXEC is set. */
  closeOnExec: boolean;
  /** Equal for descriptors that share one open file (in an image: the image's file id). */
  fileId: number;
}

/**
 * The descriptors of process `pid` (or of a process of an image, `ImageProcess`) as `fds --json`
 * shows them.
 */
export async function fdsRows(pid: number | ProcessView): Promise<FdsRow[]> {
  const proc = typeof pid === "number" ? await Process.open(pid) : pid;
  const rows: FdsRow[] = [];
  for await (const fd of proc.fds()) {
    rows.push({
      fd: fd.fd,
      kind: fd.kind,
      target: fd.target,
      flags: `0${fd.flags.toString(8)}`,
      position: Number(fd.position),
      closeOnExec: fd.closeOnExec,
      fileId: fd.fileId,
    });
  }
  return rows;
}
