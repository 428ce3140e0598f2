/** Small pieces the file handlers share: flag masks, fcntl, and opening files inside the target. */
import { AT_FDCWD, O, SOCK_IOCTL, SYS, syscall, SyscallError, tryIoctlInt } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import { readStatus } from "../inspect/procfs.ts";
import type { FileDumpContext, FileRestoreContext, PathOpen } from "./types.ts";

/** open(2) flags that only mean something at creation: never replayed. O_CLOEXEC is per-fd and
 * set by the orchestrator, so handlers make their fds without it. */
const CREATION_ONLY = O.CREAT | O.EXCL | O.TRUNC | O.CLOEXEC;

/** The flags to reopen an open file with, from its dumped fdinfo flags. */
export function reopenFlags(flags: number): number {
  return flags & ~CREATION_ONLY;
}

/** fcntl in this process. */
export function fcntl(fd: number, cmd: number, arg = 0): number {
  return Number(syscall("fcntl", fd, cmd, arg));
}

/** Bytes waiting in a pipe or FIFO (FIONREAD), in this process. */
export function bytesQueued(fd: number): number {
  const n = tryIoctlInt(fd, SOCK_IOCTL.FIONREAD);
  if (n < 0) throw new SyscallError("ioctl(FIONREAD)", [fd], -n);
  return n;
}

/** Runs a syscall in the target by number (for ones `SYS` does not name); throws on failure. */
export function injectRaw(
  ctx: FileRestoreContext,
  name: string,
  nr: number,
  ...args: (bigint | number)[]
): bigint {
  const r = ctx.injector.raw(nr, ...args);
  if (r < 0n && r > -4096n) throw new SyscallError(`${name} in ${ctx.pid}`, args, Number(-r));
  return r;
}

/**
 * Runs `body` (syscalls injected into the target's main thread) with effective uid `uid` and gid
 * `gid` on that thread, where the kernel records who made a call (the peer credentials a UNIX
 * connect() or listen() leaves). The process being restored still has the stub's ids, root's: a
 * raw setres[ug]id changes the calling thread only, and its saved ids stay 0, so it takes root's
 * back after.
 */
export function asIds<T>(ctx: FileRestoreContext, uid: number, gid: number, body: () => T): T {
  if (!uid && !gid) return body();
  injectRaw(ctx, "setresgid", SYS.setresgid, -1, gid, -1);
  injectRaw(ctx, "setresuid", SYS.setresuid, -1, uid, -1);
  try {
    return body();
  } finally {
    injectRaw(ctx, "setresuid", SYS.setresuid, -1, 0, -1);
    injectRaw(ctx, "setresgid", SYS.setresgid, -1, 0, -1);
  }
}

/** openat(AT_FDCWD, path, flags, 0) inside the target; returns the new fd. */
export function injectOpen(ctx: FileRestoreContext, path: string, flags: number): number {
  return Number(ctx.injector.call("openat", AT_FDCWD, ctx.putString(path), flags, 0));
}

/** A file that is a path opened again (`PathOpen`), opened in the target; returns its fd. */
export function openPath(ctx: FileRestoreContext, how: PathOpen): number {
  const fd = injectOpen(ctx, how.path, how.flags);
  if (how.position === 0n) return fd;
  try {
    injectSeek(ctx, fd, how.position);
  } catch (err) {
    if (!how.seekMayFail) throw err;
  }
  return fd;
}

/** Whether something is at `path` (a dangling symlink counts: lstat). */
export function entryExists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/** socketpair() inside the target; returns its two fds. */
export function injectSocketpair(
  ctx: FileRestoreContext,
  family: number,
  type: number,
  protocol: number,
): [number, number] {
  const sv = ctx.put(new Uint8Array(8));
  injectRaw(ctx, "socketpair", SYS.socketpair, family, type, protocol, sv);
  const [a, b] = new Int32Array(ctx.memory.read(sv, 8).slice().buffer);
  return [a, b];
}

/** Closes an fd of the target. */
export function injectClose(ctx: FileRestoreContext, fd: number): void {
  ctx.injector.call("close", fd);
}

/** Sets the file position of a target fd (SEEK_SET). */
export function injectSeek(ctx: FileRestoreContext, fd: number, position: bigint): void {
  ctx.injector.call("lseek", fd, position, 0);
}

/** Little-endian u64 bytes. */
export function u64(value: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
  return b;
}

/** Little-endian i32 bytes. */
export function i32(value: number): Uint8Array {
  return new Uint8Array(new Int32Array([value]).buffer);
}

/** The little-endian i32 at byte `at` of `bytes`. */
export function readI32(bytes: Uint8Array, at = 0): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getInt32(at, true);
}

/** The little-endian u32 at byte `at` of `bytes`. */
export function readU32(bytes: Uint8Array, at = 0): number {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.length).getUint32(at, true);
}

/** `FileRestoreContext.handIn`, throwing a RestoreError about `what` when the target cannot. */
export function handToTarget(ctx: FileRestoreContext, mine: number, what: string): number {
  const fd = ctx.handIn(mine);
  if (typeof fd === "string") throw new RestoreError(`${what}: ${fd}`);
  return fd;
}

/**
 * Gives up a half-made open file: closes target fd `fd` (if any) and throws `err` as a
 * RestoreError about `what`.
 */
export function abandonFd(ctx: FileRestoreContext, fd: number, what: string, err: unknown): never {
  if (fd >= 0) {
    try {
      injectClose(ctx, fd);
    } catch { /* the error thrown says more */ }
  }
  if (err instanceof RestoreError) throw err;
  throw new RestoreError(`${what}: ${(err as Error).message}`);
}

/** Whether task `id` (a pid, or a tid whose process is) is one of the dumped processes. */
export function inDump(id: number, ctx: FileDumpContext): boolean {
  const pids = ctx.pids ?? [ctx.pid];
  if (pids.includes(id)) return true;
  try {
    return pids.includes(Number(readStatus(id).get("Tgid")));
  } catch {
    return false;
  }
}
