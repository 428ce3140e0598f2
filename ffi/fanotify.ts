/** fanotify(7): fanotify_init(2) and fanotify_mark(2) flags (linux/fanotify.h). */

/** fanotify_mark(2) flags. */
export const FAN_MARK = {
  ADD: 0x1,
  REMOVE: 0x2,
  DONT_FOLLOW: 0x4,
  ONLYDIR: 0x8,
  /** Marks the mount the path is on. */
  MOUNT: 0x10,
  /** The mask given is the ignored mask (the old form of IGNORE). */
  IGNORED_MASK: 0x20,
  /** The ignored mask survives a modification of the file. */
  IGNORED_SURV_MODIFY: 0x40,
  FLUSH: 0x80,
  /** Marks the whole filesystem the path is on. */
  FILESYSTEM: 0x100,
  /** The mark does not pin the inode in memory. */
  EVICTABLE: 0x200,
  /** The mask given is the ignore mask (with events on directories). */
  IGNORE: 0x400,
} as const;

/** The fanotify_init(2) flags that are not the descriptor's own (FAN_CLOEXEC, FAN_NONBLOCK). */
export const FAN_INIT = { CLOEXEC: 0x1, NONBLOCK: 0x2 } as const;

/**
 * The events a listener must answer before the access goes on (FAN_OPEN_PERM, FAN_ACCESS_PERM,
 * FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS).
 */
export const FAN_PERMISSION_EVENTS = 0x10000 | 0x20000 | 0x40000 | 0x100000;
