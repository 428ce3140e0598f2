/**
 * Post-copy: the page-file bytes a sender holds back at the freeze (the pages written in the
 * last round), sent once the process runs on the receiver. Both sides keep them as byte ranges
 * of the image's page files; the receiver tracks which are still missing and lets a reader wait
 * for the ones it needs.
 */
import type { PageExtent } from "../image/mod.ts";
import type { PageRun, ProcessEntry } from "../image/schema.ts";
import type { ImageReader } from "../image/reader.ts";
import { checksum } from "../image/checksum.ts";

/** Byte ranges `[start, end)` of page files, by file name, in order. */
export type LateRanges = Record<string, [number, number][]>;

/** `ranges` less `[start, end)`. */
export function without(
  ranges: [number, number][],
  start: number,
  end: number,
): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of ranges) {
    if (e <= start || s >= end) out.push([s, e]);
    else {
      if (s < start) out.push([s, start]);
      if (e > end) out.push([end, e]);
    }
  }
  return out;
}

/** The parts of `ranges` inside `[start, end)`. */
export function within(ranges: [number, number][], start: number, end: number): [number, number][] {
  const out: [number, number][] = [];
  for (const [s, e] of ranges) {
    const a = Math.max(s, start);
    const b = Math.min(e, end);
    if (a < b) out.push([a, b]);
  }
  return out;
}

/** Bytes of `late` in all. */
export function lateBytes(late: LateRanges): number {
  return Object.values(late).flat().reduce((n, [s, e]) => n + e - s, 0);
}

/** Whether the bytes of `extent` (of this image, not a parent) are all in. */
export function extentIn(late: LateRanges, extent: PageExtent): boolean {
  if (extent.image) return true;
  const missing = late[extent.file];
  return !missing || !within(missing, extent.offset, extent.offset + extent.length).length;
}

/** What a restore is told of bytes still on their way (`RestoreOptions.late`). */
export interface LatePagesArrival {
  /** The bytes missing now. */
  missing(): LateRanges;
  /** Resolves once every byte of `extents` is in; rejects if they never will be. */
  arrival(extents: PageExtent[]): Promise<void>;
}

/**
 * Waits until the pages `p` holds (those a lazy restore writes before the process runs) are in.
 * A run in an extent not all in is given an extent of its own, of its bytes alone, so that only
 * they are waited for (an extent of the last round holds pages the page server serves later
 * too); its checksum is taken once they are in (they came checked by the stream; the page
 * server checks the whole extent's). Returns `p` with those runs.
 */
export async function eagerPagesIn(
  p: ProcessEntry,
  late: LatePagesArrival,
  reader: ImageReader,
): Promise<ProcessEntry> {
  const missing = late.missing();
  const extents = [...p.extents];
  const own: number[] = [];
  const narrow = (r: PageRun): PageRun => {
    const x = p.extents[r.extent];
    if (extentIn(missing, x)) return r;
    own.push(
      extents.push({ file: x.file, offset: x.offset + r.offset, length: r.length, checksum: 0 }) -
        1,
    );
    return { ...r, extent: extents.length - 1, offset: 0 };
  };
  const entry = {
    ...p,
    mappings: p.mappings.map((m) => ({ ...m, pages: m.pages.map(narrow) })),
    objects: p.objects.map((o) => ({ ...o, pages: o.pages.map(narrow) })),
    extents,
  };
  await late.arrival(own.map((i) => extents[i]));
  for (const i of own) {
    const bytes = reader.readExtent(extents[i], undefined, { verify: false });
    extents[i] = { ...extents[i], checksum: checksum(bytes) };
  }
  return entry;
}

/** The receiver's record of the held-back bytes still missing, and who waits for which. */
export class LatePages implements LatePagesArrival {
  readonly #missing: LateRanges;
  #waiters: { extents: PageExtent[]; done: () => void; fail: (err: Error) => void }[] = [];
  #failure?: Error;

  constructor(late: LateRanges) {
    this.#missing = structuredClone(late);
  }

  /** Whether every held-back byte is in. */
  get complete(): boolean {
    return Object.values(this.#missing).every((r) => !r.length);
  }

  /** The bytes missing now. */
  missing(): LateRanges {
    return structuredClone(this.#missing);
  }

  /** The missing bytes of `extents`, by file (what to ask the sender for first). */
  missingOf(extents: PageExtent[]): LateRanges {
    const out: LateRanges = {};
    for (const x of extents) {
      const missing = x.image ? undefined : this.#missing[x.file];
      const parts = missing ? within(missing, x.offset, x.offset + x.length) : [];
      if (parts.length) (out[x.file] ??= []).push(...parts);
    }
    return out;
  }

  /** Resolves once every byte of `extents` is in; rejects if they never will be. */
  arrival(extents: PageExtent[]): Promise<void> {
    if (this.#failure) return Promise.reject(this.#failure);
    if (extents.every((x) => extentIn(this.#missing, x))) return Promise.resolve();
    return new Promise((done, fail) => this.#waiters.push({ extents, done, fail }));
  }

  /** Bytes `[start, end)` of `file` are written into the image. */
  arrived(file: string, start: number, end: number): void {
    const missing = this.#missing[file];
    if (!missing) return;
    this.#missing[file] = without(missing, start, end);
    this.#waiters = this.#waiters.filter((w) => {
      if (!w.extents.every((x) => extentIn(this.#missing, x))) return true;
      w.done();
      return false;
    });
  }

  /** The missing bytes will never come (the sender is gone): every waiter fails with `err`. */
  fail(err: Error): void {
    this.#failure ??= err;
    for (const w of this.#waiters) w.fail(err);
    this.#waiters = [];
  }
}
