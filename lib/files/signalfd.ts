/** signalfd: the signal mask, made again with an injected signalfd4. */
import { O } from "../../ffi/mod.ts";
import type { Fd, SignalfdInfo } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";
import { u64 } from "./util.ts";

/** A signalfd. Queued signals belong to the process/thread, not to the fd. */
export interface SignalfdEntry extends FileEntry {
  kind: "signalfd";
  /** Bit n-1 for signal n. */
  sigmask: bigint;
}

/** signalfds. */
export const signalfdHandler: FileHandler<SignalfdEntry> = {
  kind: "signalfd",
  fields: { sigmask: "whole" },
  fdKinds: ["signalfd"],
  dump(fd: Fd): SignalfdEntry {
    return {
      id: fd.fileId,
      kind: "signalfd",
      flags: fd.flags,
      sigmask: (fd.info as SignalfdInfo).sigmask,
    };
  },
  open(e: SignalfdEntry, ctx: FileRestoreContext): number {
    const mask = ctx.put(u64(e.sigmask));
    return Number(ctx.injector.call("signalfd4", -1, mask, 8, e.flags & O.NONBLOCK));
  },
};
