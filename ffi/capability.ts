/** Capabilities: their numbers (bit n of a capability set is capability n). */

/** Capability numbers (linux/capability.h). */
export const CAP = {
  CHOWN: 0,
  DAC_OVERRIDE: 1,
  DAC_READ_SEARCH: 2,
  FOWNER: 3,
  FSETID: 4,
  KILL: 5,
  SETGID: 6,
  SETUID: 7,
  SETPCAP: 8,
  LINUX_IMMUTABLE: 9,
  NET_BIND_SERVICE: 10,
  NET_BROADCAST: 11,
  NET_ADMIN: 12,
  NET_RAW: 13,
  IPC_LOCK: 14,
  IPC_OWNER: 15,
  SYS_MODULE: 16,
  SYS_RAWIO: 17,
  SYS_CHROOT: 18,
  SYS_PTRACE: 19,
  SYS_PACCT: 20,
  SYS_ADMIN: 21,
  SYS_BOOT: 22,
  SYS_NICE: 23,
  SYS_RESOURCE: 24,
  SYS_TIME: 25,
  SYS_TTY_CONFIG: 26,
  MKNOD: 27,
  LEASE: 28,
  AUDIT_WRITE: 29,
  AUDIT_CONTROL: 30,
  SETFCAP: 31,
  MAC_OVERRIDE: 32,
  MAC_ADMIN: 33,
  SYSLOG: 34,
  WAKE_ALARM: 35,
  BLOCK_SUSPEND: 36,
  AUDIT_READ: 37,
  PERFMON: 38,
  BPF: 39,
  CHECKPOINT_RESTORE: 40,
} as const;

/** Whether capability set `set` holds capability `cap`. */
export function hasCap(set: bigint, cap: number): boolean {
  return (set & (1n << BigInt(cap))) !== 0n;
}

/** The name of capability `cap` (`CAP_NET_RAW`), or `CAP_<n>` for one this table lacks. */
export function capName(cap: number): string {
  const name = Object.entries(CAP).find(([, n]) => n === cap)?.[0];
  return `CAP_${name ?? cap}`;
}

/** The capabilities in set `set`, in ascending order. */
export function capsIn(set: bigint): number[] {
  const out: number[] = [];
  for (let cap = 0; set >> BigInt(cap) !== 0n; cap++) if (hasCap(set, cap)) out.push(cap);
  return out;
}

/** `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves. */
export const CAPABILITY_VERSION_3 = 0x20080522;

/** The three sets capset(2) takes. */
export interface CapSets {
  /** Effective. */
  effective: bigint;
  /** Permitted. */
  permitted: bigint;
  /** Inheritable. */
  inheritable: bigint;
}

/**
 * The two arguments of capset(2) for the calling thread: `struct __user_cap_header_struct`
 * (version, pid 0) and two `struct __user_cap_data_struct` (the low and the high 32 bits).
 */
export function encodeCapset(sets: CapSets): { header: Uint8Array; data: Uint8Array } {
  const header = new Uint32Array([CAPABILITY_VERSION_3, 0]);
  const lo = (v: bigint) => Number(v & 0xffffffffn);
  const hi = (v: bigint) => Number((v >> 32n) & 0xffffffffn);
  const { effective: e, permitted: p, inheritable: i } = sets;
  const data = new Uint32Array([lo(e), lo(p), lo(i), hi(e), hi(p), hi(i)]);
  return { header: new Uint8Array(header.buffer), data: new Uint8Array(data.buffer) };
}

/** Securebits (linux/securebits.h): the flag bits and, one above each, its lock. */
export const SECBIT = {
  NOROOT: 1 << 0,
  NOROOT_LOCKED: 1 << 1,
  NO_SETUID_FIXUP: 1 << 2,
  NO_SETUID_FIXUP_LOCKED: 1 << 3,
  KEEP_CAPS: 1 << 4,
  KEEP_CAPS_LOCKED: 1 << 5,
  NO_CAP_AMBIENT_RAISE: 1 << 6,
  NO_CAP_AMBIENT_RAISE_LOCKED: 1 << 7,
} as const;

/** `PR_CAP_AMBIENT` operations. */
export const PR_CAP_AMBIENT = { IS_SET: 1, RAISE: 2, LOWER: 3, CLEAR_ALL: 4 } as const;

/** The names of the capabilities in set `set` (`CAP_SYS_RESOURCE` …), lowest first. */
export function capNames(set: bigint): string[] {
  return capsIn(set).map(capName);
}
