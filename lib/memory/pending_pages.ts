/**
 * The pages of a lazily restored process that are still to be filled from the image, each with
 * where its bytes are: in address order, kept as runs (a run is one piece of one extent). The page
 * server takes pieces out as it fills them, and moves or drops them as the process remaps,
 * discards or unmaps its memory (a discarded page reads as zeros: it must never get image data).
 * Addresses are plain numbers: user addresses are below 2^47.
 */
import type { PageRun } from "../image/schema.ts";

/** A piece of the image to put at `start`: bytes `offset` … of extent `extent`. */
export interface PendingRun {
  /** First address. */
  start: number;
  /** Address just past the end. */
  end: number;
  /** Index of the extent holding the bytes. */
  extent: number;
  /** Byte offset of `start`'s bytes in that extent. */
  offset: number;
}

/** Pages still missing, in address order, not overlapping. */
export class PendingPages {
  #runs: PendingRun[];

  /** Starts from `runs`, in any order (not overlapping). */
  constructor(runs: PendingRun[] = []) {
    this.#runs = runs.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  }

  /** The image's page runs as pending pieces. */
  static fromRuns(runs: Iterable<PageRun>): PendingPages {
    const out: PendingRun[] = [];
    for (const r of runs) {
      const start = Number(r.start);
      out.push({ start, end: start + r.length, extent: r.extent, offset: r.offset });
    }
    return new PendingPages(out);
  }

  /** A copy (a forked child starts with its parent's missing pages). */
  clone(): PendingPages {
    return new PendingPages(this.#runs.map((r) => ({ ...r })));
  }

  /** Whether nothing is left. */
  get empty(): boolean {
    return this.#runs.length === 0;
  }

  /** Bytes left. */
  get bytes(): number {
    return this.#runs.reduce((n, r) => n + r.end - r.start, 0);
  }

  /** The first piece left in address order, of those `which` accepts (all by default). */
  first(which?: (r: PendingRun) => boolean): PendingRun | undefined {
    return which ? this.#runs.find(which) : this.#runs[0];
  }

  /** The piece holding `addr`, if it is still missing. */
  find(addr: number): PendingRun | undefined {
    const i = this.#firstEndingAfter(addr);
    const r = this.#runs[i];
    return r && r.start <= addr ? r : undefined;
  }

  /** Index of the first run whose end is past `addr`. */
  #firstEndingAfter(addr: number): number {
    let lo = 0, hi = this.#runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.#runs[mid].end <= addr) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  /** Takes [start, end) out; returns the pieces that were in it, in address order. */
  take(start: number, end: number): PendingRun[] {
    const i = this.#firstEndingAfter(start);
    let j = i;
    const taken: PendingRun[] = [];
    const kept: PendingRun[] = [];
    for (; j < this.#runs.length && this.#runs[j].start < end; j++) {
      const r = this.#runs[j];
      if (r.start < start) kept.push({ ...r, end: start });
      const s = Math.max(r.start, start), e = Math.min(r.end, end);
      taken.push({ start: s, end: e, extent: r.extent, offset: r.offset + (s - r.start) });
      if (r.end > end) kept.push({ ...r, start: end, offset: r.offset + (end - r.start) });
    }
    this.#runs.splice(i, j - i, ...kept);
    return taken;
  }

  /** Puts pieces back (taken, then not filled). */
  putBack(pieces: PendingRun[]): void {
    for (const p of pieces) {
      if (p.end <= p.start) continue;
      this.#runs.splice(this.#firstEndingAfter(p.start), 0, p);
    }
  }

  /** mremap: what was at [from, from + len) is now at [to, to + len); what was there is gone. */
  move(from: number, to: number, len: number): void {
    const moved = this.take(from, from + len);
    this.take(to, to + len);
    this.putBack(moved.map((p) => ({ ...p, start: p.start - from + to, end: p.end - from + to })));
  }
}
