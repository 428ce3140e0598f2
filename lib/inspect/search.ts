/**
 * Finds bytes in the memory of a process, live or in an image (`ProcessView`): a byte string or
 * a regular expression over the bytes, streamed a chunk at a time through the pages that hold
 * data (present or swapped; of an image, the pages it holds), so a large image or process is
 * never read whole.
 */
import type { Mapping } from "./mappings.ts";
import type { AddressRange } from "./pages.ts";
import type { ProcessView } from "./view.ts";

/** What `searchMemory` looks for: exact bytes, or a regular expression over them (as Latin-1). */
export type SearchPattern = Uint8Array | RegExp;

/** Options of `searchMemory`. */
export interface SearchOptions {
  /** Bytes of context kept on each side of a match (default 16). */
  context?: number;
}

/** One match of `searchMemory`. */
export interface MemoryMatch {
  /** The process. */
  pid: number;
  /** Address of the first byte of the match. */
  address: bigint;
  /** The bytes matched. */
  bytes: Uint8Array;
  /** The mapping the match starts in. */
  mapping: Mapping;
  /** The bytes around it: up to `context` before, the match, up to `context` after. */
  context: Uint8Array;
  /** Where the match starts in `context`. */
  contextOffset: number;
}

/** Bytes read at a time. */
const CHUNK = 1 << 20;
/**
 * How far a regular expression's match may run past a chunk and still be found: a longer match
 * across the end of a chunk is missed (a byte pattern is always found).
 */
export const REGEX_REACH = 4096;

/** Mappings whose bytes are the kernel's, not the process's. */
const KERNEL_KINDS = new Set(["vvar", "vvar_vclock", "vsyscall"]);

/**
 * Every match of `pattern` in the memory of `proc`, in address order, as it is found. Searched:
 * the readable mappings' pages that are present or swapped (of an image: the pages it holds; a
 * file mapping's pages it does not hold are the file's), not the kernel's vvar and vsyscall.
 */
export async function* searchMemory(
  proc: ProcessView,
  pattern: SearchPattern,
  opts: SearchOptions = {},
): AsyncIterable<MemoryMatch> {
  const context = opts.context ?? 16;
  if (pattern instanceof Uint8Array && pattern.length === 0) {
    throw new RangeError("nothing to search for: the pattern is empty");
  }
  const reach = pattern instanceof Uint8Array ? pattern.length - 1 : REGEX_REACH;
  const mappings: Mapping[] = [];
  for await (const m of proc.mappings()) {
    if (m.prot.read && !KERNEL_KINDS.has(m.kind)) mappings.push(m);
  }
  const buf = new Uint8Array(CHUNK + reach + context);
  let i = 0; // ranges come in address order, as the mappings do
  for await (const r of dataRanges(proc)) {
    while (i < mappings.length && mappings[i].end <= r.start) i++;
    for (let j = i; j < mappings.length && mappings[j].start < r.end; j++) {
      const m = mappings[j];
      const start = r.start > m.start ? r.start : m.start;
      const end = r.end < m.end ? r.end : m.end;
      yield* searchRange(proc, m, start, end, pattern, buf, context);
    }
  }
}

/** The pages present or swapped, runs that touch joined (their other states may differ). */
async function* dataRanges(proc: ProcessView): AsyncIterable<AddressRange> {
  let run: AddressRange | undefined;
  for await (const r of proc.pages()) {
    if (!r.present && !r.swapped) continue;
    if (run && run.end === r.start) {
      run.end = r.end;
      continue;
    }
    if (run) yield run;
    run = { start: r.start, end: r.end };
  }
  if (run) yield run;
}

/** Searches [start, end) of mapping `m` a chunk at a time. */
async function* searchRange(
  proc: ProcessView,
  m: Mapping,
  start: bigint,
  end: bigint,
  pattern: SearchPattern,
  buf: Uint8Array,
  context: number,
): AsyncIterable<MemoryMatch> {
  for (let at = start; at < end; at += BigInt(CHUNK)) {
    // Read `context` bytes before the chunk and to the end of `buf` after it (`reach + context`
    // bytes: a match that starts in the chunk is read whole), where they exist.
    const before = Number(at - start) < context ? Number(at - start) : context;
    const from = at - BigInt(before);
    const want = Math.min(buf.length, Number(end - from));
    const n = await proc.readInto(from, buf.subarray(0, want));
    const chunkEnd = Math.min(n, before + CHUNK);
    for (const [k, len] of matchesIn(buf.subarray(0, n), pattern, before, chunkEnd)) {
      const lo = Math.max(0, k - context), hi = Math.min(n, k + len + context);
      yield {
        pid: proc.pid,
        address: from + BigInt(k),
        bytes: buf.slice(k, k + len),
        mapping: m,
        context: buf.slice(lo, hi),
        contextOffset: k - lo,
      };
    }
    if (n < want) return; // the rest cannot be read
  }
}

/** [index, length] of each match in `hay` starting in [from, to). */
function* matchesIn(
  hay: Uint8Array,
  pattern: SearchPattern,
  from: number,
  to: number,
): Iterable<[number, number]> {
  if (pattern instanceof Uint8Array) {
    const first = pattern[0], len = pattern.length;
    for (let k = hay.indexOf(first, from); k >= 0 && k < to; k = hay.indexOf(first, k + 1)) {
      if (k + len > hay.length) return;
      let j = 1;
      while (j < len && hay[k + j] === pattern[j]) j++;
      if (j === len) yield [k, len];
    }
    return;
  }
  const re = new RegExp(
    pattern.source,
    pattern.flags.includes("g") ? pattern.flags : `${pattern.flags}g`,
  );
  re.lastIndex = from;
  const text = latin1(hay);
  for (let m = re.exec(text); m && m.index < to; m = re.exec(text)) {
    if (m[0].length === 0) {
      re.lastIndex++; // an empty match: step on
      continue;
    }
    yield [m.index, m[0].length];
  }
}

/** The bytes as a string of one character each (Latin-1), for regular expressions. */
function latin1(bytes: Uint8Array): string {
  let s = "";
  for (let i = 0; i < bytes.length; i += 8192) {
    s += String.fromCharCode(...bytes.subarray(i, i + 8192));
  }
  return s;
}
