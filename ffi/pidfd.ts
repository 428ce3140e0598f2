/** pidfds: pidfd_open(2) flags and the PIDFD_GET_INFO ioctl (linux/pidfd.h). */
import { O } from "./fcntl.ts";
import { ioctl } from "./syscalls.ts";

/** pidfd_open(2) flags; they show in the pidfd's fdinfo `flags:` as these open(2) bits. */
export const PIDFD = {
  /** Reads and waits do not block. */
  NONBLOCK: O.NONBLOCK,
  /** The pidfd names one thread, not its thread group. */
  THREAD: O.EXCL,
} as const;

/** `struct pidfd_info` fields a PIDFD_GET_INFO request may ask for (its `mask`). */
export const PIDFD_INFO = { PID: 1n, CREDS: 2n, CGROUPID: 4n, EXIT: 8n, COREDUMP: 16n } as const;

/** Size of the first version of `struct pidfd_info`, which has `exit_code` at byte 60. */
const PIDFD_INFO_SIZE = 64;

/** `_IOWR(0xFF, 11, struct pidfd_info)` for the 64-byte version. */
const PIDFD_GET_INFO = 0xc040ff0bn;

/**
 * The wait status (as wait(2) gives it) of the process pidfd `fd` of this process names, once it
 * has exited and been reaped; null while it runs or where the kernel keeps no exit information.
 */
export function pidfdExitStatus(fd: number): number | null {
  const info = new Uint8Array(PIDFD_INFO_SIZE);
  const v = new DataView(info.buffer);
  v.setBigUint64(0, PIDFD_INFO.EXIT, true);
  try {
    ioctl(fd, PIDFD_GET_INFO, info, "ioctl(PIDFD_GET_INFO)");
  } catch {
    return null; // ESRCH: alive or gone without a trace; ENOTTY: a kernel before 6.13
  }
  return (v.getBigUint64(0, true) & PIDFD_INFO.EXIT) ? v.getInt32(60, true) : null;
}
