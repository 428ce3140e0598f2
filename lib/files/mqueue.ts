/**
 * A descriptor of a POSIX message queue (mq_open): the queue by name, opened again with
 * `mq_open` in the restored process, which names a queue of its own IPC namespace. The queue
 * itself is not the descriptor's: it lives in the IPC namespace, which keeps it after the
 * process ends (the tool's namespace: the queue as it is at restore; a container's: made again
 * with its messages by the container's restore, lib/namespaces/mqueues.ts).
 *
 * Refused: a queue removed (mq_unlink) while open, a descriptor through which a process asked to
 * be notified (mq_notify: the registration cannot be read back).
 */
import { errnoName, O, SYS } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { FileEntry } from "../image/schema.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";

/** A POSIX message queue's descriptor. */
export interface MqueueFileEntry extends FileEntry {
  kind: "mqueue";
  /** The queue's name, without its slash. */
  name: string;
}

/** The flags mq_open takes of a descriptor's own. */
const OPEN_FLAGS = O.ACCMODE | O.NONBLOCK;

/** POSIX message queue descriptors. */
export const mqueueHandler: FileHandler<MqueueFileEntry> = {
  kind: "mqueue",
  fields: { name: "text" },
  fdKinds: ["mqueue"],
  dump(fd: Fd): MqueueFileEntry {
    const what = `fd ${fd.fd} of process ${fd.pid}, POSIX message queue ${fd.target}`;
    if (fd.target.endsWith(" (deleted)")) {
      throw new DumpError(`${what}, was removed (mq_unlink) while open: it cannot be opened again`);
    }
    // Opened again through /proc, its file reads as the queue's state.
    const state = Deno.readTextFileSync(`/proc/${fd.pid}/fd/${fd.fd}`);
    const notified = Number(/NOTIFY_PID:\s*(\d+)/.exec(state)?.[1] ?? 0);
    if (notified) {
      throw new DumpError(
        `${what}: process ${notified} waits to be notified of it (mq_notify), which a dump ` +
          `cannot read back`,
      );
    }
    return { id: fd.fileId, kind: "mqueue", flags: fd.flags, name: fd.target.slice(1) };
  },
  open(e: MqueueFileEntry, ctx: FileRestoreContext): number {
    const r = ctx.injector.raw(
      SYS.mq_open,
      ctx.putString(e.name),
      (e.flags & OPEN_FLAGS) | O.CLOEXEC,
      0,
      0,
    );
    if (r < 0n) {
      throw new RestoreError(
        `cannot open POSIX message queue /${e.name} again (${errnoName(Number(-r))}): it must ` +
          `exist at restore`,
      );
    }
    return Number(r);
  },
};
