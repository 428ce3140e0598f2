/**
 * Incremental dumps: a dump with a parent image writes only the 4 KiB blocks whose contents
 * differ from the parent's copy of the same address (of the same byte of a memory object); a
 * block that is the same becomes a run that points into the parent's extent (`PageExtent.image`),
 * so memory that did not change is neither written nor flushed to disk again.
 *
 * Changes are found by content: soft-dirty bits are not in every kernel, and a userfaultfd
 * tracker does not outlive the tool between two dumps. Each run of an incremental image carries a
 * CRC-32 per block (`PageRun.checksums`): a block whose CRC differs from the parent's is written
 * without reading the parent. A CRC that matches is no proof, so the parent's bytes are read and
 * compared before a block is reused: that read (mostly from the page cache) costs far less than
 * the write and fsync it saves, and an image never rests on a CRC collision. Runs of a parent
 * without tables (a full image) are compared by their bytes alone.
 */
import { Buffer } from "node:buffer";
import { PAGE_SIZE } from "../../ffi/mod.ts";
import { ImageError } from "../errors.ts";
import { checksum } from "../image/checksum.ts";
import { ImageReader, type PageExtent } from "../image/mod.ts";
import { type ParentLink, recordedParentPath } from "../image/parent.ts";
import { type PageRun, PROCESS_META, type ProcessEntry, processMetaName } from "../image/schema.ts";
import type { Fill, PageStore } from "../memory/page_data.ts";
import type { PageCollector } from "./page_collector.ts";

/**
 * Granularity of change detection and of the checksum tables: one page. The kernel hands out
 * and dirties memory a page at a time, so a scattered write costs one page, not a larger block
 * around it; the table costs 4 bytes a page (0.1 % of the page data) in the metadata.
 */
export const BLOCK = PAGE_SIZE;
/** Bytes read from the process and compared with the parent at a time. */
const CHUNK = 8 << 20;

const byAddress = (a: PageRun, b: PageRun) => a.start < b.start ? -1 : a.start > b.start ? 1 : 0;

/** Page runs of the parent, sorted, for lookups by address (or by offset in an object). */
export class ParentRuns {
  readonly #runs: PageRun[];

  constructor(runs: PageRun[]) {
    this.#runs = [...runs].sort(byAddress);
  }

  /** The run that holds all of [at, at + length), if one does. */
  find(at: bigint, length: number): PageRun | undefined {
    const runs = this.#runs;
    let lo = 0, hi = runs.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (runs[mid].start + BigInt(runs[mid].length) <= at) lo = mid + 1;
      else hi = mid;
    }
    const run = runs[lo];
    return run && covers(run, at, length) ? run : undefined;
  }
}

function covers(run: PageRun, at: bigint, length: number): boolean {
  return run.start <= at && at + BigInt(length) <= run.start + BigInt(run.length);
}

/** What the parent image holds of one process. */
export interface ParentProcess {
  /** The parent entry's extents, which its runs index. */
  extents: PageExtent[];
  /** Runs of its private mappings. */
  memory: ParentRuns;
  /** Runs of its memory objects, by object key. */
  objects: Map<string, ParentRuns>;
}

/** The parent image of an incremental dump, open for reading through its own chain. */
export class ParentImage implements Disposable {
  readonly #incremental: IncrementalPages[] = [];

  private constructor(
    /** The parent image (its own parents behind it). */
    readonly reader: ImageReader,
    /** What the child's manifest records of it. */
    readonly link: ParentLink,
    private readonly root: ProcessEntry,
  ) {}

  /** Opens the image `parentDir` as the parent of the image to be written to `childDir`. */
  static async open(parentDir: string, childDir: string): Promise<ParentImage> {
    const reader = await ImageReader.open(parentDir).catch((err) => {
      if (!(err instanceof ImageError)) throw err;
      throw new ImageError(`parent image ${parentDir}: ${err.message}`, { cause: err });
    });
    try {
      const root = await reader.readMeta<ProcessEntry>(PROCESS_META);
      const link: ParentLink = {
        path: recordedParentPath(childDir, parentDir),
        manifestChecksum: reader.manifestChecksum,
        createdAt: reader.manifest.createdAt,
      };
      return new ParentImage(reader, link, root);
    } catch (err) {
      reader.close();
      throw err;
    }
  }

  /** What the parent holds of process `pid`; undefined when it did not dump that pid. */
  async process(pid: number): Promise<ParentProcess | undefined> {
    let entry: ProcessEntry | undefined;
    if (this.root.pid === pid) entry = this.root;
    else if (this.root.tree?.some((t) => t.pid === pid)) {
      entry = await this.reader.readMeta<ProcessEntry>(processMetaName(pid));
    }
    if (!entry) return undefined;
    const objects = new Map<string, ParentRuns>();
    for (const o of entry.objects) if (o.key) objects.set(o.key, new ParentRuns(o.pages));
    return {
      extents: entry.extents,
      memory: new ParentRuns(entry.mappings.filter((m) => !m.shared).flatMap((m) => m.pages)),
      objects,
    };
  }

  /** A page store for process `pid` that reuses what the parent holds of it. */
  async pagesFor(pid: number, collector: PageCollector): Promise<IncrementalPages> {
    const pages = new IncrementalPages(collector, this.reader, await this.process(pid));
    this.#incremental.push(pages);
    return pages;
  }

  /** Bytes reused from the parent chain so far, over every process. */
  get reusedBytes(): number {
    return this.#incremental.reduce((n, p) => n + p.reusedBytes, 0);
  }

  /** Closes the parent chain. */
  close(): void {
    this.reader.close();
  }

  /** Same as `close()`, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }
}

/**
 * Stores one process's page data through its collector, block by block: blocks equal to the
 * parent's copy become runs into the parent's extents, the others are collected (written).
 */
export class IncrementalPages {
  /** Bytes that point into the parent chain instead of being written. */
  reusedBytes = 0;
  readonly #data = new Uint8Array(CHUNK);
  readonly #parentData = new Uint8Array(CHUNK);
  /** Index of a parent extent in the parent entry → index of its reference in ours. */
  readonly #extentRefs = new Map<number, number>();
  readonly #tables = new WeakMap<PageRun, DataView>();

  constructor(
    private readonly collector: PageCollector,
    private readonly reader: ImageReader,
    private readonly parent: ParentProcess | undefined,
  ) {}

  /** The store for the process's private mappings (compared by address). */
  memory(): PageStore {
    return { add: (start, length, fill) => this.#add(start, length, fill, this.parent?.memory) };
  }

  /** The store for the memory object `key` (compared with the parent's object of that key). */
  object(key: string | undefined): PageStore {
    const from = key === undefined ? undefined : this.parent?.objects.get(key);
    return { add: (start, length, fill) => this.#add(start, length, fill, from) };
  }

  #add(start: bigint, length: number, fill: Fill, from: ParentRuns | undefined): PageRun[] {
    const out: PageRun[] = [];
    for (let done = 0; done < length;) {
      const n = Math.min(CHUNK, length - done);
      const at = start + BigInt(done);
      const data = this.#data.subarray(0, n);
      const got = fill(at, data);
      if (got !== n) throw new RangeError(`short read at 0x${at.toString(16)}: ${got} of ${n}`);
      this.#store(at, data, from, out);
      done += n;
    }
    return out;
  }

  /** Stores `data` (the bytes at `at`), appending its runs to `out` in address order. */
  #store(at: bigint, data: Uint8Array, from: ParentRuns | undefined, out: PageRun[]): void {
    const n = data.length;
    const blocks = Math.ceil(n / BLOCK);
    const blockAt = (b: number) => at + BigInt(b * BLOCK);
    const blockLength = (b: number) => Math.min(BLOCK, n - b * BLOCK);
    const sums = new Uint32Array(blocks);
    for (let b = 0; b < blocks; b++) {
      sums[b] = checksum(data.subarray(b * BLOCK, b * BLOCK + blockLength(b)));
    }
    // The parent run holding an equal copy of each block, if any.
    const same: (PageRun | undefined)[] = new Array(blocks);
    const candidate = (run: PageRun, b: number) =>
      covers(run, blockAt(b), blockLength(b)) &&
      this.#mayBeEqual(run, blockAt(b), blockLength(b), sums[b]);
    for (let b = 0; b < blocks;) {
      const run = from?.find(blockAt(b), blockLength(b));
      if (!run || !candidate(run, b)) {
        b++;
        continue;
      }
      let e = b + 1;
      while (e < blocks && candidate(run, e)) e++;
      this.#compare(run, at, data, b, e, same);
      b = e;
    }
    for (let b = 0; b < blocks;) {
      let e = b + 1;
      while (e < blocks && same[e] === same[b]) e++;
      const offset = b * BLOCK, end = Math.min(n, e * BLOCK);
      const run = same[b];
      if (run) {
        const start = blockAt(b);
        out.push({
          start,
          length: end - offset,
          extent: this.#extentRef(run.extent),
          offset: run.offset + Number(start - run.start),
          checksums: table(sums.subarray(b, e)),
        });
        this.reusedBytes += end - offset;
      } else {
        const copy: Fill = (addr, buf) => {
          const from = Number(addr - at);
          buf.set(data.subarray(from, from + buf.length));
          return buf.length;
        };
        for (const written of this.collector.add(blockAt(b), end - offset, copy)) {
          // The collector may split a run anywhere (at a flush): its table is its own blocks'.
          const from = Number(written.start - at);
          written.checksums = blockChecksums(data.subarray(from, from + written.length));
          out.push(written);
        }
      }
      b = e;
    }
  }

  /**
   * Whether the block (`length` bytes at `at`, CRC `sum`) may equal the parent's copy in `run`:
   * false only when the parent's table has a CRC for exactly that block and it differs.
   */
  #mayBeEqual(run: PageRun, at: bigint, length: number, sum: number): boolean {
    if (!run.checksums) return true;
    const rel = Number(at - run.start);
    const index = rel / BLOCK;
    // Tables on another grid, or a block of another length: the bytes decide.
    if (!Number.isInteger(index) || Math.min(BLOCK, run.length - rel) !== length) return true;
    if ((index + 1) * 4 > run.checksums.length) return true;
    let view = this.#tables.get(run);
    if (!view) {
      const t = run.checksums;
      this.#tables.set(run, view = new DataView(t.buffer, t.byteOffset, t.byteLength));
    }
    return view.getUint32(index * 4, true) === sum;
  }

  /** Compares blocks [b, e) of `data` with the parent's bytes in `run`, marking equal ones. */
  #compare(
    run: PageRun,
    at: bigint,
    data: Uint8Array,
    b: number,
    e: number,
    same: (PageRun | undefined)[],
  ): void {
    const from = b * BLOCK, to = Math.min(data.length, e * BLOCK);
    const mine = data.subarray(from, to);
    const theirs = this.reader.readExtentPart(
      this.parent!.extents[run.extent],
      run.offset + Number(at + BigInt(from) - run.start),
      this.#parentData.subarray(0, to - from),
    );
    if (Buffer.compare(mine, theirs) === 0) {
      same.fill(run, b, e);
      return;
    }
    for (let k = b; k < e; k++) {
      const x = k * BLOCK - from, y = Math.min(to, (k + 1) * BLOCK) - from;
      if (Buffer.compare(mine.subarray(x, y), theirs.subarray(x, y)) === 0) same[k] = run;
    }
  }

  /** Our reference to the parent's extent `index`: the same extent, one more link up. */
  #extentRef(index: number): number {
    let ref = this.#extentRefs.get(index);
    if (ref === undefined) {
      const e = this.parent!.extents[index];
      const extent: PageExtent = {
        file: e.file,
        offset: e.offset,
        length: e.length,
        checksum: e.checksum,
        image: (e.image ?? 0) + 1,
      };
      ref = this.collector.extents.push(extent) - 1;
      this.#extentRefs.set(index, ref);
    }
    return ref;
  }
}

/** The checksum table of `bytes`: CRC-32 of each block, little-endian u32s. */
export function blockChecksums(bytes: Uint8Array): Uint8Array {
  const sums = new Uint32Array(Math.ceil(bytes.length / BLOCK));
  for (let b = 0; b < sums.length; b++) {
    sums[b] = checksum(bytes.subarray(b * BLOCK, Math.min(bytes.length, (b + 1) * BLOCK)));
  }
  return table(sums);
}

function table(sums: Uint32Array): Uint8Array {
  const out = new Uint8Array(sums.length * 4);
  const view = new DataView(out.buffer);
  for (let i = 0; i < sums.length; i++) view.setUint32(i * 4, sums[i], true);
  return out;
}
