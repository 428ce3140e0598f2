/**
 * pidfds (pidfd_open, clone with CLONE_PIDFD): a descriptor naming one process, or with
 * PIDFD_THREAD one thread, by identity rather than by a pid that may be reused.
 *
 * Dump: the pid fdinfo shows (the same in the tool's and the process's pid namespace, which the
 * dump requires to be one), the flags (PIDFD_NONBLOCK and PIDFD_THREAD show as O_NONBLOCK and
 * O_EXCL), and for a process outside the dump its start time, so that the restore can tell it is
 * still the same process. A pidfd of a process that has ended and been reaped shows pid -1: what
 * is kept of it is how it ended, which the kernel tells (PIDFD_GET_INFO with PIDFD_INFO_EXIT) as
 * it tells the program; a dump on a kernel that does not is refused, as is one of a process that
 * dumped core (its end cannot be made again without dumping core).
 *
 * Restore, once every process and thread of the restore exists (`deferred`): pidfd_open inside
 * the restored process of the pid it had, which names the restored process or thread (in a new
 * pid namespace as well: ids there are the image's). A process outside the image is opened again
 * only in the same pid namespace, and only if it is still the one it was (same start time). A
 * pidfd of a reaped process is made as one: a throwaway child of the restored process, opened,
 * ended with the same wait status and reaped by it; the pidfd then shows pid -1, reads as ended,
 * gives ESRCH to signals and the same exit status, as before. What differs: the dead process's
 * cgroup id (PIDFD_INFO_CGROUPID), which is the restored process's.
 */
import { close, errnoName, PIDFD, pidfdExitStatus, pidfdGetfd, SYS, WAIT } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Fd, PidfdInfo } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { tryReadStat } from "../inspect/procfs.ts";
import { cloneChild, endWithStatus } from "../ptrace/stub.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { inDump, injectRaw } from "./util.ts";

/** A pidfd. */
export interface PidfdEntry extends FileEntry {
  kind: "pidfd";
  /** The process or thread it names, as the process saw it; -1 for one ended and reaped. */
  pid: number;
  /** For a process outside the dump: its start time (clock ticks after boot, stat field 22). */
  startTime?: bigint;
  /** For an ended one (`pid` -1): its wait status (exit code << 8, or the signal). */
  exitStatus?: number;
}

/** Wait-status bit of a process that dumped core. */
const CORE_DUMPED = 0x80;

function dump(fd: Fd, ctx: FileDumpContext): PidfdEntry {
  const { pid } = fd.info as PidfdInfo;
  const what = `fd ${fd.fd} of process ${fd.pid}`;
  const entry: PidfdEntry = { id: fd.fileId, kind: "pidfd", flags: fd.flags, pid };
  if (pid === 0) {
    throw new DumpError(`${what} is a pidfd of a process outside its pid namespace`);
  }
  if (pid < 0) {
    const mine = pidfdGetfd(ctx.pidfd, fd.fd);
    let status: number | null;
    try {
      status = pidfdExitStatus(mine);
    } finally {
      close(mine);
    }
    if (status === null) {
      throw new DumpError(
        `${what} is a pidfd of a process that ended, and this kernel does not tell how it ` +
          `ended (PIDFD_INFO_EXIT): it could not be made again alike`,
      );
    }
    if (status & CORE_DUMPED) {
      throw new DumpError(`${what} is a pidfd of a process that dumped core: not restorable`);
    }
    entry.exitStatus = status;
  } else if (!inDump(pid, ctx)) {
    const st = tryReadStat(pid);
    if (!st) throw new DumpError(`${what}: the process ${pid} its pidfd names ended meanwhile`);
    entry.startTime = st.starttime;
  }
  return entry;
}

/** pidfd_open flags from the pidfd's status flags. */
const openFlags = (e: PidfdEntry) => e.flags & (PIDFD.NONBLOCK | PIDFD.THREAD);

/** A pidfd of a process that ended and was reaped, with `status` (see the header). */
function deadPidfd(e: PidfdEntry, ctx: FileRestoreContext): number {
  const inj = ctx.injector;
  const child = cloneChild(inj, { quiet: true }); // no SIGCHLD for the restored process
  let fd = -1;
  try {
    fd = Number(injectRaw(ctx, "pidfd_open", SYS.pidfd_open, child.inTarget, openFlags(e)));
  } finally {
    endWithStatus(child.host, inj.site, e.exitStatus ?? 0);
    injectRaw(ctx, "wait4", SYS.wait4, child.inTarget, 0, WAIT.__WALL, 0);
  }
  return fd;
}

function open(e: PidfdEntry, ctx: FileRestoreContext): number {
  if (e.pid < 0) return deadPidfd(e, ctx);
  const tasks = ctx.tasks ?? { restored: (id: number) => id === ctx.pid, ownNamespace: false };
  const what = `fd ${ctx.fdOfFile(e.id)} of process ${ctx.pid} (a pidfd of process ${e.pid})`;
  if (!tasks.restored(e.pid)) {
    if (tasks.ownNamespace) {
      throw new RestoreError(
        `${what}: that process is not in the image; restored in a new pid namespace, its pid ` +
          `names another process or none there`,
      );
    }
    if (tryReadStat(e.pid)?.starttime !== e.startTime) {
      throw new RestoreError(`${what}: that process (not in the image) has ended`);
    }
  }
  const r = ctx.injector.raw(SYS.pidfd_open, e.pid, openFlags(e));
  if (r < 0n) throw new RestoreError(`${what}: pidfd_open failed (${errnoName(Number(-r))})`);
  return Number(r);
}

/** pidfds. */
export const pidfdHandler: FileHandler<PidfdEntry> = {
  kind: "pidfd",
  fields: { pid: "whole", startTime: { optional: "whole" }, exitStatus: { optional: "whole" } },
  fdKinds: ["pidfd"],
  deferred: true,
  dump,
  open,
};
