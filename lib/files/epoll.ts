/**
 * epoll instances: the watched descriptors (tfd, events, data) from fdinfo. open() makes an empty
 * instance; finish(), once every descriptor has its final number, adds the watches again.
 *
 * Limits: a watch is keyed by the fd number it was added with. If that number was closed (the
 * file kept alive by a dup elsewhere) or now names another file, the watch cannot be found again
 * and is skipped (marked `stale` at dump). Readiness is computed afresh: an edge-triggered watch
 * whose edge was already consumed may report once more.
 */
import { Errno, SyscallError } from "../../ffi/mod.ts";
import type { EpollInfo, Fd } from "../fds.ts";
import type { FileEntry } from "../schema.ts";
import type { FileHandler, FileRestoreContext } from "./types.ts";

/** One watched descriptor. */
export interface EpollWatch {
  /** The fd number in the dumped process. */
  tfd: number;
  events: number;
  data: bigint;
  /** The tfd no longer named the watched file at dump time: not restored. */
  stale?: boolean;
}

/** An epoll instance. */
export interface EpollEntry extends FileEntry {
  kind: "epoll";
  watches: EpollWatch[];
}

const EPOLL_CTL_ADD = 1;

/** The packed x86_64 `struct epoll_event`: u32 events, u64 data. */
export function encodeEpollEvent(events: number, data: bigint): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint32(0, events >>> 0, true);
  v.setBigUint64(4, BigInt.asUintN(64, data), true);
  return b;
}

function inodeOf(pid: number, fd: number): bigint | null {
  try {
    return BigInt(Deno.statSync(`/proc/${pid}/fd/${fd}`).ino ?? -1);
  } catch {
    return null;
  }
}

/** epoll instances. */
export const epollHandler: FileHandler<EpollEntry> = {
  kind: "epoll",
  fdKinds: ["epoll"],
  dump(fd: Fd): EpollEntry {
    const watches = (fd.info as EpollInfo).targets.map((t): EpollWatch => {
      const w: EpollWatch = { tfd: t.tfd, events: t.events, data: t.data };
      if (inodeOf(fd.pid, t.tfd) !== t.ino) w.stale = true;
      return w;
    });
    return { id: fd.fileId, kind: "epoll", flags: fd.flags, watches };
  },
  open(_e: EpollEntry, ctx: FileRestoreContext): number {
    return Number(ctx.injector.call("epoll_create1", 0));
  },
  finish(e: EpollEntry, fd: number, ctx: FileRestoreContext): void {
    for (const w of e.watches) {
      const target = ctx.finalFds.get(w.tfd);
      if (w.stale || target === undefined) continue;
      const ev = ctx.put(encodeEpollEvent(w.events, w.data));
      try {
        ctx.injector.call("epoll_ctl", fd, EPOLL_CTL_ADD, target, ev);
      } catch (err) {
        // The same file reached through two numbers was watched once: already there.
        if (!(err instanceof SyscallError && err.errno === Errno.EEXIST)) throw err;
      }
    }
  },
};
