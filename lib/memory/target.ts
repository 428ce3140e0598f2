/**
 * The process a restore builds, as the restore side of every kind of memory sees it: its pid,
 * the injector that runs syscalls inside it, and address ranges free for temporary mappings.
 */
import { AT_FDCWD, pageUp } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";

/** An address range; `end` exclusive. */
export interface Range {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
}

/** An address as error messages show it. */
export const hex = (n: bigint): string => `0x${n.toString(16)}`;

const overlaps = (a: Range, b: Range) => a.start < b.end && b.start < a.end;

/** Hands out address ranges that neither the dumped layout nor the special mappings use. */
export class GapAllocator {
  #next: bigint;

  /** `taken`: every range the restored process will use, and this kernel's special mappings. */
  constructor(taken: Range[]) {
    const candidates = [0x200000000000n, 0x300000000000n, 0x100000000000n, 0x500000000000n];
    const room = 0x10000000000n; // 1 TiB of room per candidate
    const free = candidates.find((c) =>
      !taken.some((t) => overlaps(t, { start: c, end: c + room }))
    );
    if (free === undefined) throw new RestoreError("no free address range to work in");
    this.#next = free;
  }

  /** The start of a free range of `size` bytes (rounded up to whole pages). */
  take(size: bigint): bigint {
    const start = this.#next;
    this.#next += pageUp(size);
    return start;
  }
}

/** The process being made, for the kinds of memory that make their part of it. */
export interface Target {
  /** Its pid as the tool sees it. */
  readonly pid: number;
  /** Runs syscalls inside it. */
  readonly inj: Injector;
  /** Free ranges for temporary mappings. */
  readonly gaps: GapAllocator;
}

/** Where in the scratch region a string goes: clear of the small arguments put at its start. */
const STRING_OFFSET = 4096;

/** Puts a NUL-terminated string into the target's scratch region; returns its address. */
export function putString(inj: Injector, s: string): bigint {
  return inj.put(new TextEncoder().encode(s + "\0"), STRING_OFFSET);
}

/** Opens `path` inside the target (an injected openat); returns the target's fd. */
export function openInTarget(inj: Injector, path: string, flags: number): number {
  return Number(inj.call("openat", AT_FDCWD, putString(inj, path), flags, 0));
}

/**
 * `openInTarget` queued, its path with it: many files are opened in one run. The function
 * returned gives the target's fd (making what is queued first if need be).
 */
export function queueOpenInTarget(inj: Injector, path: string, flags: number): () => number {
  const at = inj.queueData(new TextEncoder().encode(path + "\0"));
  const fd = inj.queueCall("openat", [AT_FDCWD, at, flags, 0]);
  return () => Number(fd());
}
