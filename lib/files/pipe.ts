/**
 * Pipes and FIFOs, with the bytes buffered in them.
 *
 * Dump: the data is peeked, never consumed: the tool opens /proc/PID/fd/N read-only and
 * non-blocking (a read end of the same pipe, even for a write end), `tee()`s it into a pipe of
 * its own and reads that copy. The data is stored once per pipe, on the first end dumped with a
 * given dump context.
 *
 * Restore of a pipe: ends are keyed by the dumped pipe inode, within one restore context. The
 * first end opened makes the pipe with an injected pipe2, takes both ends into the tool with
 * pidfd_getfd (so no spare descriptor sits in the target where the orchestrator could dup2 over
 * it), closes the unused end in the target and sets the size. The other end, if the image has
 * it, is the tool's copy handed back to the target (an injected pidfd_getfd on the tool), so
 * both ends are the very open files one pipe2 made. The data is written back from the tool in
 * open() already (the size is set first, so it never blocks). finish() drops the tool's ends: a
 * pipe whose other end was not in the image then has one end only, as it had in this process
 * (the reader sees EOF after the data, a writer gets EPIPE). A packet-mode (O_DIRECT) pipe gets
 * its data back as one packet: packet boundaries are not kept.
 *
 * FIFOs are reopened by path. The tool first opens the FIFO O_RDWR itself, so the target's open
 * never blocks and never fails with ENXIO, and the target opens it non-blocking, then clears
 * O_NONBLOCK if the original was blocking. The data is written back only if the FIFO is empty:
 * when another process still holds it open, the bytes are still there. A FIFO that had been
 * removed from the filesystem is made again at its path with its mode and owner, opened, and
 * removed again once every process of the restore has it (removed.ts).
 */
import {
  close,
  F,
  O,
  open,
  pidfdGetfd,
  pipe2,
  read,
  SETFL_MASK,
  SPLICE_F,
  tee,
  writeAll,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Fd } from "../inspect/fds.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import type { FileEntry } from "../image/schema.ts";
import { recreate, REMOVED_FIELDS, type RemovedAttributes, whyNotRecreatable } from "./removed.ts";
import type { FileDumpContext, FileHandler, FileRestoreContext } from "./types.ts";
import { bytesQueued, fcntl, injectClose, injectOpen, reopenFlags } from "./util.ts";

/** One end of a pipe. */
export interface PipeEntry extends FileEntry {
  kind: "pipe";
  /** The pipe's inode when dumped: ends with the same one are the same pipe. */
  pipe: bigint;
  end: "read" | "write";
  /** Capacity in bytes (F_GETPIPE_SZ). */
  size: number;
  /** Bytes buffered in the pipe (on one end per pipe only; empty on the others). */
  data: Uint8Array;
}

/** An open FIFO. */
export interface FifoEntry extends FileEntry {
  kind: "fifo";
  /** Its path (without " (deleted)"). */
  path: string;
  inode: bigint;
  size: number;
  data: Uint8Array;
  /** It had been removed (unlinked): its mode and owner, to make it again alike. */
  removed?: RemovedAttributes;
}

/** Reads the bytes in the pipe behind fd `n` of `pid` without consuming them; with its size. */
export function peekPipe(pid: number, n: number): { data: Uint8Array; size: number } {
  const src = open(`/proc/${pid}/fd/${n}`, O.RDONLY | O.NONBLOCK);
  let ends: [number, number] | undefined;
  try {
    const size = fcntl(src, F.GETPIPE_SZ);
    const queued = bytesQueued(src);
    if (queued === 0) return { data: new Uint8Array(0), size };
    ends = pipe2(O.CLOEXEC | O.NONBLOCK);
    // As many slots as the source, so one tee copies every buffer.
    fcntl(ends[1], F.SETPIPE_SZ, size);
    const copied = tee(src, ends[1], queued, SPLICE_F.NONBLOCK);
    if (copied !== queued) {
      throw new DumpError(`pipe of fd ${n} of ${pid}: tee copied ${copied} of ${queued} bytes`);
    }
    const data = new Uint8Array(queued);
    for (let off = 0; off < queued;) off += read(ends[0], data.subarray(off));
    return { data, size };
  } finally {
    close(src);
    if (ends) {
      close(ends[0]);
      close(ends[1]);
    }
  }
}

/** What readlink of a removed FIFO ends with. */
const DELETED = " (deleted)";

// Pipes whose data is already in the image, per dump context.
const dumped = new WeakMap<object, Set<bigint>>();

function takeData(ctx: FileDumpContext, inode: bigint): boolean {
  const scope = ctx.scope ?? ctx;
  let seen = dumped.get(scope);
  if (!seen) dumped.set(scope, seen = new Set());
  if (seen.has(inode)) return false;
  seen.add(inode);
  return true;
}

// A pipe being restored: both ends held by the tool until finish().
interface PipeState {
  read: number;
  write: number;
  closed: boolean;
}

const restoring = new WeakMap<object, Map<string, PipeState>>();

function stateOf(ctx: FileRestoreContext): Map<string, PipeState> {
  const scope = ctx.scope ?? ctx;
  let m = restoring.get(scope);
  if (!m) restoring.set(scope, m = new Map());
  return m;
}

function closeState(st: PipeState): void {
  if (st.closed) return;
  st.closed = true;
  close(st.read);
  if (st.write !== st.read) close(st.write); // a FIFO's one O_RDWR fd is both
}

/**
 * Closes every pipe or FIFO end the tool still holds for `ctx` (finish() does it per pipe; within
 * a tree, and for a restore that stops early, the scope hooks call this).
 */
export function releasePipes(ctx: FileRestoreContext | object): void {
  const scope = (ctx as FileRestoreContext).scope ?? ctx;
  for (const st of restoring.get(scope)?.values() ?? []) closeState(st);
  restoring.delete(scope);
}

/** Sets the status flags the original had (O_NONBLOCK …) on a target fd. */
function setStatusFlags(ctx: FileRestoreContext, fd: number, flags: number): void {
  ctx.injector.call("fcntl", fd, F.SETFL, flags & SETFL_MASK);
}

function refill(write: number, size: number, data: Uint8Array): void {
  if (size > 0) fcntl(write, F.SETPIPE_SZ, size);
  if (data.length) writeAll(write, data);
}

/**
 * Gives the target the tool's copy of a pipe end: the very open file pipe2 made, taken with an
 * injected pidfd_getfd on the tool. Where the target may not do that, it opens
 * /proc/<tool>/fd/<end> instead: a new open file on the same pipe (which has O_LARGEFILE set).
 */
function secondEnd(ctx: FileRestoreContext, mine: number, end: "read" | "write"): number {
  const fd = ctx.handIn(mine);
  if (typeof fd === "number") return fd;
  const mode = end === "read" ? O.RDONLY : O.WRONLY;
  return injectOpen(ctx, `/proc/${Deno.pid}/fd/${mine}`, mode | O.NONBLOCK);
}

function openPipe(e: PipeEntry, ctx: FileRestoreContext): number {
  const pipes = stateOf(ctx);
  const key = `pipe:${e.pipe}`;
  let st = pipes.get(key);
  let fd: number;
  if (!st) {
    const addr = ctx.put(new Uint8Array(8));
    // O_DIRECT (packet mode) can only be had from pipe2; O_NONBLOCK is set per end below.
    ctx.injector.call("pipe2", addr, e.flags & O.DIRECT);
    const [r, w] = new Int32Array(ctx.memory.read(addr, 8).slice().buffer);
    st = { read: pidfdGetfd(ctx.pidfd, r), write: pidfdGetfd(ctx.pidfd, w), closed: false };
    pipes.set(key, st);
    fd = e.end === "read" ? r : w;
    injectClose(ctx, e.end === "read" ? w : r);
    // Blocking writes of at most the capacity into an empty pipe: they cannot block.
    refill(st.write, e.size, new Uint8Array(0));
  } else {
    if (st.closed) throw new RestoreError(`pipe ${e.pipe}: opened after its finish()`);
    fd = secondEnd(ctx, e.end === "read" ? st.read : st.write, e.end);
  }
  if (e.data.length) writeAll(st.write, e.data);
  setStatusFlags(ctx, fd, e.flags);
  return fd;
}

/** Pipe ends. */
export const pipeHandler: FileHandler<PipeEntry> = {
  kind: "pipe",
  fields: {
    pipe: "whole",
    end: { oneOf: ["read", "write"] },
    size: "whole",
    data: "bytes",
  },
  fdKinds: ["pipe"],
  dump(fd: Fd, ctx: FileDumpContext): PipeEntry {
    const { data, size } = peekPipe(fd.pid, fd.fd);
    return {
      id: fd.fileId,
      kind: "pipe",
      flags: fd.flags,
      pipe: fd.inode,
      end: (fd.flags & O.ACCMODE) === O.WRONLY ? "write" : "read",
      size,
      data: takeData(ctx, fd.inode) ? data : new Uint8Array(0),
    };
  },
  open: openPipe,
  finish(e: PipeEntry, _fd: number, ctx: FileRestoreContext): void {
    // Within a tree another process may still need the other end: the scope releases it.
    if (ctx.scope) return;
    const st = stateOf(ctx).get(`pipe:${e.pipe}`);
    if (st) closeState(st);
  },
  release: releasePipes,
};

function openFifo(e: FifoEntry, ctx: FileRestoreContext): number {
  const fifos = stateOf(ctx);
  const key = `fifo:${e.path}`;
  let st = fifos.get(key);
  if (!st) {
    const root = mountRoot(ctx.pid);
    if (e.removed) recreate(ctx.scope ?? ctx, e.path, "fifo", e.removed, `fifo ${e.path}`, root);
    // The tool's own reader and writer: keeps the FIFO open (and its data alive) meanwhile.
    const rw = open(root + e.path, O.RDWR | O.NONBLOCK);
    st = { read: rw, write: rw, closed: false };
    fifos.set(key, st);
  }
  if (st.closed) throw new RestoreError(`fifo ${e.path}: opened after its finish()`);
  if (e.data.length && bytesQueued(st.read) === 0) refill(st.write, e.size, e.data);
  const fd = injectOpen(ctx, e.path, reopenFlags(e.flags) | O.NONBLOCK);
  setStatusFlags(ctx, fd, e.flags);
  return fd;
}

/** FIFOs (named pipes). */
export const fifoHandler: FileHandler<FifoEntry> = {
  kind: "fifo",
  fields: {
    path: "text",
    inode: "whole",
    size: "whole",
    data: "bytes",
    removed: { optional: { map: REMOVED_FIELDS } },
  },
  fdKinds: ["fifo"],
  dump(fd: Fd, ctx: FileDumpContext): FifoEntry {
    const removed = fd.target.endsWith(DELETED);
    const path = removed ? fd.target.slice(0, -DELETED.length) : fd.target;
    if (!path.startsWith("/")) {
      throw new DumpError(`fd ${fd.fd} of ${fd.pid}: FIFO ${fd.target} has no path to reopen`);
    }
    const { data, size } = peekPipe(fd.pid, fd.fd);
    const entry: FifoEntry = {
      id: fd.fileId,
      kind: "fifo",
      flags: fd.flags,
      path,
      inode: fd.inode,
      size,
      data: takeData(ctx, fd.inode) ? data : new Uint8Array(0),
    };
    if (removed) {
      const st = Deno.statSync(`/proc/${fd.pid}/fd/${fd.fd}`);
      entry.removed = { mode: (st.mode ?? 0) & 0o7777, uid: st.uid ?? 0, gid: st.gid ?? 0 };
    }
    return entry;
  },
  check(e: FifoEntry, root = ""): string | null {
    if (e.removed) return whyNotRecreatable(e.path, "fifo", root);
    try {
      return Deno.statSync(root + e.path).isFifo ? null : `${e.path} is no longer a FIFO`;
    } catch {
      return `FIFO ${e.path} no longer exists`;
    }
  },
  open: openFifo,
  finish(e: FifoEntry, _fd: number, ctx: FileRestoreContext): void {
    if (ctx.scope) return; // released with the scope, once every process has its end
    const st = stateOf(ctx).get(`fifo:${e.path}`);
    if (st) closeState(st);
  },
  release: releasePipes, // the pipes' state holds the FIFOs too
};
