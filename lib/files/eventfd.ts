/** eventfd: its counter and semaphore mode, made again with an injected eventfd2. */
import { O } from "../../ffi/mod.ts";
import type { EventfdInfo, Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";
import { u64 } from "./util.ts";

/** An eventfd. */
export interface EventfdEntry extends FileEntry {
  kind: "eventfd";
  count: bigint;
  /** EFD_SEMAPHORE; false also when the kernel's fdinfo does not say. */
  semaphore: boolean;
}

const EFD_SEMAPHORE = 1;

/** eventfds. */
export const eventfdHandler: FileHandler<EventfdEntry> = {
  kind: "eventfd",
  fields: { count: "whole", semaphore: "bool" },
  fdKinds: ["eventfd"],
  dump(fd: Fd): EventfdEntry {
    const info = fd.info as EventfdInfo;
    return {
      id: fd.fileId,
      kind: "eventfd",
      flags: fd.flags,
      count: info.count,
      semaphore: info.semaphore ?? false,
    };
  },
  open(e: EventfdEntry, ctx: FileRestoreContext): number {
    // eventfd2 takes an unsigned int; a larger count is written after creation.
    const small = e.count <= 0xffffffffn;
    const flags = (e.semaphore ? EFD_SEMAPHORE : 0) | (e.flags & O.NONBLOCK);
    const fd = Number(ctx.injector.call("eventfd2", small ? e.count : 0n, flags));
    if (!small) ctx.injector.call("write", fd, ctx.put(u64(e.count)), 8);
    return fd;
  },
};
