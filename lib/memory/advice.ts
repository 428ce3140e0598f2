/**
 * What the kernel keeps about a mapping besides its range, protection and file: the flags smaps
 * shows on its `VmFlags:` line (madvise(), mlock(), mmap() flags, mseal()). Every flag the
 * kernel can show is accounted for in `VM_FLAGS`: carried (kept in `MappingEntry.advice` and given
 * again at restore), derived (it follows from what is restored anyway), or refused (the dump
 * fails naming the process, the mapping and the flag, rather than bring the mapping back without
 * it). A flag this table does not know (a newer kernel's) is refused too.
 *
 * Restore: madvise() advice once the pages are in, locks after it, seals (`sl`) last of all,
 * once nothing of the restore changes mappings any more (`sealMappings`). `nr`, `ht`, `dp` are
 * mmap() flags (mapping.ts), `gd` is `MappingEntry.growsDown`, `mw` on a shared mapping is the
 * access mode its file is opened with (mapping.ts).
 */
import { MADV, MLOCK } from "../../ffi/mod.ts";
import { Unsupported } from "../errors.ts";
import type { MappingEntry } from "../image/schema.ts";
import type { Injector } from "../ptrace/inject.ts";

/** How a restore treats one VmFlags mnemonic. */
type Treatment =
  /** Kept in `MappingEntry.advice` and given again. */
  | { carried: string }
  /** Needs nothing: it follows from what is restored anyway. */
  | { derived: string }
  /** The dump is refused. */
  | { refused: string };

/**
 * Every VmFlags mnemonic of Linux 6.18 (`show_smap_vma_flags`, `man 5 proc`), and what a restore
 * does with it. `mw` is carried only where it does not follow from the protection (below).
 */
export const VM_FLAGS: Record<string, Treatment> = {
  rd: { derived: "PROT_READ: the protection" },
  wr: { derived: "PROT_WRITE: the protection" },
  ex: { derived: "PROT_EXEC: the protection" },
  sh: { derived: "MAP_SHARED with a file open for writing: sharing and mw" },
  mr: { derived: "may read: every mapping but a file opened write-only (never mappable)" },
  mw: { carried: "may write: on a shared read-only mapping, the file is opened for writing" },
  me: { derived: "may execute: the file's mount (noexec), the same file is mapped" },
  ms: { derived: "may share: MAP_SHARED" },
  gd: { carried: "MAP_GROWSDOWN (MappingEntry.growsDown)" },
  pf: { refused: "a PFN mapping of a device: its driver's state cannot be rebuilt" },
  lo: { carried: "mlock()" },
  io: { refused: "a mapping of device I/O memory" },
  sr: { carried: "MADV_SEQUENTIAL" },
  rr: { carried: "MADV_RANDOM" },
  dc: { carried: "MADV_DONTFORK" },
  de: { derived: "not expandable: the kernel's for hugetlb and the AIO ring (refused elsewhere)" },
  lf: { carried: "mlock2(MLOCK_ONFAULT)" },
  ac: { derived: "commit accounting of private writable memory: no behaviour of its own" },
  nr: { carried: "MAP_NORESERVE" },
  ht: { carried: "MAP_HUGETLB with its page size (MappingEntry.pageSize)" },
  sf: { refused: "MAP_SYNC on a DAX file" },
  ar: { refused: "an architecture flag (x86: PAT of a device mapping)" },
  wf: { carried: "MADV_WIPEONFORK" },
  dd: { carried: "MADV_DONTDUMP" },
  sd: {
    derived: "soft-dirty: set on every new mapping; dirty tracking's state, not the program's",
  },
  mm: { refused: "a mixed PFN/page mapping of a device" },
  hg: { carried: "MADV_HUGEPAGE" },
  nh: { carried: "MADV_NOHUGEPAGE" },
  mg: { carried: "MADV_MERGEABLE (KSM)" },
  um: {
    refused: "registered with a userfaultfd for missing pages (the handler's fd is not kept; " +
      "after a lazy restore, dump once its page server is done)",
  },
  uw: { refused: "registered with a userfaultfd for write protection (not the tool's tracking)" },
  ui: { refused: "registered with a userfaultfd for minor faults (the handler's fd is not kept)" },
  ss: { refused: "a shadow stack (CET): it cannot be made by mmap()" },
  dp: { carried: "MAP_DROPPABLE" },
  sl: { carried: "mseal(), given last" },
  gu: {
    derived: "may hold guard pages: MADV_GUARD_INSTALL of the guard pages (MappingEntry.guards)",
  },
  bt: { refused: "arm64 BTI" },
  mt: { refused: "arm64 MTE" },
  nl: { derived: "a non-linear mapping: gone since Linux 4.0, never shown" },
};

/** Flags kept in `MappingEntry.advice`: madvise() advice, locks, mmap() flags and seals. */
const KEPT = new Set([
  "lo",
  "lf",
  "sr",
  "rr",
  "dc",
  "nr",
  "ht",
  "wf",
  "dd",
  "hg",
  "nh",
  "mg",
  "dp",
  "sl",
  "mw",
]);

/** VmFlags name → the madvise() advice that sets it. */
const ADVICE: Record<string, number> = {
  sr: MADV.SEQUENTIAL,
  rr: MADV.RANDOM,
  dc: MADV.DONTFORK,
  mg: MADV.MERGEABLE,
  hg: MADV.HUGEPAGE,
  nh: MADV.NOHUGEPAGE,
  dd: MADV.DONTDUMP,
  wf: MADV.WIPEONFORK,
};

/** What smaps says of one mapping, beyond /proc/PID/maps. */
export interface VmaState {
  /** Its VmFlags mnemonics. */
  flags: string[];
  /** KernelPageSize in bytes (4096 but for hugetlb). */
  pageSize: number;
  /** Where it ends. */
  end: bigint;
}

/**
 * VmFlags and page size of every mapping of `pid`, by start address (`parseVmaStates`). `smaps`:
 * the file as read earlier (reading it walks every present page: a dump reads it on another thread
 * while it does other work).
 */
export function vmaStates(pid: number, smaps?: Uint8Array): Map<bigint, VmaState> {
  let bytes: Uint8Array;
  try {
    bytes = smaps ?? Deno.readFileSync(`/proc/${pid}/smaps`);
  } catch {
    bytes = new Uint8Array();
  }
  return parseVmaStates(bytes);
}

/**
 * VmFlags and page size of every mapping in `bytes`, smaps as read (empty for no bytes), by start
 * address. smaps has some 25 lines a mapping (tens of MB for 50,000): of each entry only its
 * first line (the start address), `KernelPageSize:` and `VmFlags:` (its last line) are looked
 * at, found by byte search rather than line by line. Entries with the same flags share one
 * (read-only) array.
 */
export function parseVmaStates(bytes: Uint8Array): Map<bigint, VmaState> {
  const out = new Map<bigint, VmaState>();
  const flagLists = new Map<string, string[]>();
  for (let at = 0; at < bytes.length;) {
    // `start-end perms …`, as in maps, then the entry's fields up to its `VmFlags:` line.
    const dash = bytes.indexOf(DASH, at);
    const start = hexAt(bytes, at, DASH);
    const stop = dash < 0 ? undefined : hexAt(bytes, dash + 1, SPACE);
    const flagsAt = lineStarting(bytes, VMFLAGS, at);
    if (start === undefined || stop === undefined || flagsAt < 0) {
      // Every entry has both since Linux 3.8: a mapping must not go by without its flags.
      const line = latin1.decode(bytes.subarray(at, at + 80)).split("\n")[0];
      throw new Unsupported(`smaps: an entry of a format not known to the tool at "${line}"`);
    }
    let end = bytes.indexOf(NEWLINE, flagsAt);
    if (end < 0) end = bytes.length;
    const sizeAt = lineStarting(bytes, PAGE_SIZE, at, flagsAt);
    const raw = String.fromCharCode(...bytes.subarray(flagsAt + VMFLAGS.length, end));
    let flags = flagLists.get(raw);
    if (!flags) flagLists.set(raw, flags = raw.trim().split(/\s+/).filter((f) => f !== ""));
    const pageSize = sizeAt < 0 ? 4096 : decimalAt(bytes, sizeAt + PAGE_SIZE.length) * 1024;
    out.set(start, { flags, pageSize, end: stop });
    at = end + 1;
  }
  return out;
}

const ascii = (s: string) => new TextEncoder().encode(s);
const latin1 = new TextDecoder("latin1");
const VMFLAGS = ascii("VmFlags:");
const PAGE_SIZE = ascii("KernelPageSize:");
const [NEWLINE, DASH, DIGIT_0, DIGIT_9, LOWER_A, LOWER_F, SPACE] = ascii("\n-09af ");

/**
 * Where the first line from `from` (a line's start) before `to` that begins with `prefix`
 * begins; -1 when none does.
 */
function lineStarting(bytes: Uint8Array, prefix: Uint8Array, from: number, to = bytes.length) {
  for (let at = bytes.indexOf(prefix[0], from); at >= 0 && at < to;) {
    if ((at === from || bytes[at - 1] === NEWLINE) && startsWith(bytes, at, prefix)) return at;
    at = bytes.indexOf(prefix[0], at + 1);
  }
  return -1;
}

/**
 * The hexadecimal number at `at`, ended by `stop` (a dash after a maps range's start, a space after
 * its end); undefined if none.
 */
function hexAt(bytes: Uint8Array, at: number, stop: number): bigint | undefined {
  // Two halves of 32 bits: an address of 64 bits is past a double's exact integers.
  let hi = 0, lo = 0, digits = 0;
  for (;; at++, digits++) {
    const c = bytes[at];
    let v: number;
    if (c >= DIGIT_0 && c <= DIGIT_9) v = c - DIGIT_0;
    else if (c >= LOWER_A && c <= LOWER_F) v = c - LOWER_A + 10;
    else {return c === stop && digits > 0 && digits <= 16
        ? (BigInt(hi) << 32n) | BigInt(lo)
        : undefined;}
    hi = hi * 16 + (lo >>> 28);
    lo = ((lo << 4) | v) >>> 0;
  }
}

/** The decimal number at `at`, after spaces. */
function decimalAt(bytes: Uint8Array, at: number): number {
  while (bytes[at] === SPACE) at++;
  let n = 0;
  for (; bytes[at] >= DIGIT_0 && bytes[at] <= DIGIT_9; at++) n = n * 10 + bytes[at] - DIGIT_0;
  return n;
}

/** Whether `bytes` has `prefix` at `at`. */
function startsWith(bytes: Uint8Array, at: number, prefix: Uint8Array): boolean {
  for (let i = 0; i < prefix.length; i++) if (bytes[at + i] !== prefix[i]) return false;
  return true;
}

/** What a mapping is, as far as its flags go. */
interface FlagsOf {
  shared: boolean;
  /** PROT_WRITE now. */
  writable: boolean;
}

/**
 * The flags of a mapping that its image entry keeps (`MappingEntry.advice`), sorted. `mw` only
 * where it says more than the protection: a shared mapping, not writable now, that may be made
 * writable (its file was opened for writing).
 */
export function keptFlags(flags: string[], m: FlagsOf): string[] {
  return flags.filter((f) => KEPT.has(f) && (f !== "mw" || (m.shared && !m.writable))).sort();
}

/**
 * Why a mapping of `kind` with `flags` cannot be dumped (a refused or unknown flag), or null.
 * `ownTracking`: the tool itself registered the process's memory for write-protection
 * (pre-copy's dirty tracking), so `uw` is the tool's.
 */
export function refusedFlag(flags: string[], kind: string, ownTracking: boolean): string | null {
  for (const f of flags) {
    if (f === "uw" && ownTracking) continue;
    // Not expandable: the kernel's own mark on hugetlb and the AIO ring; elsewhere a driver's.
    if (f === "de" && !flags.includes("ht") && kind !== "aio") {
      return `VmFlags "de": a mapping a driver made not expandable`;
    }
    const t = VM_FLAGS[f];
    if (!t) return `VmFlags "${f}", unknown to this version of the tool`;
    if ("refused" in t) return `VmFlags "${f}": ${t.refused}`;
  }
  return null;
}

/** Gives the restored mappings their advice again; locks last, once their pages are in. */
export function restoreVmaAdvice(inj: Injector, mappings: MappingEntry[]): void {
  for (const m of mappings) {
    for (const flag of m.advice ?? []) {
      if (flag in ADVICE) inj.queue("madvise", [m.start, m.end - m.start, ADVICE[flag]]);
    }
  }
  for (const m of mappings) {
    const advice = m.advice ?? [];
    if (advice.includes("lf")) inj.queue("mlock2", [m.start, m.end - m.start, MLOCK.ONFAULT]);
    else if (advice.includes("lo")) inj.queue("mlock2", [m.start, m.end - m.start, 0]);
  }
}

/**
 * Installs the guard pages again (MADV_GUARD_INSTALL), once the pages are in (installing one drops
 * what the page held) and before the locks (a locked range takes none).
 */
export function installGuards(inj: Injector, mappings: MappingEntry[]): void {
  for (const m of mappings) {
    for (const g of m.guards ?? []) {
      inj.queue("madvise", [g.start, g.end - g.start, MADV.GUARD_INSTALL]);
    }
  }
}

/**
 * Seals the mappings that were sealed (mseal): the last change to the address space, as a sealed
 * mapping can no longer be unmapped, moved or have its protection changed.
 */
export function sealMappings(inj: Injector, mappings: MappingEntry[]): void {
  for (const m of mappings) {
    if (m.advice?.includes("sl")) inj.queue("mseal", [m.start, m.end - m.start, 0]);
  }
}
