/**
 * File locks held through an open file: flock and OFD locks and leases belong to the open file
 * description, POSIX (fcntl) locks to the process, on the inode. The fdinfo of a descriptor lists
 * the locks taken through its open file (`lock:` lines in /proc/locks format); the restore takes
 * them again from inside the restored process once every fd is at its number (a lease with
 * F_SETLEASE; the signal that announces its break is the file's F_SETSIG, set with its owner by
 * fdtable.ts). The dumped process was killed before the restore, so its locks were released; a
 * lock someone else holds now makes the restore fail with the file and the lock named. A lease
 * being broken (BREAKING) cannot be taken again as it was: refused at dump.
 */
import {
  close,
  Errno,
  F,
  fcntlStruct,
  LOCK,
  LOCK_TYPE,
  O,
  open,
  syscall,
  SyscallError,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { FieldType } from "../image/validate.ts";
import type { FileRestoreContext } from "./types.ts";

/** One lock taken through an open file. */
export interface FileLock {
  /**
   * flock(2), a process's fcntl lock, an open file description's (OFD) fcntl lock, or a lease
   * (F_SETLEASE; READ or WRITE, on the whole file).
   */
  type: "FLOCK" | "POSIX" | "OFDLCK" | "LEASE";
  access: "READ" | "WRITE";
  /** First byte locked (0 for FLOCK). */
  start: bigint;
  /** Last byte locked, inclusive; null to the end of the file (always for FLOCK). */
  end: bigint | null;
}

/** The image fields of a `FileLock`. */
export const FILE_LOCK: FieldType = {
  map: {
    type: { oneOf: ["FLOCK", "POSIX", "OFDLCK", "LEASE"] },
    access: { oneOf: ["READ", "WRITE"] },
    start: "whole",
    end: { nullable: "whole" },
  },
};

const TYPES = new Set(["FLOCK", "POSIX", "OFDLCK", "LEASE"]);

/**
 * The locks in the `lock:` lines of an fdinfo text. Throws `DumpError` (naming `what`) for a lock
 * it cannot restore: a lease, a delegation, a mandatory lock.
 */
export function parseLocks(text: string, what = "fdinfo"): FileLock[] {
  const out: FileLock[] = [];
  for (const line of text.split("\n")) {
    if (!line.startsWith("lock:")) continue;
    // lock:\t1: POSIX  ADVISORY  WRITE 1234 fd:01:5678 10 19
    const f = line.slice(5).trim().split(/\s+/);
    const [, type, mode, access, , , start, end] = f;
    // A lease in force shows ACTIVE; one being broken BREAKING (or BREAKER).
    const kept = type === "LEASE" ? mode === "ACTIVE" : mode === "ADVISORY";
    if (!TYPES.has(type) || !kept || (access !== "READ" && access !== "WRITE")) {
      throw new DumpError(`${what}: cannot dump the lock "${line.slice(5).trim()}"`);
    }
    if (!/^\d+$/.test(start ?? "") || !/^(\d+|EOF)$/.test(end ?? "")) {
      throw new DumpError(`${what}: cannot parse the lock "${line.slice(5).trim()}"`);
    }
    out.push({
      type: type as FileLock["type"],
      access,
      start: BigInt(start),
      end: end === "EOF" ? null : BigInt(end),
    });
  }
  return out;
}

/** The locks taken through the open file behind `fd` of process `pid`. */
export function readLocks(pid: number, fd: number): FileLock[] {
  return parseLocks(Deno.readTextFileSync(`/proc/${pid}/fdinfo/${fd}`), `fd ${fd} of ${pid}`);
}

/** "a POSIX WRITE lock on bytes 10-19", "a FLOCK READ lock". */
export function describeLock(l: FileLock): string {
  if (l.type === "FLOCK") return `a FLOCK ${l.access} lock`;
  if (l.type === "LEASE") return `a ${l.access} lease`;
  const end = l.end === null ? "EOF" : String(l.end);
  return `a ${l.type} ${l.access} lock on bytes ${l.start}-${end}`;
}

/** struct flock (x86_64, 32 bytes) for lock `l`, from SEEK_SET, pid 0. */
export function flockStruct(l: FileLock): Uint8Array {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  v.setInt16(0, l.access === "WRITE" ? LOCK_TYPE.WRLCK : LOCK_TYPE.RDLCK, true);
  v.setInt16(2, 0, true); // SEEK_SET
  const start = BigInt(l.start);
  v.setBigInt64(8, start, true);
  v.setBigInt64(16, l.end === null ? 0n : BigInt(l.end) - start + 1n, true);
  v.setInt32(24, 0, true);
  return b;
}

/**
 * Who (seen from this process) would stop lock `l` from being taken on `path` now: a description
 * of the holder, or null when the lock is free. Uses a fresh open of our own: F_OFD_GETLK for
 * fcntl locks, a non-blocking flock taken and dropped at once for flock.
 */
export function lockConflict(path: string, l: FileLock): string | null {
  let fd: number;
  try {
    fd = Number(open(path, O.RDONLY | O.NONBLOCK));
  } catch {
    return null; // the file's own check reports a missing file
  }
  try {
    if (l.type === "LEASE") return null; // taken or refused at restore, naming who opened it
    if (l.type === "FLOCK") {
      try {
        syscall("flock", fd, (l.access === "WRITE" ? LOCK.EX : LOCK.SH) | LOCK.NB);
      } catch (err) {
        if (err instanceof SyscallError && err.errno === Errno.EAGAIN) {
          return "another open file holds a conflicting flock";
        }
        throw err;
      }
      syscall("flock", fd, LOCK.UN);
      return null;
    }
    const query = flockStruct(l);
    fcntlStruct(fd, F.OFD_GETLK, query);
    const v = new DataView(query.buffer);
    if (v.getInt16(0, true) === LOCK_TYPE.UNLCK) return null;
    const pid = v.getInt32(24, true);
    const kind = v.getInt16(0, true) === LOCK_TYPE.WRLCK ? "write" : "read";
    return pid > 0
      ? `process ${pid} holds a conflicting ${kind} lock`
      : `another open file holds a conflicting ${kind} lock`;
  } finally {
    close(fd);
  }
}

/** Why the locks of the file at `path` (found under `root`) cannot be taken again now, or null. */
export function checkLocks(
  path: string,
  locks: readonly FileLock[] | undefined,
  root = "",
): string | null {
  for (const l of locks ?? []) {
    const why = lockConflict(root + path, l);
    if (why) return `${path}: cannot take ${describeLock(l)} again: ${why}`;
  }
  return null;
}

/** Takes `locks` again through target fd `fd`; a lock held elsewhere is a `RestoreError`. */
export function restoreLocks(
  ctx: FileRestoreContext,
  fd: number,
  path: string,
  locks: readonly FileLock[] | undefined,
): void {
  for (const l of locks ?? []) {
    try {
      if (l.type === "FLOCK") {
        ctx.injector.call("flock", fd, (l.access === "WRITE" ? LOCK.EX : LOCK.SH) | LOCK.NB);
      } else if (l.type === "LEASE") {
        const type = l.access === "WRITE" ? LOCK_TYPE.WRLCK : LOCK_TYPE.RDLCK;
        ctx.injector.call("fcntl", fd, F.SETLEASE, type);
      } else {
        const cmd = l.type === "POSIX" ? F.SETLK : F.OFD_SETLK;
        ctx.injector.call("fcntl", fd, cmd, ctx.put(flockStruct(l)));
      }
    } catch (err) {
      if (
        err instanceof SyscallError &&
        (err.errno === Errno.EAGAIN || err.errno === Errno.EACCES)
      ) {
        const why = l.type === "LEASE"
          ? "the file is open elsewhere in a way the lease does not allow"
          : "it is held elsewhere";
        throw new RestoreError(
          `cannot restore: ${path}: cannot take ${describeLock(l)} again: ${why}`,
          { cause: err },
        );
      }
      throw err;
    }
  }
}
