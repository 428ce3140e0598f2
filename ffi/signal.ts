/** Signal ABI: numbers, dispositions, sigprocmask operations and sigevent notification kinds. */

/** Signal numbers of x86_64 Linux. */
export const SIG = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGSTKFLT: 16,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGURG: 23,
  SIGXCPU: 24,
  SIGXFSZ: 25,
  SIGVTALRM: 26,
  SIGPROF: 27,
  SIGWINCH: 28,
  SIGIO: 29,
  SIGPWR: 30,
  SIGSYS: 31,
} as const;

/** Special dispositions of rt_sigaction. */
export const SIG_DISPOSITION = { DFL: 0n, IGN: 1n } as const;

/** rt_sigprocmask operations. */
export const SIG_HOW = { BLOCK: 0, UNBLOCK: 1, SETMASK: 2 } as const;

/** sigevent notification kinds (timer_create). */
export const SIGEV = { SIGNAL: 0, NONE: 1, THREAD: 2, THREAD_ID: 4 } as const;

/** The bit of signal `signo` in a 64-bit sigset (bit n-1 is signal n). */
export function sigBit(signo: number): bigint {
  return 1n << BigInt(signo - 1);
}

/** The name of signal `signo` (`SIGTSTP`), or `signal <n>` for a real-time one. */
export function signalName(signo: number): string {
  return Object.entries(SIG).find(([, n]) => n === signo)?.[0] ?? `signal ${signo}`;
}
