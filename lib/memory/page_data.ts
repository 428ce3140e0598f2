/**
 * Page data: the bytes of memory the image holds, as runs of extents.
 *
 * Dump: the pages only a process holds (private anonymous pages, pages written over a private
 * file mapping) are copied from it through a `PageStore` (the dumper's page collector, or an
 * incremental dump's store), half a staging buffer at a time so the other half is written to
 * the image meanwhile; a memory object's data (the parts of its file that hold data) likewise.
 *
 * Restore: the image's extents are read in order, two buffers taking turns, and scattered over
 * the process's addresses (process_vm_writev) and its memory objects (pwrite).
 */
import {
  Errno,
  pread,
  processVmWrite,
  pwrite,
  SEEK,
  syscall,
  SyscallError,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ImageReader } from "../image/mod.ts";
import type { PageRun, ProcessEntry } from "../image/schema.ts";
import type { Mapping } from "../inspect/mappings.ts";
import type { RemoteMemory } from "../inspect/memory.ts";
import { appendRange, dumpableRanges, listPages } from "../inspect/pages.ts";
import { sharedRanges } from "./cow.ts";
import { hex, type Range } from "./target.ts";

/** Staging buffer size: large enough for ≥ 1 MiB iovecs, small enough for a low peak RSS. */
export const STAGING_SIZE = 32 * 1024 * 1024;

/** Fills `buf` from a source at `start`; returns the bytes it could read. */
export type Fill = (start: bigint, buf: Uint8Array) => number;

/** Where page data goes: copied through `fill` and returned as the runs that hold it. */
export interface PageStore {
  /** Stores `length` bytes starting at `start`, read through `fill`; returns their runs. */
  add(start: bigint, length: number, fill: Fill): PageRun[];
  /**
   * Makes room for `length` bytes before an `add`, letting what is staged be written on
   * another thread meanwhile (stores that cannot leave it out).
   */
  room?(length: number): Promise<void>;
}

/** A piece of a range to dump: runs already in the image to reuse, or (no `runs`) bytes to copy. */
export interface Segment {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
  /** The runs that hold [start, end) already. */
  runs?: PageRun[];
}

/** Runs copied before the dump (pre-copy) that are still the memory's contents. */
export interface ReusablePages {
  /** [start, end) in address order: reusable runs and gaps to copy. */
  split(start: bigint, end: bigint): Segment[];
}

/** Bytes copied between two chances for the event loop to turn: half the staging buffer, so
 * each chunk is copied into one half while the other is written. */
const CHUNK = STAGING_SIZE / 2;
/** How long the copy may go on before it lets the event loop turn. */
const YIELD_MS = 50;

/**
 * A function to await between chunks: it lets the event loop turn once `YIELD_MS` have passed,
 * so SIGINT and SIGTERM handlers (which release the process and remove the partial image) run
 * during a long copy, not after it.
 */
export function breather(): () => Promise<void> {
  let lastYield = performance.now();
  return async () => {
    if (performance.now() - lastYield < YIELD_MS) return;
    await new Promise((r) => setTimeout(r, 0));
    lastYield = performance.now();
  };
}

/** What `copyPrivatePages` copies from and into. */
export interface PageCopyContext {
  /** The frozen process. */
  pid: number;
  /** Its memory, open for the whole copy (a small read opens /proc/PID/mem once, not each time). */
  memory: RemoteMemory;
  /**
   * The pages present or swapped in all of its address space (`dumpableRanges` once, in address
   * order), which anonymous mappings take theirs from: one scan, not one a mapping.
   */
  present?: Range[];
  /** Where the pages go. */
  pages: PageStore;
  /** Pre-copy: runs copied while the process ran and not written since, reused. */
  precopied?: ReusablePages;
  /** Awaited between chunks (see `breather`). */
  breathe: () => Promise<void>;
}

/** Ranges `ranges` less those of `holes` (both in address order). */
function without(ranges: Range[], holes: Range[]): Range[] {
  if (!holes.length) return ranges;
  const out: Range[] = [];
  for (const r of ranges) {
    let at = r.start;
    for (const h of holes) {
      if (h.end <= at || h.start >= r.end) continue;
      if (h.start > at) out.push({ start: at, end: h.start });
      at = h.end;
    }
    if (at < r.end) out.push({ start: at, end: r.end });
  }
  return out;
}

/** The parts of `ranges` (in address order, not overlapping) inside [start, end). */
function clip(ranges: Range[], start: bigint, end: bigint): Range[] {
  let lo = 0, hi = ranges.length; // the first range ending after `start`
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid].end <= start) lo = mid + 1;
    else hi = mid;
  }
  const out: Range[] = [];
  for (let i = lo; i < ranges.length && ranges[i].start < end; i++) {
    const r = ranges[i];
    out.push({ start: r.start > start ? r.start : start, end: r.end < end ? r.end : end });
  }
  return out;
}

/** The pages of a private mapping that a dump must copy. */
function privateRanges(ctx: PageCopyContext, m: Mapping): Range[] {
  const pid = ctx.pid;
  // Anonymous memory (hugetlb's too, which has an inode of hugetlbfs's).
  if (m.inode === 0n || m.kind === "anonymous") {
    return ctx.present ? clip(ctx.present, m.start, m.end) : dumpableRanges(pid, m.start, m.end);
  }
  // Over a file: only pages that are no longer the file's (written, copied on write).
  const out: Range[] = [];
  for (const p of listPages(pid, { start: m.start, end: m.end })) {
    if (!p.guard && ((p.present && !p.file) || p.swapped)) appendRange(out, p.start, p.end);
  }
  return out;
}

/**
 * Copies the pages only this process holds of private mapping `m`, appending their runs to
 * `into`; `guards` (guard pages, which cannot be read) are left out, and so are the pages it
 * shares with process `parent` when given (cow.ts): those are returned.
 */
export async function copyPrivatePages(
  ctx: PageCopyContext,
  m: Mapping,
  into: PageRun[],
  guards: Range[] = [],
  parent?: number,
): Promise<Range[]> {
  const { pid, pages, precopied } = ctx;
  const fill: Fill = (addr, buf) => ctx.memory.readAvailable(addr, buf);
  let ranges = without(privateRanges(ctx, m), guards);
  const shared = parent === undefined ? [] : sharedRanges(pid, parent, ranges);
  ranges = without(ranges, shared);
  for (const range of ranges) {
    // Pre-copy hook: runs copied while the process ran and not written since are reused.
    const parts: Segment[] = precopied ? precopied.split(range.start, range.end) : [range];
    for (const r of parts) {
      if (r.runs) {
        into.push(...r.runs);
        continue;
      }
      for (let at = r.start; at < r.end; at += BigInt(CHUNK)) {
        const n = Math.min(CHUNK, Number(r.end - at));
        await pages.room?.(n); // the last chunk is written while this one is copied
        into.push(...pages.add(at, n, fill));
        await ctx.breathe();
      }
    }
  }
  return shared;
}

/** The ranges of a file below `size` that hold data; all of it where lseek cannot tell. */
function dataRanges(fd: number, size: number): { start: bigint; end: bigint }[] {
  const end = BigInt(size);
  const out: { start: bigint; end: bigint }[] = [];
  for (let at = 0n; at < end;) {
    let start: bigint;
    try {
      start = syscall("lseek", fd, at, SEEK.DATA);
    } catch (err) {
      if (err instanceof SyscallError && err.errno === Errno.ENXIO) break; // no data past `at`
      return [{ start: 0n, end }];
    }
    if (start >= end) break;
    const hole = syscall("lseek", fd, start, SEEK.HOLE);
    const stop = hole < end ? hole : end;
    out.push({ start, end: stop });
    at = stop;
  }
  return out;
}

function readFully(fd: number, offset: bigint, buf: Uint8Array): number {
  let done = 0;
  while (done < buf.length) {
    const n = pread(fd, buf.subarray(done), offset + BigInt(done));
    if (n === 0) break;
    done += n;
  }
  return done;
}

/**
 * Stores the parts of file `fd` below `size` that hold data (SEEK_DATA/SEEK_HOLE: holes read as
 * zeros), appending their runs, at byte offsets in the file, to `into`.
 */
export function storeFileData(pages: PageStore, fd: number, size: number, into: PageRun[]): void {
  const fill: Fill = (start, buf) => readFully(fd, start, buf);
  for (const r of dataRanges(fd, size)) {
    into.push(...pages.add(r.start, Number(r.end - r.start), fill));
  }
}

/** Where the tool writes a memory object's contents: a local fd, and the object's offset 0 in it. */
export interface ObjectWriter {
  /** A descriptor of the tool's. */
  fd: number;
  /** Where the object's first byte is in that file. */
  base: bigint;
  /** What the object is, for errors ("deleted file /tmp/x"). */
  what: string;
}

/** What `writePages` reads and where it writes. */
export interface PageWriteContext {
  /** The process being made. */
  pid: number;
  /** Its entry: mappings and objects with their runs, and the extents the runs index. */
  image: ProcessEntry;
  reader: ImageReader;
  /** Two buffers as large as the largest extent. */
  buffers: [Uint8Array, Uint8Array];
  /** The writer of a memory object; none for one made by another process, or left live. */
  writerOf(object: number): ObjectWriter | undefined;
  /** Told the bytes written so far after each extent. */
  onProgress?: (bytes: number) => void;
}

/** Extents up to this size are read on the restore's own thread. */
const SYNC_READ_MAX = 1 << 20;

/** The runs of one extent: of the process's own memory, and of memory objects. */
interface ExtentRuns {
  vm: PageRun[];
  objects: { run: PageRun; object: number }[];
}

/**
 * Writes every page run from the image: process memory and memory objects. Two buffers take
 * turns: while one extent is written into the process, the next is read from the image on
 * another thread (the read and the write are of about the same speed, so this nearly halves
 * the time of a large restore). Returns the bytes written.
 */
export async function writePages(ctx: PageWriteContext): Promise<number> {
  const { image, reader, buffers } = ctx;
  // By extent number (dense, from 0): tens of thousands of runs are grouped without a sort.
  const byExtent: ExtentRuns[] = [];
  const runsOf = (extent: number) => byExtent[extent] ??= { vm: [], objects: [] };
  for (const m of image.mappings) for (const run of m.pages) runsOf(run.extent).vm.push(run);
  for (const o of image.objects) {
    for (const run of o.pages) runsOf(run.extent).objects.push({ run, object: o.id });
  }
  const order: [number, ExtentRuns][] = [];
  byExtent.forEach((runs, extent) => order.push([extent, runs])); // in order, holes skipped
  const read = (k: number) => {
    const extent = image.extents[order[k][0]];
    const into = buffers[k % 2].subarray(0, extent.length);
    // A small extent is read at once: another thread's read costs more in hand-offs than it saves.
    if (extent.length <= SYNC_READ_MAX) {
      return Promise.resolve(reader.readExtent(extent, into, { verify: false }));
    }
    return reader.readExtentAsync(extent, into);
  };
  let bytes = 0;
  let next = order.length ? read(0) : undefined;
  try {
    for (let k = 0; k < order.length; k++) {
      const data = await next!;
      next = k + 1 < order.length ? read(k + 1) : undefined;
      const extent = image.extents[order[k][0]];
      reader.verifyExtent(extent, data);
      writeExtent(ctx, data, order[k][1]);
      bytes += extent.length;
      ctx.onProgress?.(bytes);
    }
  } finally {
    // A failure must not leave a read going into a buffer that is used again.
    await next?.catch(() => {});
  }
  return bytes;
}

/** Scatters one extent's bytes over the process's addresses and its memory objects. */
function writeExtent(ctx: PageWriteContext, data: Uint8Array, runs: ExtentRuns): void {
  const vm = runs.vm;
  // One process_vm_writev per batch of iovecs.
  for (let i = 0; i < vm.length; i += 512) {
    const batch = vm.slice(i, i + 512);
    const first = batch[0].offset;
    const last = batch[batch.length - 1];
    const local = data.subarray(first, last.offset + last.length);
    const contiguous = batch.every((r, k) =>
      k === 0 || r.offset === batch[k - 1].offset + batch[k - 1].length
    );
    if (contiguous) {
      const n = processVmWrite(
        ctx.pid,
        local,
        batch.map((r) => ({ remote: r.start, len: r.length })),
      );
      if (n !== local.length) {
        throw new RestoreError(`short write of pages at ${hex(batch[0].start)}`);
      }
    } else {
      for (const r of batch) {
        const n = processVmWrite(ctx.pid, data.subarray(r.offset, r.offset + r.length), [{
          remote: r.start,
          len: r.length,
        }]);
        if (n !== r.length) throw new RestoreError(`short write of pages at ${hex(r.start)}`);
      }
    }
  }
  for (const { run, object } of runs.objects) {
    const writer = ctx.writerOf(object);
    if (!writer) continue; // made by another process of the tree (filled there), or live
    try {
      pwrite(
        writer.fd,
        data.subarray(run.offset, run.offset + run.length),
        writer.base + run.start,
      );
    } catch (err) {
      // "pwrite(21, 0x0): ENOSPC" says nothing of which file filled its filesystem.
      const why = err instanceof Error ? err.message : String(err);
      throw new RestoreError(`cannot write the contents of ${writer.what}: ${why}`, { cause: err });
    }
  }
}
