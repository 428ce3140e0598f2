/**
 * epoll instances: the watched descriptors (tfd, events, data) from fdinfo. open() makes an empty
 * instance; finish(), once every descriptor has its final number, adds the watches again. Both
 * are deferred until every process and thread of the restore exists, so that the pidfds it may
 * watch are in place (`FileHandler.deferred`).
 *
 * Limits: a watch is keyed by the fd number it was added with. If that number was closed (the
 * file kept alive by a dup elsewhere) or now names another file, the watch cannot be found again
 * and is skipped (marked `stale` at dump). Readiness is computed afresh: an edge-triggered watch
 * whose edge was already consumed may report once more.
 *
 * A fired EPOLLONESHOT watch is disarmed: the kernel keeps only its flag bits (ONESHOT, ET …).
 * epoll_ctl cannot add it that way (it always adds EPOLLERR|EPOLLHUP), so it is added armed for
 * what its file is ready for right now (an injected poll) and fired at once with an injected
 * epoll_wait, which disarms it exactly as it was. These go first, while every watch already in
 * the instance is disarmed, so the wait can only report the one just added. A file ready for
 * nothing cannot be fired: its watch comes back armed for errors and hangups only.
 */
import { Errno, SYS, SyscallError } from "../../ffi/mod.ts";
import type { EpollInfo, Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
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
/** EPOLLWAKEUP | EPOLLONESHOT | EPOLLET | EPOLLEXCLUSIVE: what the kernel keeps of a fired
 * one-shot watch (EP_PRIVATE_BITS). */
const FLAG_BITS = 0xf0000000;
const EPOLLONESHOT = 1 << 30;
/** POLLIN, POLLPRI, POLLOUT, POLLRDNORM, POLLRDBAND, POLLWRNORM, POLLWRBAND, POLLRDHUP. */
const READINESS_BITS = 0x23f7;

/** The packed x86_64 `struct epoll_event`: u32 events, u64 data. */
export function encodeEpollEvent(events: number, data: bigint): Uint8Array {
  const b = new Uint8Array(12);
  const v = new DataView(b.buffer);
  v.setUint32(0, events >>> 0, true);
  v.setBigUint64(4, BigInt.asUintN(64, data), true);
  return b;
}

/** A one-shot watch that fired: only flag bits are left of its events. */
function isDisarmed(w: EpollWatch): boolean {
  return (w.events & EPOLLONESHOT) !== 0 && (w.events & ~FLAG_BITS) === 0;
}

/** What a target fd is ready for now (poll events), through an injected poll with no wait. */
function readiness(ctx: FileRestoreContext, fd: number): number {
  const pollfd = new Uint8Array(8);
  const v = new DataView(pollfd.buffer);
  v.setInt32(0, fd, true);
  v.setInt16(4, READINESS_BITS, true);
  const addr = ctx.put(pollfd);
  if (ctx.injector.raw(SYS.poll, addr, 1, 0) !== 1n) return 0;
  const revents = new DataView(ctx.memory.read(addr, 8).slice().buffer).getUint16(6, true);
  return revents & READINESS_BITS;
}

/** Adds one watch; false when the file was already watched through another fd number. */
function addWatch(
  ctx: FileRestoreContext,
  epfd: number,
  target: number,
  events: number,
  data: bigint,
): boolean {
  const ev = ctx.put(encodeEpollEvent(events, data));
  try {
    ctx.injector.call("epoll_ctl", epfd, EPOLL_CTL_ADD, target, ev);
    return true;
  } catch (err) {
    // The same file reached through two numbers was watched once: already there.
    if (err instanceof SyscallError && err.errno === Errno.EEXIST) return false;
    throw err;
  }
}

/**
 * Collects the one event of a one-shot watch just added, which disarms it. (The process is
 * frozen, so the file is still ready; were it not, the watch would merely stay armed.)
 */
function fireOnce(ctx: FileRestoreContext, epfd: number): void {
  ctx.injector.call("epoll_wait", epfd, ctx.put(new Uint8Array(12)), 1, 0);
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
  fields: {
    watches: {
      list: { map: { tfd: "whole", events: "whole", data: "whole", stale: { optional: "bool" } } },
    },
  },
  fdKinds: ["epoll"],
  deferred: true,
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
    const live = e.watches.filter((w) => !w.stale && ctx.finalFds.has(w.tfd));
    // Disarmed one-shot watches first: see the header.
    const order = [...live.filter(isDisarmed), ...live.filter((w) => !isDisarmed(w))];
    for (const w of order) {
      const target = ctx.finalFds.get(w.tfd)!;
      const ready = isDisarmed(w) ? readiness(ctx, target) : 0;
      if (!addWatch(ctx, fd, target, w.events | ready, w.data)) continue;
      if (ready) fireOnce(ctx, fd);
    }
  },
};
