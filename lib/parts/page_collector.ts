/**
 * Gathers page data into one reused staging buffer and hands it to the image's page sink in
 * large extents, so a dump makes few large writes and never holds the image in memory.
 */
import type { PageExtent, PageSink } from "../image/mod.ts";
import type { PageRun } from "../schema.ts";

/** Staging buffer size: large enough for ≥ 1 MiB iovecs, small enough for a low peak RSS. */
export const STAGING_SIZE = 32 * 1024 * 1024;

/** Fills `buf` from a source at `start`; returns the bytes it could read. */
export type Fill = (start: bigint, buf: Uint8Array) => number;

/** Where page data goes: copied through `fill` and returned as the runs that hold it. */
export interface PageStore {
  /** Stores `length` bytes starting at `start`, read through `fill`; returns their runs. */
  add(start: bigint, length: number, fill: Fill): PageRun[];
}

/** Collects page runs into extents. */
export class PageCollector implements PageStore {
  readonly extents: PageExtent[] = [];
  #buf: Uint8Array;
  #used = 0;
  #pending: PageRun[] = [];
  /** Bytes collected so far. */
  bytes = 0;

  /** `onFlush` hears the bytes collected so far after each extent is written (progress). */
  constructor(
    private readonly sink: PageSink,
    buffer?: Uint8Array,
    private readonly onFlush?: (bytes: number) => void,
  ) {
    this.#buf = buffer ?? new Uint8Array(STAGING_SIZE);
  }

  /**
   * Copies `length` bytes starting at `start` through `fill` and returns the runs that now hold
   * them (several when the range spans a flush).
   */
  add(start: bigint, length: number, fill: Fill): PageRun[] {
    const runs: PageRun[] = [];
    let done = 0;
    while (done < length) {
      if (this.#used === this.#buf.length) this.flush();
      const n = Math.min(length - done, this.#buf.length - this.#used);
      const at = start + BigInt(done);
      const got = fill(at, this.#buf.subarray(this.#used, this.#used + n));
      if (got !== n) throw new RangeError(`short read at 0x${at.toString(16)}: ${got} of ${n}`);
      const run: PageRun = { start: at, length: n, extent: -1, offset: this.#used };
      this.#pending.push(run);
      runs.push(run);
      this.#used += n;
      done += n;
      this.bytes += n;
    }
    return runs;
  }

  /** Writes what is staged as one extent. */
  flush(): void {
    if (this.#used === 0) return;
    const extent = this.sink.append(this.#buf.subarray(0, this.#used));
    const index = this.extents.push(extent) - 1;
    for (const run of this.#pending) run.extent = index;
    this.#pending = [];
    this.#used = 0;
    this.onFlush?.(this.bytes);
  }
}
