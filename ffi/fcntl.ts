/** File-descriptor ABI: open(2) flags, fcntl(2) commands, file types, seek modes, seals. */

/** open(2) flags. */
export const O = {
  RDONLY: 0,
  WRONLY: 1,
  RDWR: 2,
  ACCMODE: 3,
  CREAT: 0o100,
  EXCL: 0o200,
  NOCTTY: 0o400,
  TRUNC: 0o1000,
  APPEND: 0o2000,
  NONBLOCK: 0o4000,
  DSYNC: 0o10000,
  DIRECT: 0o40000,
  LARGEFILE: 0o100000,
  DIRECTORY: 0o200000,
  NOFOLLOW: 0o400000,
  NOATIME: 0o1000000,
  ASYNC: 0o20000,
  CLOEXEC: 0o2000000,
  PATH: 0o10000000,
  /** An unnamed regular file in the directory given (with O_DIRECTORY, as the kernel wants). */
  TMPFILE: 0o20200000,
} as const;

/** fcntl(2) commands. */
export const F = {
  DUPFD: 0,
  GETFD: 1,
  SETFD: 2,
  GETFL: 3,
  SETFL: 4,
  GETLK: 5,
  SETLK: 6,
  SETLKW: 7,
  SETOWN: 8,
  GETOWN: 9,
  SETSIG: 10,
  GETSIG: 11,
  SETOWN_EX: 15,
  GETOWN_EX: 16,
  OFD_GETLK: 36,
  OFD_SETLK: 37,
  OFD_SETLKW: 38,
  SETLEASE: 1024,
  GETLEASE: 1025,
  DUPFD_CLOEXEC: 1030,
  SETPIPE_SZ: 1031,
  GETPIPE_SZ: 1032,
  ADD_SEALS: 1033,
  GET_SEALS: 1034,
} as const;

/** Who receives an open file's I/O signals (`struct f_owner_ex` type, F_GETOWN_EX/F_SETOWN_EX). */
export const F_OWNER = { TID: 0, PID: 1, PGRP: 2 } as const;

/** The owner of an open file's I/O signals: a thread, a process or a process group, by id. */
export interface FileOwner {
  /** `F_OWNER.TID`, `F_OWNER.PID` or `F_OWNER.PGRP`. */
  type: number;
  /** The thread, process or group id as the process sees it; 0 for none (or one that is gone). */
  pid: number;
}

/** Size of `struct f_owner_ex`. */
export const F_OWNER_EX_SIZE = 8;

/** Encodes `struct f_owner_ex` (int type; pid_t pid). */
export function encodeFileOwner(owner: FileOwner): Uint8Array {
  return new Uint8Array(new Int32Array([owner.type, owner.pid]).buffer);
}

/** Decodes `struct f_owner_ex`. */
export function decodeFileOwner(bytes: Uint8Array): FileOwner {
  const v = new DataView(bytes.buffer, bytes.byteOffset, F_OWNER_EX_SIZE);
  return { type: v.getInt32(0, true), pid: v.getInt32(4, true) };
}

/** FD_CLOEXEC, the one descriptor flag (F_GETFD/F_SETFD). */
export const FD_CLOEXEC = 1;

/** The "current directory" descriptor of the *at() calls. */
export const AT_FDCWD = -100;

/** Status flags F_SETFL can change after open (the access mode and creation flags stay). */
export const SETFL_MASK = O.APPEND | O.NONBLOCK | O.NOATIME | O.ASYNC;

/** lseek(2) whence values, SEEK_DATA and SEEK_HOLE included. */
export const SEEK = { SET: 0, CUR: 1, END: 2, DATA: 3, HOLE: 4 } as const;

/** `posix_fadvise` advice: `WILLNEED` reads a range into the page cache in the background. */
export const FADV = { WILLNEED: 3 } as const;

/** __O_SYNC, the bit O_SYNC adds to O_DSYNC. */
export const O_SYNC_BIT = 0o4000000;

/** Lock types of `struct flock` (l_type), also the lease types of F_SETLEASE/F_GETLEASE. */
export const LOCK_TYPE = { RDLCK: 0, WRLCK: 1, UNLCK: 2 } as const;

/** flock(2) operations. */
export const LOCK = { SH: 1, EX: 2, NB: 4, UN: 8 } as const;

/** splice/tee flags. */
export const SPLICE_F = { MOVE: 1, NONBLOCK: 2, MORE: 4 } as const;
