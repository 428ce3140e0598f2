/** I/O priorities (ioprio_get/ioprio_set, linux/ioprio.h), read and set on any thread by tid. */
import { syscall } from "./syscalls.ts";

/** I/O scheduling classes: the top bits of an ioprio value. */
export const IOPRIO_CLASS = { NONE: 0, RT: 1, BE: 2, IDLE: 3 } as const;

/** Where the class starts in an ioprio value; the level is in the bits below. */
export const IOPRIO_CLASS_SHIFT = 13;

/** `IOPRIO_WHO_PROCESS`: the "process" is one thread, by tid. */
const IOPRIO_WHO_PROCESS = 1;

/** The I/O priority of thread `tid`: class << 13 | level. */
export function ioprioGet(tid: number): number {
  return Number(syscall("ioprio_get", IOPRIO_WHO_PROCESS, tid));
}

/** Sets the I/O priority of thread `tid`. */
export function ioprioSet(tid: number, ioprio: number): void {
  syscall("ioprio_set", IOPRIO_WHO_PROCESS, tid, ioprio);
}
