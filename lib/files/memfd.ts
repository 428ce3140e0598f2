/**
 * memfd descriptors. The contents (and seals) are a memory object the lead's memory code stores
 * and restores, shared with any mapping of the same memfd; this handler keeps only the object
 * id, the open flags and the position. The first read-write descriptor of a memfd in a process is
 * the memfd_create() one itself (a dup of the object's fd): a reopen through /proc/self/fd would
 * count as a writer of the file, and a file with writers cannot be executed (fexecve: ETXTBSY),
 * where memfd_create's own open file is not counted. Others reopen it, each an open file of its
 * own.
 */
import { F, O, SETFL_MASK } from "../../ffi/mod.ts";
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { reopenObject } from "./regular.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { injectSeek } from "./util.ts";

/** The objects whose memfd_create() open file was given to a descriptor, per process made. */
const handedOut = new WeakMap<object, Set<number>>();

/** An open memfd. */
export interface MemfdEntry extends FileEntry {
  kind: "memfd";
  /** The memfd's name as /proc shows it ("/memfd:NAME (deleted)"), for display. */
  name: string;
  object: number;
  position: bigint;
}

/** memfd descriptors. */
export const memfdHandler: FileHandler<MemfdEntry> = {
  kind: "memfd",
  fields: { name: "text", object: "whole", position: "whole" },
  fdKinds: ["memfd"],
  dump(fd: Fd, ctx: FileDumpContext): MemfdEntry {
    return {
      id: fd.fileId,
      kind: "memfd",
      flags: fd.flags,
      name: fd.target,
      object: ctx.storeObject(fd),
      position: fd.position,
    };
  },
  open(e: MemfdEntry, ctx: FileRestoreContext): number {
    const given = handedOut.get(ctx.injector) ?? new Set<number>();
    handedOut.set(ctx.injector, given);
    if ((e.flags & O.ACCMODE) !== O.RDWR || given.has(e.object)) {
      return reopenObject(ctx, e.object, e.flags, e.position);
    }
    given.add(e.object);
    const inj = ctx.injector;
    const fd = Number(inj.call("fcntl", ctx.objectFd(e.object), F.DUPFD, 0));
    inj.call("fcntl", fd, F.SETFL, e.flags & SETFL_MASK);
    if (e.position !== 0n) injectSeek(ctx, fd, e.position);
    return fd;
  },
};
