/** prctl(2): the options tardigrade uses, and checked calls for the tool's own process. */
import { addressOf, libc, unwrap } from "./libc.ts";

/** prctl options. */
export const PR = {
  SET_PDEATHSIG: 1,
  GET_PDEATHSIG: 2,
  GET_DUMPABLE: 3,
  SET_DUMPABLE: 4,
  SET_NAME: 15,
  GET_NAME: 16,
  GET_SECCOMP: 21,
  GET_SECUREBITS: 27,
  SET_SECUREBITS: 28,
  CAPBSET_READ: 23,
  CAPBSET_DROP: 24,
  GET_TIMERSLACK: 30,
  SET_TIMERSLACK: 29,
  SET_MM: 35,
  SET_CHILD_SUBREAPER: 36,
  GET_CHILD_SUBREAPER: 37,
  SET_NO_NEW_PRIVS: 38,
  GET_NO_NEW_PRIVS: 39,
  GET_TID_ADDRESS: 40,
  SET_THP_DISABLE: 41,
  GET_THP_DISABLE: 42,
  CAP_AMBIENT: 47,
  TIMER_CREATE_RESTORE_IDS: 77,
} as const;

/** PR_SET_MM sub-options. */
export const PR_SET_MM = { MAP: 14, MAP_SIZE: 15 } as const;

/** sizeof(struct prctl_mm_map) on x86_64. */
export const PRCTL_MM_MAP_SIZE = 104;

/**
 * prctl in this process; integer arguments (a pointer as `addressOf(buf)`). Returns its result,
 * throws `SyscallError`.
 */
export function prctl(option: number, ...args: (number | bigint)[]): number {
  const a = [...args.map(BigInt), 0n, 0n, 0n, 0n].slice(0, 4);
  return unwrap(libc.prctl(option, a[0], a[1], a[2], a[3]), "prctl", [option, ...args]);
}

/** Whether this process is a child subreaper (orphans below it are reparented to it). */
export function isChildSubreaper(): boolean {
  const was = new Int32Array(1);
  prctl(PR.GET_CHILD_SUBREAPER, addressOf(was));
  return was[0] !== 0;
}

/** Makes this process a child subreaper (or stops it being one). */
export function setChildSubreaper(on = true): void {
  prctl(PR.SET_CHILD_SUBREAPER, on ? 1 : 0);
}
