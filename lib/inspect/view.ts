/**
 * What a script can ask of a process whether it runs or lies in an image: the part of `Process`
 * that makes sense offline. `Process` (live) and `ImageProcess` (a checkpoint image) implement
 * it, so one script runs unchanged on a pid or an image directory.
 */
import type { Fd } from "./fds.ts";
import type { Mapping } from "./mappings.ts";
import type { AddressRange, PageRegion } from "./pages.ts";
import type { RLIMIT } from "../../ffi/mod.ts";

/** Real, effective, saved and filesystem user or group ids. */
export interface Ids {
  /** Real id. */
  real: number;
  /** Effective id. */
  effective: number;
  /** Saved set id. */
  saved: number;
  /** Filesystem id. */
  fs: number;
}

/** Capability sets as 64-bit masks. */
export interface Capabilities {
  /** Inheritable set. */
  inheritable: bigint;
  /** Permitted set. */
  permitted: bigint;
  /** Effective set. */
  effective: bigint;
  /** Bounding set. */
  bounding: bigint;
  /** Ambient set. */
  ambient: bigint;
}

/** Signal masks of the process (bit n-1 is signal n). */
export interface SignalMasks {
  /** Pending for one thread (the thread group leader's, from /proc/PID/status). */
  pending: bigint;
  /** Pending for the whole process. */
  shdPending: bigint;
  /** Blocked (the leader thread's mask). */
  blocked: bigint;
  /** Set to SIG_IGN. */
  ignored: bigint;
  /** With a handler. */
  caught: bigint;
}

/** One rlimit; `RLIM_INFINITY` (2⁶⁴−1) means unlimited. */
export interface Rlimit {
  /** The soft limit, the one enforced. */
  soft: bigint;
  /** The ceiling for the soft limit. */
  hard: bigint;
}

/** A resource name of `RLIMIT`. */
export type RlimitName = keyof typeof RLIMIT;

/** A thread as both a live process and an image tell it. */
export interface ThreadView {
  /** Thread id. */
  tid: number;
  /** The thread's comm. */
  name: string;
  /**
   * Its registers (`user_regs_struct` by name) and blocked mask where they are known: always in
   * an image; a live thread's need it stopped (`freeze`), so `Process.threads()` leaves them out.
   */
  regs?: Record<string, bigint>;
  /** Blocked signals (bit n-1 is signal n), where known as for `regs`. */
  sigmask?: bigint;
}

/** A descriptor as both a live process and an image tell it (a live `Fd` tells more). */
export type FdView = Pick<
  Fd,
  "fd" | "kind" | "target" | "flags" | "position" | "closeOnExec" | "fileId"
>;

/**
 * A process, live or in an image, read-only. Listings are async iterables, everything else
 * resolves to its value; a live process's values are read when asked, an image's are those of
 * the moment it was dumped.
 *
 * ```ts
 * async function heapSize(p: ProcessView): Promise<number> {
 *   for await (const m of p.mappings()) if (m.kind === "heap") return m.size;
 *   return 0;
 * }
 * ```
 */
export interface ProcessView {
  /** The process id (in an image: at dump, which a restore gives again). */
  readonly pid: number;
  /** The parent's pid. */
  ppid(): Promise<number>;
  /** The process group id. */
  pgid(): Promise<number>;
  /** The session id. */
  sid(): Promise<number>;
  /** The command name. */
  comm(): Promise<string>;
  /** The arguments. */
  cmdline(): Promise<string[]>;
  /** The environment as `NAME=value` strings. */
  environ(): Promise<string[]>;
  /** The executable's path, empty when none. */
  exe(): Promise<string>;
  /** The working directory. */
  cwd(): Promise<string>;
  /** The root directory. */
  root(): Promise<string>;
  /** The file mode creation mask. */
  umask(): Promise<number>;
  /** The personality flags. */
  personality(): Promise<number>;
  /** User ids. */
  uids(): Promise<Ids>;
  /** Group ids. */
  gids(): Promise<Ids>;
  /** Supplementary groups. */
  groups(): Promise<number[]>;
  /** Capability sets (of the main thread). */
  capabilities(): Promise<Capabilities>;
  /** Pending, blocked, ignored and caught signals (blocked and pending: the main thread's). */
  signals(): Promise<SignalMasks>;
  /** Resource limits; unlimited is `RLIM_INFINITY`. */
  rlimits(): Promise<Record<RlimitName, Rlimit>>;
  /** Namespace inode numbers by name (`mnt`, `net`, `pid`, `pid_for_children`, …). */
  namespaces(): Promise<Record<string, bigint>>;
  /** The ELF auxiliary vector as [type, value] pairs. */
  auxv(): Promise<[bigint, bigint][]>;
  /** The direct children, in pid order (in an image: those dumped with it). */
  children(): Promise<ProcessView[]>;
  /** The threads, the main one first. */
  threads(): AsyncIterable<ThreadView>;
  /** The memory mappings in address order, as /proc/PID/maps lists them. */
  mappings(): AsyncIterable<Mapping>;
  /** The mapping that covers `addr`, or null. */
  findMapping(addr: bigint): Promise<Mapping | null>;
  /**
   * Runs of pages with the same state over the mapped part of `range`; in an image, the pages it
   * holds (those present or swapped at dump) are `present`.
   */
  pages(range?: Partial<AddressRange>): AsyncIterable<PageRegion>;
  /** The open descriptors in ascending order. */
  fds(): AsyncIterable<FdView>;
  /** Reads `length` bytes at `addr`; throws when any of them cannot be read. */
  read(addr: bigint, length: number): Promise<Uint8Array>;
  /**
   * Reads `buf.length` bytes at `addr` into `buf`; returns the bytes read (short where the range
   * runs into memory that cannot be read).
   */
  readInto(addr: bigint, buf: Uint8Array): Promise<number>;
}
