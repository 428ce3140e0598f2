/** What every verb shares: the verb contract, argument parsing, errors, JSON and tables. */
import { parseArgs, type ParseArgsConfig } from "node:util";
import { isPidTarget } from "../mod.ts";

/** One CLI verb: its names, help text and implementation. */
export interface Verb {
  /** The word after `tardigrade`. */
  name: string;
  /** One line for the verb list of `tardigrade --help`. */
  summary: string;
  /** The usage line, without the leading `usage: `. */
  usage: string;
  /** The rest of the `--help` text: options and what the output looks like. */
  help: string;
  /** Runs the verb with the arguments after its name; resolves to the exit code. */
  run(args: string[]): Promise<number>;
}

/** Exit codes of the tool. */
export const EXIT = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

/** Bad arguments: reported with the verb's usage line and exit code 2. */
export class UsageError extends Error {
  constructor(message: string, readonly usage: string) {
    super(message);
    this.name = "UsageError";
  }
}

/** Options every verb takes. */
const COMMON = {
  help: { type: "boolean", short: "h" },
  verbose: { type: "boolean", short: "v" },
} as const;

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Parsed arguments of a verb: its option values and positionals. */
export interface Parsed {
  values: Record<string, string | boolean | string[] | undefined>;
  positionals: string[];
}

/**
 * Parses `args` strictly with `node:util` parseArgs; unknown options, missing values and a
 * wrong number of positionals become a `UsageError`. Returns null after printing the help when
 * `--help` was given.
 */
export function parseVerb(
  verb: Verb,
  args: string[],
  options: Options,
  positionals: { min: number; max: number },
): Parsed | null {
  let parsed;
  try {
    parsed = parseArgs({
      args,
      options: { ...COMMON, ...options },
      allowPositionals: true,
      strict: true,
    });
  } catch (err) {
    // parseArgs messages are long and name the option twice; keep the first sentence.
    const first = (err as Error).message.split(/\.\s/)[0].replace(/\.$/, "");
    throw new UsageError(first[0].toLowerCase() + first.slice(1), verb.usage);
  }
  const values = parsed.values as Parsed["values"];
  if (values.help) {
    console.log(verbHelp(verb));
    return null;
  }
  const n = parsed.positionals.length;
  if (n < positionals.min) {
    // Name the first missing one from the usage line: `tardigrade dump PID DIR [...]`.
    const names = verb.usage.split(" ").slice(2).filter((w) => /^[A-Z][A-Z.]*$/.test(w));
    throw new UsageError(`missing argument${names[n] ? ` ${names[n]}` : ""}`, verb.usage);
  }
  if (n > positionals.max) {
    throw new UsageError(
      `unexpected argument '${parsed.positionals[positionals.max]}'`,
      verb.usage,
    );
  }
  return { values, positionals: parsed.positionals };
}

/** The full help text of a verb (no trailing newline: it is printed with console.log). */
export function verbHelp(verb: Verb): string {
  return `usage: ${verb.usage}\n\n${verb.summary}${verb.help ? `\n\n${verb.help}` : ""}`;
}

/** `1 thread`, `2 threads`. */
export function count(n: number, noun: string, plural = `${noun}s`): string {
  return `${n} ${n === 1 ? noun : plural}`;
}

/** Parses a pid argument, or throws a `UsageError`. */
export function parsePid(text: string, verb: Verb): number {
  if (!/^[1-9][0-9]*$/.test(text)) throw new UsageError(`not a pid: '${text}'`, verb.usage);
  return Number(text);
}

/** A positive whole number of milliseconds given as `flag`, or undefined when not given. */
export function parseMs(text: unknown, flag: string, verb: Verb): number | undefined {
  if (text === undefined) return undefined;
  if (typeof text !== "string" || !/^[1-9][0-9]*$/.test(text)) {
    throw new UsageError(`${flag} wants a whole number of milliseconds, not '${text}'`, verb.usage);
  }
  return Number(text);
}

/**
 * Parses a TARGET argument, a pid or an image directory, or throws a `UsageError`. `pid`, the
 * `--pid` option's text, picks one process of an image.
 */
export function parseTarget(
  text: string,
  verb: Verb,
  pid?: string,
): { target: number | string; pid?: number } {
  const chosen = pid === undefined ? undefined : parsePid(pid, verb);
  if (isPidTarget(text)) {
    if (chosen !== undefined) throw new UsageError("--pid is for an image directory", verb.usage);
    return { target: parsePid(text, verb) };
  }
  try {
    Deno.statSync(text);
  } catch {
    throw new UsageError(`not a pid or an image directory: '${text}'`, verb.usage);
  }
  return { target: text, pid: chosen };
}

/** `0x` + lowercase hex of a bigint (the JSON form of every bigint). */
export function hex(n: bigint): string {
  return `0x${n.toString(16)}`;
}

/** JSON text with bigints as `"0x..."` strings and byte arrays as their length, 2-space indent. */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (key, v) => {
    if (typeof v === "bigint") return hex(v);
    if (v instanceof Uint8Array) return { bytes: v.length };
    // Times (frozenMs …) to a tenth of a millisecond: more digits only say the clock's noise.
    if (typeof v === "number" && key.endsWith("Ms")) return Math.round(v * 10) / 10;
    return v;
  }, 2);
}

/** Prints `value` as JSON on stdout. */
export function printJson(value: unknown): void {
  console.log(toJson(value));
}

/** A column of `table`: its header and whether it is right-aligned (numbers). */
export interface Column {
  header: string;
  right?: boolean;
}

/**
 * Formats rows as an aligned text table under a header line; the last column is not padded,
 * so long paths do not push trailing spaces.
 */
export function table(columns: Column[], rows: string[][]): string {
  const widths = columns.map((c, i) =>
    Math.max(c.header.length, ...rows.map((r) => (r[i] ?? "").length))
  );
  const line = (cells: string[]) =>
    cells.map((cell, i) => {
      if (i === cells.length - 1 && !columns[i].right) return cell;
      return columns[i].right ? cell.padStart(widths[i]) : cell.padEnd(widths[i]);
    }).join("  ");
  return [line(columns.map((c) => c.header)), ...rows.map(line)].join("\n");
}

/** Bytes as a short human figure: `512 B`, `4.0 KiB`, `1.5 MiB`, `2.0 GiB`. */
export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let v = n / 1024;
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  return `${v.toFixed(1)} ${units[u]}`;
}

/** An error as the one line the tool prints: `tardigrade: <what and why>`. */
export function errorLine(err: unknown): string {
  const msg = err instanceof Error ? err.message : String(err);
  return `tardigrade: ${msg.replace(/\s*\n\s*/g, " ").trim()}`;
}
