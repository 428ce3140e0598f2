/** userfaultfd(2): the API handshake, registration, write-protection and page-filling ioctls. */
import { addressOf, errno, libc } from "./libc.ts";
import { ioctl, SYS } from "./syscalls.ts";

/** userfaultfd constants (linux/userfaultfd.h). */
export const UFFD = {
  API: 0xaan,
  /** The child of a fork gets a userfaultfd of its own, handed to the reader (UFFD_EVENT_FORK). */
  FEATURE_EVENT_FORK: 1n << 1n,
  /** mremap of a registered range is told (UFFD_EVENT_REMAP). */
  FEATURE_EVENT_REMAP: 1n << 2n,
  /** madvise(DONTNEED, REMOVE) of a registered range is told (UFFD_EVENT_REMOVE). */
  FEATURE_EVENT_REMOVE: 1n << 3n,
  /** munmap of a registered range is told (UFFD_EVENT_UNMAP). */
  FEATURE_EVENT_UNMAP: 1n << 6n,
  FEATURE_WP_UNPOPULATED: 1n << 13n,
  FEATURE_WP_ASYNC: 1n << 15n,
  /** Faults from kernel mode are not handled: allowed without privilege. */
  USER_MODE_ONLY: 1,
  IOC_API: 0xc018aa3fn,
  IOC_REGISTER: 0xc020aa00n,
  IOC_WAKE: 0x8010aa02n,
  IOC_COPY: 0xc028aa03n,
  IOC_ZEROPAGE: 0xc020aa04n,
  IOC_WRITEPROTECT: 0xc018aa06n,
  REGISTER_MODE_MISSING: 1n,
  REGISTER_MODE_WP: 2n,
  WRITEPROTECT_MODE_WP: 1n,
  /** Size of one `struct uffd_msg` read from the descriptor. */
  MSG_SIZE: 32,
} as const;

/** `uffd_msg.event` values. */
export const UFFD_EVENT = {
  PAGEFAULT: 0x12,
  FORK: 0x13,
  REMAP: 0x14,
  REMOVE: 0x15,
  UNMAP: 0x16,
} as const;

/** One message read from a userfaultfd, decoded. */
export type UffdMessage =
  | { event: typeof UFFD_EVENT.PAGEFAULT; address: bigint; flags: bigint }
  | { event: typeof UFFD_EVENT.FORK; ufd: number }
  | { event: typeof UFFD_EVENT.REMAP; from: bigint; to: bigint; len: bigint }
  | { event: typeof UFFD_EVENT.REMOVE | typeof UFFD_EVENT.UNMAP; start: bigint; end: bigint }
  | { event: number };

/** Decodes the `struct uffd_msg` at byte `at` of `buf`. */
export function decodeUffdMessage(buf: Uint8Array, at: number): UffdMessage {
  const v = new DataView(buf.buffer, buf.byteOffset + at, UFFD.MSG_SIZE);
  const event = v.getUint8(0);
  const u64 = (o: number) => v.getBigUint64(o, true);
  switch (event) {
    case UFFD_EVENT.PAGEFAULT:
      return { event, flags: u64(8), address: u64(16) };
    case UFFD_EVENT.FORK:
      return { event, ufd: v.getUint32(8, true) };
    case UFFD_EVENT.REMAP:
      return { event, from: u64(8), to: u64(16), len: u64(24) };
    case UFFD_EVENT.REMOVE:
    case UFFD_EVENT.UNMAP:
      return { event, start: u64(8), end: u64(16) };
    default:
      return { event };
  }
}

/** UFFDIO_API: the handshake, asking for `features`; throws if the kernel lacks one. */
export function uffdApi(fd: number, features: bigint): void {
  const api = new BigUint64Array([UFFD.API, features, 0n]);
  ioctl(fd, UFFD.IOC_API, new Uint8Array(api.buffer), "ioctl(UFFDIO_API)");
}

/** UFFDIO_REGISTER of [start, start + len) in `mode`. */
export function uffdRegister(fd: number, start: bigint, len: bigint, mode: bigint): void {
  const reg = new BigUint64Array([start, len, mode, 0n]);
  ioctl(fd, UFFD.IOC_REGISTER, new Uint8Array(reg.buffer), "ioctl(UFFDIO_REGISTER)");
}

/** The outcome of a UFFDIO_COPY or UFFDIO_ZEROPAGE: bytes filled, and the errno that stopped it. */
export interface UffdFill {
  /** Bytes filled from the start of the range (it may stop short). */
  bytes: number;
  /** 0, or the errno: EAGAIN (the address space is changing: read events, try again), EEXIST
   * (a page is there already), ESRCH (the process is gone), ENOENT (the range is no longer
   * registered) … */
  errno: number;
}

function fill(fd: number, request: bigint, arg: BigInt64Array, resultIndex: number): UffdFill {
  const r = Number(
    libc.syscall(BigInt(SYS.ioctl), BigInt(fd), request, addressOf(arg), 0n, 0n, 0n),
  );
  const e = r === -1 ? errno() : 0;
  const done = arg[resultIndex];
  return { bytes: done > 0n ? Number(done) : 0, errno: e };
}

/** UFFDIO_COPY: fills the missing pages at `dst` with `data` and wakes whoever waits on them. */
export function uffdCopy(fd: number, dst: bigint, data: Uint8Array): UffdFill {
  const arg = new BigInt64Array([dst, addressOf(data), BigInt(data.length), 0n, 0n]);
  return fill(fd, UFFD.IOC_COPY, arg, 4);
}

/** UFFDIO_ZEROPAGE: maps the zero page over the missing pages of [start, start + len). */
export function uffdZeropage(fd: number, start: bigint, len: bigint): UffdFill {
  const arg = new BigInt64Array([start, len, 0n, 0n]);
  return fill(fd, UFFD.IOC_ZEROPAGE, arg, 3);
}

/** UFFDIO_WAKE: wakes the threads waiting on a fault in [start, start + len). */
export function uffdWake(fd: number, start: bigint, len: bigint): void {
  const range = new BigUint64Array([start, len]);
  ioctl(fd, UFFD.IOC_WAKE, new Uint8Array(range.buffer), "ioctl(UFFDIO_WAKE)");
}
