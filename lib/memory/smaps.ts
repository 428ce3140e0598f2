/**
 * A process's mappings with their VmFlags and page sizes, from one read of /proc/PID/smaps: the
 * restore's comparison (verify.ts) reads it once the address space is final. The kernel spends
 * some 3 µs a mapping making the text (tens of MB for 50,000 mappings): it is read and decoded on
 * another thread while the comparison does other work. (Read in pieces to parse each while the
 * kernel makes the next, it was slower: the kernel gives a page of text a read, and each
 * asynchronous read costs tens of µs.)
 */
import { type Mapping, parseMapsText } from "../inspect/mappings.ts";
import { procError } from "../inspect/procfs.ts";
import { Unsupported } from "../errors.ts";

/** Every mapping of a process as smaps shows it, in address order. */
export interface SmapsListing {
  /** Each mapping (from its entry's first line, which is its /proc/PID/maps line). */
  mappings: Mapping[];
  /** The VmFlags mnemonics of each (entries with the same flags share one read-only array). */
  flags: string[][];
  /** KernelPageSize of each in bytes (4096 but for hugetlb). */
  pageSizes: number[];
}

/** A smaps entry's first line starts as a maps line: `start-end `. */
const SMAPS_HEADER = /[0-9a-f]{1,16}-[0-9a-f]{1,16} /y;
const FLAGS_LINE = "\nVmFlags:";
const PAGE_SIZE_LINE = "\nKernelPageSize:";

/**
 * The listing of smaps `text`: each entry's first line is parsed as /proc/PID/maps
 * (`parseMapsText`); of its other lines only `KernelPageSize:` and `VmFlags:` (its last) are
 * looked at, found by string search.
 */
export function parseSmapsText(pid: number, text: string): SmapsListing {
  const headers: string[] = [];
  const flags: string[][] = [];
  const pageSizes: number[] = [];
  const flagLists = new Map<string, string[]>();
  for (let at = 0; at < text.length;) {
    const eol = text.indexOf("\n", at);
    const flagsAt = text.indexOf(FLAGS_LINE, at);
    SMAPS_HEADER.lastIndex = at;
    if (eol < 0 || flagsAt < 0 || !SMAPS_HEADER.test(text)) {
      // Every entry has both since Linux 3.8: a mapping must not go by without its flags.
      const line = text.slice(at, at + 80).split("\n")[0];
      throw new Unsupported(`smaps: an entry of a format not known to the tool at "${line}"`);
    }
    let end = text.indexOf("\n", flagsAt + 1);
    if (end < 0) end = text.length;
    headers.push(text.slice(at, eol));
    const raw = text.slice(flagsAt + FLAGS_LINE.length, end);
    let list = flagLists.get(raw);
    if (!list) flagLists.set(raw, list = raw.trim().split(/\s+/).filter((f) => f !== ""));
    flags.push(list);
    const sizeAt = text.indexOf(PAGE_SIZE_LINE, at);
    pageSizes.push(
      sizeAt < 0 || sizeAt > flagsAt
        ? 4096
        : parseInt(text.slice(sizeAt + PAGE_SIZE_LINE.length, flagsAt), 10) * 1024,
    );
    at = end + 1;
  }
  return { mappings: parseMapsText(pid, headers.join("\n")), flags, pageSizes };
}

/**
 * /proc/PID/smaps of `pid`, read and decoded on another thread, then parsed (`parseSmapsText`).
 */
export async function readSmaps(pid: number): Promise<SmapsListing> {
  let text: string;
  try {
    text = await Deno.readTextFile(`/proc/${pid}/smaps`);
  } catch (err) {
    throw procError(err, pid, "smaps");
  }
  return parseSmapsText(pid, text);
}
