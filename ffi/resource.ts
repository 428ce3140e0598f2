/** Resource limits: setrlimit/prlimit resource numbers. */

/** Resource numbers of setrlimit/prlimit by name. */
export const RLIMIT = {
  CPU: 0,
  FSIZE: 1,
  DATA: 2,
  STACK: 3,
  CORE: 4,
  RSS: 5,
  NPROC: 6,
  NOFILE: 7,
  MEMLOCK: 8,
  AS: 9,
  LOCKS: 10,
  SIGPENDING: 11,
  MSGQUEUE: 12,
  NICE: 13,
  RTPRIO: 14,
  RTTIME: 15,
} as const;

/** `RLIM_INFINITY`, unlimited. */
export const RLIM_INFINITY: bigint = 2n ** 64n - 1n;
