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
