/**
 * Gathers page data into one reused staging buffer and hands it to the image's page sink in
 * large extents, so a dump makes few large writes and never holds the image in memory.
 */
import { alignedBytes, PAGE_SIZE } from "../../ffi/mod.ts";
import type { PageExtent, PageSink } from "../image/mod.ts";
import type { PageRun } from "../image/schema.ts";
import { type Fill, type PageStore, STAGING_SIZE } from "../memory/page_data.ts";

/**
 * Collects page runs into extents. Where the sink can write on another thread, the staging
 * buffer is used as two halves that take turns: `room` hands a full half to the sink and goes
 * on in the other while it is written, so copying pages and writing them overlap. `add` alone
 * (without `room`) writes a full half synchronously, as before.
 */
export class PageCollector implements PageStore {
  readonly extents: PageExtent[] = [];
  #halves: Uint8Array[];
  #current = 0;
  /** The write of each half still going on, if any. */
  #writing: (Promise<void> | undefined)[] = [undefined, undefined];
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
    const whole = buffer ?? alignedBytes(STAGING_SIZE);
    const half = Math.floor(whole.length / 2 / PAGE_SIZE) * PAGE_SIZE;
    this.#halves = sink.appendLater && half > 0
      ? [whole.subarray(0, half), whole.subarray(half, 2 * half)]
      : [whole];
    this.#buf = this.#halves[0];
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
      this.#alignUsed();
    }
    return runs;
  }

  async room(length: number): Promise<void> {
    if (this.#halves.length < 2 || this.#used + length <= this.#buf.length) return;
    if (this.#used > 0) {
      const { extent, written } = this.sink.appendLater!(this.#buf.subarray(0, this.#used));
      this.#record(extent);
      this.#writing[this.#current] = written;
      written.catch(() => {}); // seen by whoever waits for it (the next turn, drain)
    }
    this.#current = 1 - this.#current;
    this.#buf = this.#halves[this.#current];
    await this.#writing[this.#current]; // that half's last write must be done before reuse
    this.#writing[this.#current] = undefined;
  }

  /** Writes what is staged as one extent (synchronously). */
  flush(): void {
    if (this.#used === 0) return;
    this.#record(this.sink.append(this.#buf.subarray(0, this.#used)));
  }

  /** Flushes, and waits for every write going on (the first failure rejects). */
  async drain(): Promise<void> {
    this.flush();
    for (let i = 0; i < this.#writing.length; i++) {
      await this.#writing[i];
      this.#writing[i] = undefined;
    }
  }

  /**
   * Starts the next run on a page boundary (after a file's data that ends mid-page), so that
   * every extent the sink gets is whole pages of a page-aligned buffer, which it writes with
   * O_DIRECT; the gap, zeroed, belongs to no run.
   */
  #alignUsed(): void {
    const aligned = Math.ceil(this.#used / PAGE_SIZE) * PAGE_SIZE;
    this.#buf.fill(0, this.#used, aligned);
    this.#used = aligned;
  }

  #record(extent: PageExtent): void {
    const index = this.extents.push(extent) - 1;
    for (const run of this.#pending) run.extent = index;
    this.#pending = [];
    this.#used = 0;
    this.onFlush?.(this.bytes);
  }
}
