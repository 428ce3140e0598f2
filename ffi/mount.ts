/** mount(2) flags. */
export const MS = {
  RDONLY: 0x1,
  NOSUID: 0x2,
  NODEV: 0x4,
  NOEXEC: 0x8,
  REMOUNT: 0x20,
  BIND: 0x1000,
  REC: 0x4000,
  NOATIME: 0x400,
  NODIRATIME: 0x800,
  RELATIME: 0x200000,
  STRICTATIME: 0x1000000,
  PRIVATE: 0x40000,
  SLAVE: 0x80000,
  SHARED: 0x100000,
} as const;

/** umount2 flags: `DETACH` unmounts lazily, once the mount is no longer busy. */
export const MNT = { DETACH: 2 } as const;

/** `fsconfig` commands: `CREATE` makes the superblock of an `fsopen` context. */
export const FSCONFIG = { CMD_CREATE: 6 } as const;
