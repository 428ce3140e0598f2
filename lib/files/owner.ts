/**
 * Who gets an open file's I/O signals (F_SETOWN / F_SETOWN_EX: a thread, a process or a process
 * group) and which signal it sends (F_SETSIG), for every kind of file: SIGIO-driven programs, and
 * lease breaks. fdinfo does not show them, so they are asked inside the process with an injected
 * fcntl per open file at dump, and set again inside the restored one once every process and
 * thread of the restore exists (an owner may be any of them).
 *
 * Owners are ids as the process sees them. One in the image is the restored process or thread of
 * that id. One outside it is set again only in the same pid namespace where it still exists;
 * restored into a new pid namespace, where the id means nothing or another process, the restore
 * is refused naming the fd and the owner.
 */
import {
  close,
  decodeFileOwner,
  encodeFileOwner,
  Errno,
  errnoName,
  F,
  F_OWNER,
  F_OWNER_EX_SIZE,
  fcntlStruct,
  type FileOwner,
  O,
  pidfdGetfd,
  SYS,
  syscall,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { FileEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { RestoredTasks } from "./types.ts";

/** An open file's owner and signal as the image keeps them (both absent: never set). */
export type OwnerState = Pick<FileEntry, "owner" | "signal">;

const OWNER_NAMES: Record<number, string> = {
  [F_OWNER.TID]: "thread",
  [F_OWNER.PID]: "process",
  [F_OWNER.PGRP]: "process group",
};

/** "thread 123", "process group 45", for messages. */
export function describeOwner(owner: FileOwner): string {
  return `${OWNER_NAMES[owner.type] ?? `owner type ${owner.type}`} ${owner.pid}`;
}

/**
 * The owner and signal of the open file behind fd `fd` of the process `inj` runs in (whose
 * status flags are `flags`). O_PATH descriptors have neither. Asked of a copy of the file taken
 * with pidfd_getfd through `pidfd` when given (two syscalls of the tool's instead of two injected
 * ones: the owner is the open file's, and the tool sees pids as the process does when it is in
 * its pid namespace, which the caller vouches for); else, or when no copy can be had, inside it.
 */
export function readOwner(inj: Injector, fd: number, flags: number, pidfd?: number): OwnerState {
  if (flags & O.PATH) return {};
  const copy = pidfd === undefined ? -1 : copyOf(pidfd, fd); // else asked inside it
  if (copy >= 0) {
    try {
      return copiedOwner(copy);
    } finally {
      close(copy);
    }
  }
  const at = inj.put(new Uint8Array(F_OWNER_EX_SIZE), 0);
  const got = inj.raw(SYS.fcntl, fd, F.GETOWN_EX, at) === 0n;
  return ownerState(
    got ? inj.mem.read(at, F_OWNER_EX_SIZE) : undefined,
    Number(inj.raw(SYS.fcntl, fd, F.GETSIG)),
  );
}

/** The tool's copy of descriptor `fd` of the process `pidfd` names (pidfd_getfd); -1 if none. */
export function copyOf(pidfd: number, fd: number): number {
  try {
    return pidfdGetfd(pidfd, fd);
  } catch {
    return -1;
  }
}

/**
 * The owner and signal of an open file, asked of `copy`, the tool's copy of it (pidfd_getfd, not
 * of an O_PATH descriptor); as `readOwner`, the tool vouches that it sees pids as the process does.
 */
export function copiedOwner(copy: number): OwnerState {
  const raw = new Uint8Array(F_OWNER_EX_SIZE);
  let got = true;
  try {
    fcntlStruct(copy, F.GETOWN_EX, raw);
  } catch {
    got = false;
  }
  return ownerState(got ? raw : undefined, Number(syscall("fcntl", copy, F.GETSIG)));
}

/** The state F_GETOWN_EX (its struct, when it answered) and F_GETSIG gave. */
export function ownerState(raw: Uint8Array | undefined, signal: number): OwnerState {
  const state: OwnerState = {};
  if (raw) {
    const owner = decodeFileOwner(raw);
    if (owner.type !== F_OWNER.TID || owner.pid !== 0) state.owner = owner;
  }
  if (signal > 0) state.signal = signal;
  return state;
}

/**
 * Sets the signal and owner of `entry` on target fd `fd` (`what` names it in errors). The owner
 * must be restored, or (outside a new pid namespace) still exist.
 */
export function restoreOwner(
  inj: Injector,
  fd: number,
  entry: OwnerState,
  tasks: RestoredTasks,
  what: string,
): void {
  if (entry.signal) inj.call("fcntl", fd, F.SETSIG, entry.signal);
  const owner = entry.owner;
  if (!owner) return;
  const who = describeOwner(owner);
  if (owner.pid !== 0 && !tasks.restored(owner.pid) && tasks.ownNamespace) {
    throw new RestoreError(
      `${what}: its I/O signals went to ${who}, which is not in the image: restored in a new ` +
        `pid namespace, that id is not the same process there`,
    );
  }
  const r = inj.raw(SYS.fcntl, fd, F.SETOWN_EX, inj.put(encodeFileOwner(owner), 0));
  if (r === -BigInt(Errno.ESRCH)) {
    throw new RestoreError(`${what}: its I/O signals went to ${who}, which no longer exists`);
  }
  if (r < 0n) {
    throw new RestoreError(`${what}: F_SETOWN_EX ${who} failed (${errnoName(Number(-r))})`);
  }
}
