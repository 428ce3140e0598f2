/** `tardigrade search TARGET TEXT`: find bytes in the memory of a process or of an image. */
import { type MemoryMatch, openTarget, REGEX_REACH, searchMemory } from "../mod.ts";
import { count, hex, parseTarget, parseVerb, toJson, UsageError, type Verb } from "./common.ts";

/** The verb. */
export const search: Verb = {
  name: "search",
  summary: "Find a string, bytes or a regular expression in the memory of a process or an image.",
  usage: "tardigrade search TARGET [TEXT] [--hex BYTES] [--regex] [--pid PID] [--json]",
  help: `TARGET is a pid, or an image directory (every process of it, or the one --pid names).
Searched: the readable mappings' pages present or swapped (of an image, the pages it holds),
read a megabyte at a time (a live process runs on meanwhile: it is not stopped). Each match
prints as it is found: pid, address, the mapping and the bytes around it (non-printable as '.').

options:
  --hex BYTES  search these bytes instead of TEXT ("de ad be ef" or "deadbeef")
  --regex      TEXT is a regular expression over the bytes (as Latin-1; a match is found when
               it runs at most ${REGEX_REACH} bytes past a megabyte boundary)
  --pid PID    of an image, only the process PID
  --json       a JSON array, streamed: {pid, address (hex), length, mapping: {start, end, perms,
               kind, path}, match and context (hex strings of bytes), contextOffset}`,
  async run(args) {
    const p = parseVerb(this, args, {
      json: { type: "boolean" },
      hex: { type: "string" },
      regex: { type: "boolean" },
      pid: { type: "string" },
    }, { min: 1, max: 2 });
    if (!p) return 0;
    const [text] = p.positionals.slice(1);
    const hexBytes = p.values.hex as string | undefined;
    if ((text === undefined) === (hexBytes === undefined)) {
      throw new UsageError("give TEXT or --hex BYTES, one of them", this.usage);
    }
    if (hexBytes !== undefined && p.values.regex) {
      throw new UsageError("--regex is for TEXT, not --hex", this.usage);
    }
    const pattern = hexBytes !== undefined
      ? parseHex(hexBytes, this)
      : p.values.regex
      ? parseRegex(text!, this)
      : new TextEncoder().encode(text!);
    const { target, pid } = parseTarget(p.positionals[0], this, p.values.pid as string | undefined);
    using opened = await openTarget(target, { pid });
    const json = p.values.json === true;
    let matches = 0;
    // JSON: each object printed once the next one (or the end) says whether a comma follows.
    let held: string | undefined;
    if (json) console.log("[");
    else console.log(row(COLUMNS.map((c) => c.header)));
    for (const proc of opened.processes) {
      for await (const m of searchMemory(proc, pattern)) {
        if (json) {
          if (held) console.log(`${held},`);
          held = indent(toJson(jsonOf(m)));
        } else console.log(row(cells(m)));
        matches++;
      }
    }
    if (json) console.log(held ? `${held}\n]` : "]");
    else {
      const n = opened.processes.length;
      console.log(`${count(matches, "match", "matches")} in ${count(n, "process", "processes")}`);
    }
    return 0;
  },
};

/** Column headers and widths: rows print as they are found, so the widths are fixed. */
const COLUMNS = [
  { header: "PID", width: 7, right: true },
  { header: "ADDRESS", width: 14 },
  { header: "PERMS", width: 5 },
  { header: "KIND", width: 16 },
  { header: "CONTEXT", width: 40 }, // 16 bytes each side of an 8-byte match
  { header: "PATH", width: 0 },
];

function row(cells: string[]): string {
  return cells.map((c, i) => {
    const { width, right } = COLUMNS[i];
    return i === cells.length - 1 ? c : right ? c.padStart(width) : c.padEnd(width);
  }).join("  ").trimEnd();
}

function cells(m: MemoryMatch): string[] {
  return [
    String(m.pid),
    hex(m.address),
    m.mapping.perms,
    m.mapping.kind,
    printable(m.context),
    m.mapping.path ?? "",
  ];
}

function jsonOf(m: MemoryMatch) {
  return {
    pid: m.pid,
    address: m.address,
    length: m.bytes.length,
    mapping: {
      start: m.mapping.start,
      end: m.mapping.end,
      perms: m.mapping.perms,
      kind: m.mapping.kind,
      path: m.mapping.path,
    },
    match: hexString(m.bytes),
    context: hexString(m.context),
    contextOffset: m.contextOffset,
  };
}

function indent(text: string): string {
  return text.split("\n").map((l) => `  ${l}`).join("\n");
}

/** Printable ASCII as is, every other byte as '.'. */
function printable(bytes: Uint8Array): string {
  return String.fromCharCode(...bytes.map((b) => (b >= 0x20 && b < 0x7f ? b : 0x2e)));
}

function hexString(bytes: Uint8Array): string {
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

function parseHex(text: string, verb: Verb): Uint8Array {
  const digits = text.replace(/^0x/i, "").replace(/[\s:]/g, "");
  if (!/^([0-9a-f]{2})+$/i.test(digits)) {
    throw new UsageError(`not hex bytes: '${text}'`, verb.usage);
  }
  return Uint8Array.from(digits.match(/../g)!, (b) => parseInt(b, 16));
}

function parseRegex(text: string, verb: Verb): RegExp {
  try {
    return new RegExp(text);
  } catch (err) {
    throw new UsageError(`not a regular expression: ${(err as Error).message}`, verb.usage);
  }
}
