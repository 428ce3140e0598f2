/** seccomp(2) operations. */
export const SECCOMP_SET_MODE = { STRICT: 0, FILTER: 1 } as const;

/** Modes as /proc/PID/status `Seccomp:` shows them. */
export const SECCOMP_MODE = { DISABLED: 0, STRICT: 1, FILTER: 2 } as const;
