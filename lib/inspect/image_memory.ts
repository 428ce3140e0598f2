/**
 * The memory of a process in an image, read at virtual addresses: an index from addresses to the
 * runs of page data that hold them, read a part at a time from the page files (never loaded
 * whole). Memory the image holds no pages of reads as the process would have seen it: zeroes for
 * anonymous memory, the parent's pages where a child shared them copy-on-write, the file's bytes
 * for a file mapping whose file is unchanged; anything else cannot be read, with the reason.
 */
import { PAGE_SIZE } from "../../ffi/mod.ts";
import type { ImageReader } from "../image/reader.ts";
import type { PageExtent } from "../image/pages.ts";
import type { MappingEntry, PageRun, ProcessEntry } from "../image/schema.ts";
import { fileChanged } from "../memory/mapping.ts";

const PAGE = BigInt(PAGE_SIZE);

/** Stored page data placed at a virtual address. */
export interface StoredPiece {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
  /** The extent holding the bytes. */
  extent: PageExtent;
  /** Byte of the extent where `start`'s byte is. */
  offset: number;
  /** The run's per-page CRC-32 table (incremental images), and the address its first page is at. */
  checksums?: { table: Uint8Array; from: bigint };
}

/** How the bytes of a mapping that the image holds no pages of are read. */
type Hole =
  | { type: "zero" }
  | { type: "parent" }
  | { type: "file"; path: string; size: number; mtimeMs: number; offset: bigint }
  | { type: "none"; why: string };

/** One mapping of the image with its stored pieces, in address order. */
export interface MappedArea {
  /** First address. */
  start: bigint;
  /** Address just past the end. */
  end: bigint;
  /** The image's entry (absent for the special mappings, vdso and vvar). */
  entry?: MappingEntry;
  /** Its stored pieces, in address order. */
  pieces: StoredPiece[];
  hole: Hole;
}

/** The reason a range of an image's memory cannot be read. */
export class Unreadable {
  constructor(readonly addr: bigint, readonly why: string) {}
}

/** The memory of one process of an image. */
export class ImageMemory {
  /** Every mapping, the special ones included, in address order. */
  readonly areas: MappedArea[];

  /**
   * `parent`: the memory of the process it was forked from, for the ranges it still shared
   * copy-on-write when dumped (`sharedWithParent`).
   */
  constructor(
    private readonly reader: ImageReader,
    entry: ProcessEntry,
    private readonly parent?: ImageMemory,
  ) {
    this.areas = buildAreas(entry);
  }

  /** The area covering `addr`, or undefined. */
  areaAt(addr: bigint): MappedArea | undefined {
    const a = this.areas[firstEndingAfter(this.areas, addr)];
    return a && a.start <= addr ? a : undefined;
  }

  /**
   * Fills `buf` from `addr` on; returns the bytes read and, when short, why the next byte could
   * not be read.
   */
  readInto(addr: bigint, buf: Uint8Array): { read: number; stop?: Unreadable } {
    let done = 0;
    while (done < buf.length) {
      const at = addr + BigInt(done);
      const area = this.areaAt(at);
      if (!area) return { read: done, stop: new Unreadable(at, "no mapping there") };
      const upto = Math.min(buf.length, done + Number(area.end - at));
      const r = this.#fillArea(area, at, buf.subarray(done, upto));
      done += r.read;
      if (r.stop) return { read: done, stop: r.stop };
    }
    return { read: done };
  }

  /** Fills `out` (inside `area`) from `at` on. */
  #fillArea(area: MappedArea, at: bigint, out: Uint8Array): { read: number; stop?: Unreadable } {
    let done = 0;
    const end = at + BigInt(out.length);
    for (const p of area.pieces) {
      if (p.end <= at + BigInt(done)) continue;
      if (p.start >= end) break;
      const pos = at + BigInt(done);
      if (p.start > pos) {
        const r = this.#fillHole(area, pos, out.subarray(done, done + Number(p.start - pos)));
        done += r.read;
        if (r.stop) return { read: done, stop: r.stop };
      }
      const from = at + BigInt(done);
      const n = Math.min(out.length - done, Number(p.end - from));
      this.reader.readExtentPart(
        p.extent,
        p.offset + Number(from - p.start),
        out.subarray(done, done + n),
      );
      done += n;
    }
    if (done < out.length) {
      const r = this.#fillHole(area, at + BigInt(done), out.subarray(done));
      done += r.read;
      if (r.stop) return { read: done, stop: r.stop };
    }
    return { read: done };
  }

  /** Fills `out` with the bytes at `at` that no stored piece holds. */
  #fillHole(area: MappedArea, at: bigint, out: Uint8Array): { read: number; stop?: Unreadable } {
    const hole = area.hole;
    switch (hole.type) {
      case "zero":
        out.fill(0);
        return { read: out.length };
      case "parent":
        if (!this.parent) {
          return { read: 0, stop: new Unreadable(at, "shared with a parent not in the image") };
        }
        return this.parent.readInto(at, out);
      case "file":
        return readFileHole(hole, area, at, out);
      case "none":
        return { read: 0, stop: new Unreadable(at, hole.why) };
    }
  }

  /** The stored pieces that overlap [start, end), in address order. */
  *piecesIn(start: bigint, end: bigint): Iterable<StoredPiece> {
    for (let i = firstEndingAfter(this.areas, start); i < this.areas.length; i++) {
      const area = this.areas[i];
      if (area.start >= end) break;
      const pieces = area.pieces;
      for (let j = firstEndingAfter(pieces, start); j < pieces.length; j++) {
        if (pieces[j].start >= end) break;
        yield pieces[j];
      }
    }
  }

  /** The stored piece holding the byte at `addr`, or undefined. */
  pieceAt(addr: bigint): StoredPiece | undefined {
    const pieces = this.areaAt(addr)?.pieces ?? [];
    const p = pieces[firstEndingAfter(pieces, addr)];
    return p && p.start <= addr ? p : undefined;
  }
}

/** The index of the first of the sorted, disjoint `ranges` that ends after `addr`. */
function firstEndingAfter(ranges: { end: bigint }[], addr: bigint): number {
  let lo = 0, hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid].end <= addr) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/** Reads a file mapping's bytes from its file, if the file is still the one dumped. */
function readFileHole(
  hole: Extract<Hole, { type: "file" }>,
  area: MappedArea,
  at: bigint,
  out: Uint8Array,
): { read: number; stop?: Unreadable } {
  const changed = fileChanged(hole.path, hole.size, hole.mtimeMs);
  if (changed) return { read: 0, stop: new Unreadable(at, changed) };
  let file: Deno.FsFile;
  try {
    file = Deno.openSync(hole.path, { read: true });
  } catch (err) {
    return { read: 0, stop: new Unreadable(at, `${hole.path}: ${(err as Error).message}`) };
  }
  try {
    const pos = Number(hole.offset + (at - area.start));
    const avail = Math.max(0, Math.min(out.length, hole.size - pos));
    file.seekSync(pos, Deno.SeekMode.Start);
    let done = 0;
    while (done < avail) {
      const n = file.readSync(out.subarray(done, avail));
      if (n === null) break;
      done += n;
    }
    // Past the end of the file, the last page reads as zeroes, further pages fault.
    const pageEnd = Math.min(out.length, Number(pageUpFrom(BigInt(hole.size)) - BigInt(pos)));
    if (pageEnd > done) out.fill(0, done, pageEnd);
    done = Math.max(done, pageEnd);
    if (done < out.length) {
      return {
        read: done,
        stop: new Unreadable(at + BigInt(done), `past the end of ${hole.path}`),
      };
    }
    return { read: done };
  } finally {
    file.close();
  }
}

function pageUpFrom(n: bigint): bigint {
  return (n + PAGE - 1n) / PAGE * PAGE;
}

/** The areas of a process entry: its mappings and special mappings with their pieces. */
function buildAreas(e: ProcessEntry): MappedArea[] {
  const objects = new Map(e.objects.map((o) => [o.id, o]));
  const areas: MappedArea[] = e.mappings.map((m) => {
    const src = m.source;
    if (src.type === "shmem" || src.type === "stored-file") {
      const o = objects.get(src.object);
      return {
        start: m.start,
        end: m.end,
        entry: m,
        pieces: objectPieces(e, o?.pages ?? [], m),
        hole: { type: "zero" },
      };
    }
    return {
      start: m.start,
      end: m.end,
      entry: m,
      pieces: runPieces(e, m.pages, (r) => r.start),
      hole: holeOf(m),
    };
  });
  const special: [string, { start: bigint; end: bigint } | undefined][] = [
    ["[vdso]", e.special.vdso],
    ["[vvar]", e.special.vvar],
    ["[vvar_vclock]", e.special.vvarVclock],
  ];
  for (const [name, s] of special) {
    if (!s) continue;
    areas.push({
      start: s.start,
      end: s.end,
      pieces: [],
      hole: { type: "none", why: `${name} is the kernel's: an image holds none of its bytes` },
    });
  }
  return areas.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

function holeOf(m: MappingEntry): Hole {
  const src = m.source;
  if (m.sharedWithParent?.length) return { type: "parent" };
  if (src.type === "file") {
    return { type: "file", path: src.path, size: src.size, mtimeMs: src.mtimeMs, offset: m.offset };
  }
  return { type: "zero" };
}

/** Pieces of runs at virtual addresses (`at` gives a run's first address). */
function runPieces(e: ProcessEntry, runs: PageRun[], at: (r: PageRun) => bigint): StoredPiece[] {
  const out: StoredPiece[] = [];
  for (const r of runs) {
    const start = at(r);
    out.push({
      start,
      end: start + BigInt(r.length),
      extent: e.extents[r.extent],
      offset: r.offset,
      ...(r.checksums ? { checksums: { table: r.checksums, from: start } } : {}),
    });
  }
  return out.sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
}

/** The pieces of an object's runs that a mapping of it shows, clipped to the mapping. */
function objectPieces(e: ProcessEntry, runs: PageRun[], m: MappingEntry): StoredPiece[] {
  const out: StoredPiece[] = [];
  for (const p of runPieces(e, runs, (r) => m.start + r.start - m.offset)) {
    const start = p.start > m.start ? p.start : m.start;
    const end = p.end < m.end ? p.end : m.end;
    if (end <= start) continue;
    out.push({ ...p, start, end, offset: p.offset + Number(start - p.start) });
  }
  return out;
}

/** The CRC-32 the image recorded for the page at `addr` of `p`, if it has a table. */
export function recordedPageChecksum(p: StoredPiece, addr: bigint): number | undefined {
  if (!p.checksums) return undefined;
  const i = Number((addr - p.checksums.from) / PAGE) * 4;
  const t = p.checksums.table;
  if (i < 0 || i + 4 > t.length) return undefined;
  return new DataView(t.buffer, t.byteOffset + i, 4).getUint32(0, true);
}
