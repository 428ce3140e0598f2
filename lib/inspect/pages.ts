/** Which pages of a process are there: PAGEMAP_SCAN ioctl, or 8-byte /proc/PID/pagemap entries. */
import {
  addressOf,
  close,
  Errno,
  ioctl,
  O,
  open,
  PAGE_IS,
  PAGE_REGION_SIZE,
  PAGE_SIZE,
  pageDown,
  PAGEMAP_SCAN,
  pageUp,
  PM_SCAN_ARG_SIZE,
  pread,
  SyscallError,
} from "../../ffi/mod.ts";
import { listMappings } from "./mappings.ts";
import { procError, procPath } from "./procfs.ts";

/** A run of pages with the same state. Addresses are page aligned; `end` is exclusive. */
export interface PageRegion {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
  /** In RAM. */
  present: boolean;
  /** Not write-protected by userfaultfd: true for all pages of memory nobody tracks. */
  written: boolean;
  /** In swap. */
  swapped: boolean;
  /** A page of a file, or shared anonymous memory (page cache). */
  file: boolean;
  /** The shared zero page (read but never written). Only the ioctl reports it. */
  zero: boolean;
  /** Part of a transparent huge page. Only the ioctl reports it. */
  huge: boolean;
  /**
   * A guard page (MADV_GUARD_INSTALL): a touch faults, it holds no data. Only the pagemap entries
   * tell (the ioctl counts it as swapped): `guardRanges` reads them.
   */
  guard: boolean;
}

/** An address range; `end` exclusive. */
export interface AddressRange {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
}

const PAGE = BigInt(PAGE_SIZE);
const TWO32 = 4294967296;
/** The top of user address space that PAGEMAP_SCAN accepts (TASK_SIZE_MAX of x86_64). */
export const USER_SPACE_END = 0x7ffffffff000n;

const RETURN_MASK = PAGE_IS.WRITTEN | PAGE_IS.FILE | PAGE_IS.PRESENT | PAGE_IS.SWAPPED |
  PAGE_IS.PFNZERO | PAGE_IS.HUGE;

// Whether PAGEMAP_SCAN is known to be missing on this kernel.
let scanMissing = false;

// One argument buffer and one vector of page_region, reused by every scan (scans are synchronous).
const VEC_LEN = 4096;
const arg = new Uint8Array(PM_SCAN_ARG_SIZE);
const arg32 = new Uint32Array(arg.buffer);
const vec = new Uint8Array(VEC_LEN * PAGE_REGION_SIZE);
const vec32 = new Uint32Array(vec.buffer);

function setU64(words: Uint32Array, index: number, value: bigint): void {
  words[index] = Number(value & 0xffffffffn);
  words[index + 1] = Number(value >> 32n);
}

function big(lo: number, hi: number): bigint {
  return BigInt(hi * TWO32 + lo);
}

function normalize(pid: number, range?: Partial<AddressRange>): AddressRange {
  const start = pageDown(range?.start ?? 0n);
  let end = range?.end ?? USER_SPACE_END;
  if (end > USER_SPACE_END) end = USER_SPACE_END;
  end = pageUp(end);
  if (end < start) throw new RangeError(`pages of process ${pid}: end before start`);
  return { start, end };
}

/**
 * Runs PAGEMAP_SCAN over [start, end) and hands each batch of regions (as raw u32 words of
 * page_region) to `sink`, looping until `walk_end` reaches `end`. Returns false when the ioctl is
 * missing (ENOTTY/EINVAL on the first call).
 */
function scan(
  pid: number,
  range: AddressRange,
  masks: { anyof: number; ret: number; mask?: number; inverted?: number },
  sink: (count: number) => void,
): boolean {
  const path = procPath(pid, "pagemap");
  let fd: number;
  try {
    fd = open(path, O.RDONLY);
  } catch (err) {
    throw procError(err, pid, "pagemap");
  }
  try {
    let start = range.start;
    let first = true;
    while (start < range.end) {
      arg.fill(0);
      arg32[0] = PM_SCAN_ARG_SIZE;
      setU64(arg32, 4, start);
      setU64(arg32, 6, range.end);
      setU64(arg32, 10, addressOf(vec));
      arg32[12] = VEC_LEN;
      arg32[16] = masks.inverted ?? 0;
      arg32[18] = masks.mask ?? 0;
      arg32[20] = masks.anyof;
      arg32[22] = masks.ret;
      let n: number;
      try {
        n = ioctl(fd, PAGEMAP_SCAN, arg, "ioctl(PAGEMAP_SCAN)");
      } catch (err) {
        const e = err instanceof SyscallError ? err.errno : 0;
        if (first && (e === Errno.ENOTTY || e === Errno.EINVAL)) return false;
        throw procError(err, pid, "pagemap");
      }
      first = false;
      if (n > 0) sink(n);
      const walkEnd = big(arg32[8], arg32[9]);
      if (walkEnd <= start) break; // no progress: nothing more to walk
      start = walkEnd;
    }
    return true;
  } finally {
    close(fd);
  }
}

function regionFromScan(i: number): PageRegion {
  const w = i * 6;
  const c = vec32[w + 4];
  return {
    start: big(vec32[w], vec32[w + 1]),
    end: big(vec32[w + 2], vec32[w + 3]),
    present: (c & PAGE_IS.PRESENT) !== 0,
    written: (c & PAGE_IS.WRITTEN) !== 0,
    swapped: (c & PAGE_IS.SWAPPED) !== 0,
    file: (c & PAGE_IS.FILE) !== 0,
    zero: (c & PAGE_IS.PFNZERO) !== 0,
    huge: (c & PAGE_IS.HUGE) !== 0,
    guard: false, // PAGEMAP_SCAN of 6.18 does not tell: counted as swapped
  };
}

/**
 * The page regions of process `pid` inside `range` (default: all of user space), in address
 * order, covering every mapped page (unmapped holes are left out). Runs of pages with the same
 * state come as one region.
 */
export function listPages(pid: number, range?: Partial<AddressRange>): PageRegion[] {
  const r = normalize(pid, range);
  const out: PageRegion[] = [];
  if (!scanMissing) {
    const ok = scan(pid, r, { anyof: 0, ret: RETURN_MASK }, (n) => {
      for (let i = 0; i < n; i++) {
        const region = regionFromScan(i);
        const prev = out[out.length - 1];
        // A region split only by the vec limit or a VMA boundary with the same state: join it.
        if (prev && prev.end === region.start && sameState(prev, region)) prev.end = region.end;
        else out.push(region);
      }
    });
    if (ok) return out;
    scanMissing = true;
  }
  return pagesFromPagemap(pid, r);
}

function sameState(a: PageRegion, b: PageRegion): boolean {
  return a.present === b.present && a.written === b.written && a.swapped === b.swapped &&
    a.file === b.file && a.zero === b.zero && a.huge === b.huge && a.guard === b.guard;
}

const PM_PRESENT = 1 << 31; // bit 63, in the high word
const PM_SWAPPED = 1 << 30; // bit 62
const PM_FILE = 1 << 29; // bit 61
const PM_GUARD = 1 << 26; // bit 58: a guard page
const PM_UFFD_WP = 1 << 25; // bit 57: write-protected by userfaultfd
const ENTRIES = 65536;

/** The fallback: 8-byte entries of /proc/PID/pagemap, read over each mapping in the range. */
export function pagesFromPagemap(pid: number, range?: Partial<AddressRange>): PageRegion[] {
  const r = normalize(pid, range);
  const path = procPath(pid, "pagemap");
  const out: PageRegion[] = [];
  let fd: number;
  try {
    fd = open(path, O.RDONLY);
  } catch (err) {
    throw procError(err, pid, "pagemap");
  }
  const buf = new Uint8Array(ENTRIES * 8);
  const words = new Uint32Array(buf.buffer);
  try {
    for (const m of listMappings(pid)) {
      const from = m.start > r.start ? m.start : r.start;
      const to = m.end < r.end ? m.end : r.end;
      if (from >= to || m.end > USER_SPACE_END) continue;
      for (let addr = from; addr < to;) {
        const pages = Math.min(ENTRIES, Number((to - addr) / PAGE));
        let got: number;
        try {
          got = pread(fd, buf.subarray(0, pages * 8), (addr / PAGE) * 8n) / 8;
        } catch (err) {
          throw procError(err, pid, "pagemap");
        }
        if (got === 0) break;
        for (let i = 0; i < got; i++) {
          const hi = words[2 * i + 1];
          const guard = (hi & PM_GUARD) !== 0;
          const region: PageRegion = {
            start: addr + BigInt(i) * PAGE,
            end: addr + BigInt(i + 1) * PAGE,
            present: (hi & PM_PRESENT) !== 0,
            written: (hi & PM_UFFD_WP) === 0,
            // The ioctl counts a guard page as swapped (a marker in the page table); so do we.
            swapped: (hi & PM_SWAPPED) !== 0 || guard,
            file: (hi & PM_FILE) !== 0,
            zero: false,
            huge: false,
            guard,
          };
          const prev = out[out.length - 1];
          if (prev && prev.end === region.start && sameState(prev, region)) prev.end = region.end;
          else out.push(region);
        }
        addr += BigInt(got) * PAGE;
      }
    }
  } finally {
    close(fd);
  }
  return out;
}

/** Options of `dumpableRanges`. */
export interface DumpableOptions {
  /**
   * Leave out pages mapped to the shared zero page (read, never written): they read as zeros.
   * Only the ioctl can tell them; the pagemap fallback keeps them.
   */
  skipZero?: boolean;
}

/**
 * The merged ranges of guard pages (MADV_GUARD_INSTALL) in [start, end): none before Linux 6.13.
 */
export function guardRanges(pid: number, start: bigint, end: bigint): AddressRange[] {
  const out: AddressRange[] = [];
  for (const p of pagesFromPagemap(pid, { start, end })) {
    if (p.guard) appendRange(out, p.start, p.end);
  }
  return out;
}

/** Appends [start, end) to ranges `out` in address order, joined to the last one when they meet. */
export function appendRange(out: AddressRange[], start: bigint, end: bigint): void {
  const last = out[out.length - 1];
  if (last && last.end === start) last.end = end;
  else out.push({ start, end });
}

/** Bits 23-31 of a pagemap entry's high word are flags; bits 0-22 the top of the frame number. */
const PFN_HIGH_MASK = (1 << 23) - 1;
const PM_EXCLUSIVE = 1 << 24; // bit 56: mapped by this page table only

/** The raw /proc/PID/pagemap entries of the pages of [start, end) (page aligned). */
function pagemapEntries(pid: number, start: bigint, end: bigint): BigUint64Array {
  const out = new BigUint64Array(Number((end - start) / PAGE));
  let fd: number;
  try {
    fd = open(procPath(pid, "pagemap"), O.RDONLY);
  } catch (err) {
    throw procError(err, pid, "pagemap");
  }
  try {
    const bytes = new Uint8Array(out.buffer);
    for (let done = 0; done < bytes.length;) {
      const n = pread(fd, bytes.subarray(done), (start / PAGE) * 8n + BigInt(done));
      if (n === 0) break;
      done += n;
    }
  } catch (err) {
    throw procError(err, pid, "pagemap");
  } finally {
    close(fd);
  }
  return out;
}

/**
 * The page frame of each page of [start, end) of `pid` that is in RAM, 0 for the others: two
 * 32-bit words a page (low, high; from /proc/PID/pagemap, read without a bigint a page). Two
 * processes whose pages have the same frame share that memory (copy-on-write since a fork, the
 * zero page, a KSM merge). Frames read 0 without CAP_SYS_ADMIN.
 */
export function pageFrames(pid: number, start: bigint, end: bigint): Uint32Array {
  const words = new Uint32Array(pagemapEntries(pid, start, end).buffer);
  for (let i = 0; i < words.length; i += 2) {
    if (words[i + 1] & PM_PRESENT) words[i + 1] &= PFN_HIGH_MASK;
    else words[i] = words[i + 1] = 0;
  }
  return words;
}

/**
 * The pages of [start, end) (page aligned) of `pid` that may be mapped by another page table too:
 * in RAM but not exclusively `pid`'s (shared copy-on-write since a fork, merged by KSM), or in
 * swap (the swap entry may be shared). Empty when pagemap cannot be read.
 */
export function sharedPageRanges(pid: number, start: bigint, end: bigint): AddressRange[] {
  let entries: BigUint64Array;
  try {
    entries = pagemapEntries(pid, start, end);
  } catch {
    return [];
  }
  const words = new Uint32Array(entries.buffer);
  const out: AddressRange[] = [];
  for (let i = 0; i < entries.length; i++) {
    const hi = words[2 * i + 1];
    const present = (hi & PM_PRESENT) !== 0;
    if (present ? (hi & PM_EXCLUSIVE) !== 0 : (hi & PM_SWAPPED) === 0) continue;
    const at = start + BigInt(i) * PAGE;
    appendRange(out, at, at + PAGE);
  }
  return out;
}

/**
 * The merged ranges of pages in [start, end) that are present or swapped: what a dump must copy.
 * Guard pages (also counted as swapped, and unreadable) are not left out here: `ranges minus
 * guardRanges` does that for the mappings that may have some (VmFlags `gu`).
 * One PAGEMAP_SCAN per 4096 ranges; falls back to pagemap entries.
 */
export function dumpableRanges(
  pid: number,
  start: bigint,
  end: bigint,
  opts: DumpableOptions = {},
): AddressRange[] {
  const r = normalize(pid, { start, end });
  const out: AddressRange[] = [];
  const push = (s: bigint, e: bigint) => appendRange(out, s, e);
  if (!scanMissing) {
    const any = PAGE_IS.PRESENT | PAGE_IS.SWAPPED;
    // PFNZERO inverted and required: only pages that are not the zero page.
    const zero = opts.skipZero ? PAGE_IS.PFNZERO : 0;
    const ok = scan(pid, r, { anyof: any, ret: any, mask: zero, inverted: zero }, (n) => {
      for (let i = 0; i < n; i++) {
        const w = i * 6;
        push(big(vec32[w], vec32[w + 1]), big(vec32[w + 2], vec32[w + 3]));
      }
    });
    if (ok) return out;
    scanMissing = true;
  }
  for (const p of pagesFromPagemap(pid, r)) if (p.present || p.swapped) push(p.start, p.end);
  return out;
}
