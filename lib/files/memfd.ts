/**
 * memfd descriptors. The contents (and seals) are a memory object the lead's memory code stores
 * and restores, shared with any mapping of the same memfd; this handler keeps only the object
 * id, the open flags and the position, and reopens the object through /proc/self/fd, which gives
 * an open file of its own (so flags and position are not shared with the object's fd).
 */
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { reopenObject } from "./regular.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";

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
    return reopenObject(ctx, e.object, e.flags, e.position);
  },
};
