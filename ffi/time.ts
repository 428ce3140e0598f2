/** Clocks and timers. */

/** Clock ids. */
export const CLOCK = {
  REALTIME: 0,
  MONOTONIC: 1,
  PROCESS_CPUTIME_ID: 2,
  THREAD_CPUTIME_ID: 3,
  MONOTONIC_RAW: 4,
  BOOTTIME: 7,
} as const;

/** clock_nanosleep/timer_settime flag: the time is absolute. */
export const TIMER_ABSTIME = 1;

/** Interval timers (setitimer). */
export const ITIMER = { REAL: 0, VIRTUAL: 1, PROF: 2 } as const;

const NS_PER_S = 1_000_000_000n;

/**
 * The `struct timespec[2]` of `utimensat`/`futimens` (32 bytes): access then modification time,
 * each given in ns since the epoch.
 */
export function encodeFileTimes(atimeNs: bigint, mtimeNs: bigint): Uint8Array {
  const b = new Uint8Array(32);
  const v = new DataView(b.buffer);
  [atimeNs, mtimeNs].forEach((ns, i) => {
    v.setBigInt64(16 * i, ns / NS_PER_S, true);
    v.setBigInt64(16 * i + 8, ns % NS_PER_S, true);
  });
  return b;
}
