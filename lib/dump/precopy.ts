/**
 * Pre-copy (CRIU's pre-dump, within one checkpoint): freeze briefly to arm dirty tracking
 * (dirty_tracking.ts) over each process's private anonymous writable mappings, let the
 * processes run while their pages are copied into the image, then, frozen for the real dump,
 * copy again only the pages written since arming. Pages still clean reuse the runs copied while
 * the process ran: the same extents of the image's page files, so the image format is unchanged.
 * Pre-copied bytes of pages written later stay in the page files, unreferenced.
 */
import { close, pageDown, pidfdOpen, syscall, SyscallError } from "../../ffi/mod.ts";
import { NoSuchProcess } from "../errors.ts";
import type { FrozenProcess } from "../ptrace/freeze.ts";
import type { PageSink } from "../image/mod.ts";
import { listMappings } from "../inspect/mappings.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import { type AddressRange, dumpableRanges } from "../inspect/pages.ts";
import type { PageRun } from "../image/schema.ts";
import { DirtyTracker, isTrackable } from "./dirty_tracking.ts";
import { takeUserfaultfd } from "../ptrace/userfaultfd.ts";
import { PageCollector } from "./page_collector.ts";
import type { ReusablePages, Segment } from "../memory/page_data.ts";

/** Bytes copied between two chances for the event loop to turn. */
const CHUNK = 32 * 1024 * 1024;

/**
 * Pre-copied runs still valid at the real dump: sorted, page aligned, not overlapping. Splits a
 * range to dump into what they cover and the gaps between.
 */
export class PrecopiedPages implements ReusablePages {
  /** Bytes handed out for reuse. */
  reusedBytes = 0;

  constructor(private readonly slices: PageRun[]) {}

  /** [start, end) in address order: reusable runs (clipped) and gaps to copy. */
  split(start: bigint, end: bigint): Segment[] {
    const out: Segment[] = [];
    const s = this.slices;
    // First slice that ends after `start`.
    let lo = 0, hi = s.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (s[mid].start + BigInt(s[mid].length) <= start) lo = mid + 1;
      else hi = mid;
    }
    let at = start;
    for (let i = lo; i < s.length && s[i].start < end && at < end; i++) {
      const runEnd = s[i].start + BigInt(s[i].length);
      const a = s[i].start > at ? s[i].start : at;
      const b = runEnd < end ? runEnd : end;
      if (a >= b) continue;
      if (a > at) out.push({ start: at, end: a });
      const run = clip(s[i], a, b);
      this.reusedBytes += run.length;
      const last = out[out.length - 1];
      if (last?.runs && last.end === a) {
        last.end = b;
        appendRun(last.runs, run);
      } else out.push({ start: a, end: b, runs: [run] });
      at = b;
    }
    if (at < end) out.push({ start: at, end });
    return out;
  }
}

function clip(run: PageRun, a: bigint, b: bigint): PageRun {
  const skip = Number(a - run.start);
  return { start: a, length: Number(b - a), extent: run.extent, offset: run.offset + skip };
}

/** Appends `run` to `runs`, joining it to the last one when both are contiguous in one extent. */
function appendRun(runs: PageRun[], run: PageRun): void {
  const last = runs[runs.length - 1];
  if (
    last && last.extent === run.extent && last.offset + last.length === run.offset &&
    last.start + BigInt(last.length) === run.start
  ) {
    last.length += run.length;
  } else runs.push(run);
}

/** The runs of `runs` (sorted) inside `keep` (sorted, merged) minus `drop` (any order). */
export function intersectRuns(
  runs: PageRun[],
  keep: AddressRange[],
  drop: AddressRange[] = [],
): PageRun[] {
  const out: PageRun[] = [];
  let k = 0;
  for (const run of runs) {
    const runEnd = run.start + BigInt(run.length);
    while (k < keep.length && keep[k].end <= run.start) k++;
    for (let j = k; j < keep.length && keep[j].start < runEnd; j++) {
      const a = keep[j].start > run.start ? keep[j].start : run.start;
      const b = keep[j].end < runEnd ? keep[j].end : runEnd;
      if (a < b) {
        for (const [x, y] of subtract(a, b, drop)) appendRun(out, clip(run, x, y));
      }
    }
  }
  return out;
}

/** Two sorted lists of runs that do not overlap, as one sorted list. */
function mergeRuns(a: PageRun[], b: PageRun[]): PageRun[] {
  const out: PageRun[] = [];
  let i = 0, j = 0;
  while (i < a.length || j < b.length) {
    const next = j >= b.length || (i < a.length && a[i].start < b[j].start) ? a[i++] : b[j++];
    appendRun(out, { ...next });
  }
  return out;
}

function subtract(a: bigint, b: bigint, drop: AddressRange[]): [bigint, bigint][] {
  let parts: [bigint, bigint][] = [[a, b]];
  for (const d of drop) {
    if (d.end <= a || d.start >= b) continue;
    parts = parts.flatMap(([x, y]): [bigint, bigint][] => {
      if (d.end <= x || d.start >= y) return [[x, y]];
      const r: [bigint, bigint][] = [];
      if (d.start > x) r.push([x, d.start]);
      if (d.end < y) r.push([d.end, y]);
      return r;
    });
  }
  return parts;
}

/** Pre-copy state of one process: its dirty tracker, page collector and pre-copied runs. */
export class ProcessPreCopy {
  /** Runs copied while the process ran, in address order. */
  readonly runs: PageRun[] = [];
  /** Ranges that could not be read while it ran (unmapped meanwhile): never reused. */
  readonly unread: AddressRange[] = [];
  /** Pre-copied bytes the real dump reused. */
  reusedBytes = 0;
  /** Where the collector reports progress; set by the real dump. */
  progress?: (bytes: number) => void;
  readonly pages: PageCollector;

  constructor(
    readonly pid: number,
    readonly pidfd: number,
    readonly tracker: DirtyTracker,
    sink: PageSink,
    staging: Uint8Array,
  ) {
    this.pages = new PageCollector(sink, staging, (b) => this.progress?.(b));
  }

  /** Whether the process that was armed still lives (its pid may have been reused since). */
  alive(): boolean {
    try {
      syscall("pidfd_send_signal", this.pidfd, 0, 0, 0);
      return true;
    } catch {
      return false;
    }
  }

  /** Reads pages for the collector; what was unmapped meanwhile is zeros, never reused. */
  #filler(memory: RemoteMemory): (addr: bigint, buf: Uint8Array) => number {
    return (addr, buf) => {
      const got = memory.readAvailable(addr, buf);
      if (got < buf.length) {
        // Unmapped meanwhile: the bytes are never reused, but keep the run whole.
        buf.fill(0, got);
        this.unread.push({ start: addr + pageDown(BigInt(got)), end: addr + BigInt(buf.length) });
      }
      return buf.length;
    };
  }

  /** Copies the dumpable pages of the tracked ranges (the process runs meanwhile). */
  async copy(breathe: () => Promise<void>): Promise<void> {
    const pid = this.pid;
    using memory = new RemoteMemory(pid);
    const fill = this.#filler(memory);
    for (const range of this.tracker.ranges) {
      for (const r of dumpableRanges(pid, range.start, range.end)) {
        for (let at = r.start; at < r.end; at += BigInt(CHUNK)) {
          const n = Math.min(CHUNK, Number(r.end - at));
          for (const run of this.pages.add(at, n, fill)) appendRun(this.runs, run);
          await breathe();
        }
      }
    }
    this.pages.flush();
  }

  /**
   * Copies again, while the process runs, the pages written since they were last copied (the
   * tracker protects them again first, so a write during the copy is caught next time); their
   * new runs replace the old ones. Returns the bytes copied.
   */
  async recopy(breathe: () => Promise<void>): Promise<number> {
    const before = this.pages.bytes;
    const written = this.tracker.takeWritten();
    if (written.length === 0) return 0;
    using memory = new RemoteMemory(this.pid);
    const fresh: PageRun[] = [];
    const fill = this.#filler(memory);
    for (const r of written) {
      for (let at = r.start; at < r.end; at += BigInt(CHUNK)) {
        const n = Math.min(CHUNK, Number(r.end - at));
        for (const run of this.pages.add(at, n, fill)) appendRun(fresh, run);
        await breathe();
      }
    }
    this.pages.flush();
    const stale = intersectRuns(this.runs, [{ start: 0n, end: 1n << 64n }], written);
    this.runs.splice(0, this.runs.length, ...mergeRuns(stale, fresh));
    return this.pages.bytes - before;
  }

  /**
   * Called while frozen for the real dump: the pre-copied runs whose pages were not written
   * since arming, ready for `dumpAddressSpace`, but those in `fresh` (copied again all the same).
   */
  reusable(fresh: AddressRange[] = []): PrecopiedPages {
    if (!this.alive() || this.runs.length === 0) return new PrecopiedPages([]);
    return new PrecopiedPages(
      intersectRuns(this.runs, this.tracker.cleanRanges(), [...this.unread, ...fresh]),
    );
  }

  /** Stops tracking: the process is left as it was. */
  close(): void {
    try {
      this.tracker.close();
    } finally {
      close(this.pidfd);
    }
  }
}

/** What `preCopy` returns. */
export class PreCopy {
  /** How long the processes were frozen to arm the tracking, in ms. */
  frozenMs = 0;
  /** Bytes copied while the processes ran. */
  copiedBytes = 0;
  readonly byPid = new Map<number, ProcessPreCopy>();
  #reused = 0;

  /**
   * Another pass while the processes run: the pages written since their last copy, copied
   * again. Returns the bytes copied (what the freeze would otherwise have had to copy).
   */
  async again(breathe: () => Promise<void>): Promise<number> {
    let bytes = 0;
    for (const p of this.byPid.values()) {
      if (p.alive()) bytes += await p.recopy(breathe);
    }
    this.copiedBytes += bytes;
    return bytes;
  }

  /** Pre-copied bytes the real dump reused, over all processes. */
  reusedBytes(): number {
    let n = this.#reused;
    for (const p of this.byPid.values()) n += p.reusedBytes;
    return n;
  }

  /** Ends all tracking (also on failure paths; safe to call twice). */
  close(): void {
    const errors: unknown[] = [];
    for (const p of this.byPid.values()) {
      try {
        p.close();
      } catch (err) {
        errors.push(err);
      }
    }
    this.#reused = this.reusedBytes();
    this.byPid.clear();
    if (errors.length) throw errors[0];
  }
}

/**
 * Freezes the processes with `freezeTree`, arms dirty tracking in each, releases them and copies
 * their tracked pages while they run. A process whose tracking cannot be armed (a kernel without
 * async write-protection) is left to the real dump. On failure every tracker is closed and every
 * process released.
 */
export async function preCopy(
  freezeTree: () => Promise<FrozenProcess[]>,
  sink: PageSink,
  staging: Uint8Array,
  breathe: () => Promise<void>,
): Promise<PreCopy> {
  const pre = new PreCopy();
  const started = performance.now();
  let tree: FrozenProcess[] = [];
  try {
    tree = await freezeTree();
    for (const frozen of tree) {
      const pid = frozen.pid;
      const ranges = listMappings(pid).filter(isTrackable).map((m) => ({
        start: m.start,
        end: m.end,
      }));
      if (ranges.length === 0) continue;
      const pidfd = pidfdOpen(pid);
      let tracker: DirtyTracker;
      try {
        tracker = new DirtyTracker(pid, takeUserfaultfd(frozen.injector, pidfd), ranges);
      } catch (err) {
        close(pidfd);
        if (err instanceof SyscallError && !(err instanceof NoSuchProcess)) continue;
        throw err;
      }
      pre.byPid.set(pid, new ProcessPreCopy(pid, pidfd, tracker, sink, staging));
    }
  } catch (err) {
    pre.close();
    throw err;
  } finally {
    for (const f of [...tree].reverse()) f.releaseSync();
    pre.frozenMs = performance.now() - started;
  }
  try {
    for (const p of pre.byPid.values()) {
      try {
        await p.copy(breathe);
      } catch (err) {
        if (p.alive()) throw err;
        // It ended meanwhile: nothing of it to reuse.
        p.close();
        pre.byPid.delete(p.pid);
      }
      pre.copiedBytes += p.pages.bytes;
    }
  } catch (err) {
    pre.close();
    throw err;
  }
  return pre;
}
