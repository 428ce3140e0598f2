/**
 * The pages of a process as a comparison sees them: which pages hold data, what the image knows
 * of each page without reading it (where its bytes are, their CRC-32), and its bytes. A live
 * process knows only the first and the last; an image all three, so a comparison of two images
 * reads only the pages it cannot tell apart otherwise.
 */
import { realPath } from "../image/reader.ts";
import { ImageProcess, memoryOf } from "./image_process.ts";
import { type ImageMemory, recordedPageChecksum } from "./image_memory.ts";
import { type AddressRange, appendRange } from "./pages.ts";
import type { ProcessView } from "./view.ts";

/** What is known of one page without reading it. */
export interface PageFacts {
  /** Where its bytes are (the page file and offset, through the parent chain): equal, same bytes. */
  location?: string;
  /** The CRC-32 the image recorded for it. */
  checksum?: number;
}

/** The pages of one process for a comparison. */
export interface PageSource {
  /** The pages in [start, end) that hold data (present or swapped; of an image, those it holds). */
  dataRanges(start: bigint, end: bigint): AddressRange[];
  /** What is known of the page at `addr` without reading it. */
  facts(addr: bigint): PageFacts;
  /** Reads from `addr` into `buf`; returns the bytes read (short where it cannot). */
  readInto(addr: bigint, buf: Uint8Array): Promise<number>;
}

/** The page source of a process: its image's index, or a live process's page scan. */
export async function pageSource(p: ProcessView): Promise<PageSource> {
  if (p instanceof ImageProcess) return imageSource(memoryOf(p), p);
  const ranges: AddressRange[] = [];
  for await (const r of p.pages()) {
    if ((r.present || r.swapped) && !r.guard) appendRange(ranges, r.start, r.end);
  }
  return {
    dataRanges: (start, end) => clip(ranges, start, end),
    facts: () => ({}),
    readInto: (addr, buf) => p.readInto(addr, buf),
  };
}

function imageSource(memory: ImageMemory, p: ImageProcess): PageSource {
  const homes = new Map<number, string>();
  // The directory of the image of the chain `up` links above this one.
  const home = (up: number): string => {
    let dir = homes.get(up);
    if (dir === undefined) {
      let r = p.image.reader;
      for (let i = 0; i < up && r.parent; i++) r = r.parent;
      dir = realPath(r.dir);
      homes.set(up, dir);
    }
    return dir;
  };
  return {
    dataRanges(start, end) {
      const out: AddressRange[] = [];
      for (const piece of memory.piecesIn(start, end)) {
        appendRange(
          out,
          piece.start > start ? piece.start : start,
          piece.end < end ? piece.end : end,
        );
      }
      return out;
    },
    facts(addr) {
      const piece = memory.pieceAt(addr);
      if (!piece) return {};
      const at = piece.offset + Number(addr - piece.start);
      return {
        location: `${home(piece.extent.image ?? 0)}/${piece.extent.file}@${
          piece.extent.offset + at
        }`,
        checksum: recordedPageChecksum(piece, addr),
      };
    },
    readInto: (addr, buf) => p.readInto(addr, buf),
  };
}

/** The parts of sorted `ranges` inside [start, end). */
function clip(ranges: AddressRange[], start: bigint, end: bigint): AddressRange[] {
  const out: AddressRange[] = [];
  let lo = 0, hi = ranges.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (ranges[mid].end <= start) lo = mid + 1;
    else hi = mid;
  }
  for (let i = lo; i < ranges.length && ranges[i].start < end; i++) {
    const s = ranges[i].start > start ? ranges[i].start : start;
    const e = ranges[i].end < end ? ranges[i].end : end;
    if (e > s) out.push({ start: s, end: e });
  }
  return out;
}
