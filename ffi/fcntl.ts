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

/** FD_CLOEXEC, the one descriptor flag (F_GETFD/F_SETFD). */
export const FD_CLOEXEC = 1;

/** The "current directory" descriptor of the *at() calls. */
export const AT_FDCWD = -100;

/** Status flags F_SETFL can change after open (the access mode and creation flags stay). */
export const SETFL_MASK = O.APPEND | O.NONBLOCK | O.NOATIME | O.ASYNC;

/** lseek(2) whence values, SEEK_DATA and SEEK_HOLE included. */
export const SEEK = { SET: 0, CUR: 1, END: 2, DATA: 3, HOLE: 4 } as const;

/** Lock types of `struct flock` (l_type). */
export const LOCK_TYPE = { RDLCK: 0, WRLCK: 1, UNLCK: 2 } as const;

/** flock(2) operations. */
export const LOCK = { SH: 1, EX: 2, NB: 4, UN: 8 } as const;

/** splice/tee flags. */
export const SPLICE_F = { MOVE: 1, NONBLOCK: 2, MORE: 4 } as const;
