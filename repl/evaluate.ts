/**
 * The REPL's evaluator: runs one input of TypeScript with top-level `await`, keeping the names it
 * declares for later inputs. Deno itself transpiles: the input becomes a `data:` TypeScript
 * module that is imported (modules allow top-level `await`). Names of the session live in a
 * scope object; each module unpacks them into `let` bindings at the top and writes them back at
 * the end, so `const x = 1` on one line is `x` on the next.
 */

import { LINES_BEFORE_INPUT, withoutModuleUrls } from "./errors.ts";

/** The session's names, shared by every evaluated module. */
export type Scope = Record<string, unknown>;

/** An input that is not complete yet (an open bracket, an unfinished string): read more. */
export class Incomplete extends Error {}

const SCOPE_KEY = Symbol.for("tardigrade.repl.scope");
const IDENT = /^[A-Za-z_$][\w$]*$/;
const RESERVED = new Set(
  ("break case catch class const continue debugger default delete do else enum export extends " +
    "false finally for function if import in instanceof new null return super switch this throw " +
    "true try typeof var void while with yield let static implements interface package private " +
    "protected public await arguments eval undefined NaN Infinity").split(" "),
);
const STATEMENT_START =
  /^(const|let|var|function|async\s+function|class|if|for|while|do|try|switch|return|throw|import|export|type|interface|enum|declare|namespace|\{|\}|;)\b/;

let counter = 0;

/**
 * Walks `code` at bracket depth 0, skipping strings, templates and comments; calls `at` with
 * the index of each top-level statement start (after start, `;` or a newline). Returns whether
 * a bracket, string or comment is still open at the end.
 */
function topLevel(code: string, at: (i: number) => void): boolean {
  let depth = 0;
  let open = false;
  let startOfStatement = true;
  for (let i = 0; i < code.length; i++) {
    const ch = code[i];
    if (startOfStatement && depth === 0 && !/\s/.test(ch)) {
      at(i);
      startOfStatement = false;
    }
    if (ch === "/" && code[i + 1] === "/") {
      const nl = code.indexOf("\n", i);
      i = nl < 0 ? code.length : nl - 1;
    } else if (ch === "/" && code[i + 1] === "*") {
      const end = code.indexOf("*/", i + 2);
      open ||= end < 0;
      i = end < 0 ? code.length : end + 1;
    } else if (ch === '"' || ch === "'" || ch === "`") {
      for (i++; i < code.length && code[i] !== ch; i++) if (code[i] === "\\") i++;
      open ||= i >= code.length;
    } else if ("([{".includes(ch)) depth++;
    else if (")]}".includes(ch)) depth = Math.max(0, depth - 1);
    else if (depth === 0 && (ch === ";" || ch === "\n")) startOfStatement = true;
  }
  return open || depth > 0;
}

/** Names bound by a destructuring pattern or a plain identifier (best effort). */
function patternNames(pattern: string): string[] {
  const inner = pattern.trim().replace(/^[{[]|[}\]]$/g, "");
  if (inner === pattern.trim()) return IDENT.test(inner) ? [inner] : [];
  const out: string[] = [];
  for (let part of inner.split(",")) {
    part = part.replace(/=.*$/s, "").replace(/^\s*\.\.\./, "").trim();
    if (part.includes(":")) part = part.slice(part.indexOf(":") + 1).trim();
    if (IDENT.test(part)) out.push(part);
  }
  return out;
}

/** The value names `code` declares at its top level (`const`, `let`, `var`, functions, classes). */
export function declaredNames(code: string): string[] {
  const names = new Set<string>();
  topLevel(code, (i) => {
    const rest = code.slice(i);
    const fn = rest.match(/^(?:export\s+)?(?:async\s+)?(?:function\*?|class)\s+([A-Za-z_$][\w$]*)/);
    if (fn) {
      names.add(fn[1]);
      return;
    }
    const decl = rest.match(/^(?:export\s+)?(?:const|let|var)\s+/);
    if (!decl) return;
    // Declarators up to the end of the statement, split at top-level commas.
    const body = rest.slice(decl[0].length);
    let depth = 0;
    let current = "";
    const declarators: string[] = [];
    for (let j = 0; j < body.length; j++) {
      const ch = body[j];
      if ("([{".includes(ch)) depth++;
      if (")]}".includes(ch)) depth--;
      if (depth < 0 || (depth === 0 && (ch === ";" || ch === "\n") && !/[=,]\s*$/.test(current))) {
        break;
      }
      if (depth === 0 && ch === ",") {
        declarators.push(current);
        current = "";
      } else current += ch;
    }
    declarators.push(current);
    for (const d of declarators) {
      // The binding is what comes before the top-level `=` or type annotation.
      const m = d.match(/^\s*([{[][^=]*[}\]]|[A-Za-z_$][\w$]*)/);
      if (m) { for (const n of patternNames(m[1])) names.add(n); }
    }
  });
  return [...names];
}

/** Splits `code` into statements before the last top-level one and that last one. */
function splitLast(code: string): [string, string] {
  let last = 0;
  topLevel(code, (i) => (last = i));
  return [code.slice(0, last), code.slice(last)];
}

function moduleSource(scope: Scope, declared: string[], head: string, tail: string | null) {
  const own = new Set(declared);
  const names = Object.keys(scope).filter((n) => IDENT.test(n) && !RESERVED.has(n) && !own.has(n));
  const all = [...names, ...declared];
  // The input starts on line LINES_BEFORE_INPUT + 1, so errors can name the input's own lines.
  const value = tail === null
    ? "\n;const __value = undefined;" // on a line of its own: the input may end in a comment
    : `;const __value = (${tail}\n);`;
  return [
    `// repl input ${++counter}`,
    `const __scope = (globalThis as any)[Symbol.for("tardigrade.repl.scope")];`,
    names.length ? `let { ${names.join(", ")} } = __scope;` : "",
    head + value,
    `Object.assign(__scope, { ${all.join(", ")} });`,
    `export default __value;`,
  ].join("\n");
}

function isParseError(err: unknown): boolean {
  return err instanceof Error && /^(SyntaxError|The module's source code could not be parsed)/
    .test(err.message.replace(/^TypeError: /, ""));
}

function dataUrl(source: string): string {
  const bytes = new TextEncoder().encode(source);
  let bin = "";
  for (const b of bytes) bin += String.fromCharCode(b);
  return `data:application/typescript;base64,${btoa(bin)}`;
}

/** Whether `code` ends inside a bracket, string or comment: the REPL should read more lines. */
export function isIncomplete(code: string): boolean {
  return topLevel(code, () => {});
}

/** Where a parse error is: the module's line and column, from Deno's `at URL:LINE:COL`. */
function parseErrorAt(err: unknown): { line: number; column: number } | null {
  const m = (err as Error).message.match(/:(\d+):(\d+)\s*$/);
  return m ? { line: Number(m[1]), column: Number(m[2]) } : null;
}

/**
 * Whether a parse error lies after the input's last line, in the evaluator's own code: the
 * input stopped too early (`const a =`, `class A`) and goes on on the next line.
 */
function endsEarly(err: unknown, code: string): boolean {
  const at = parseErrorAt(err);
  return at !== null && at.line > LINES_BEFORE_INPUT + code.trimEnd().split("\n").length;
}

/** A parse error as a SyntaxError naming the input's line and column, without the module's code. */
function syntaxError(err: unknown): SyntaxError {
  const first = (err as Error).message.replace(/^(TypeError: )?SyntaxError: /, "").split("\n")[0];
  const at = parseErrorAt(err);
  const where = at ? ` (line ${at.line - LINES_BEFORE_INPUT}, column ${at.column})` : "";
  return new SyntaxError(`${first}${where}`);
}

/** Shortens the evaluator's module URLs in an error's message and stack. */
function tidy(err: unknown): unknown {
  if (err instanceof Error) {
    err.message = withoutModuleUrls(err.message);
    if (err.stack) err.stack = withoutModuleUrls(err.stack);
  }
  return err;
}

/**
 * Evaluates one input in `scope` and resolves to its value: the value of the input when it is
 * an expression, or of its last statement when that is an expression; else undefined. Throws
 * `Incomplete` when the input needs more lines.
 */
export async function evaluate(code: string, scope: Scope): Promise<unknown> {
  if (code.trim() === "") return undefined;
  (globalThis as Record<symbol, unknown>)[SCOPE_KEY] = scope;
  const declared = declaredNames(code);
  const attempts: [string, string | null][] = [];
  if (!STATEMENT_START.test(code.trim())) attempts.push(["", code]);
  const [head, tail] = splitLast(code);
  if (head.trim() && tail.trim() && !STATEMENT_START.test(tail.trim())) {
    attempts.push([head, tail.replace(/;\s*$/, "")]);
  }
  attempts.push([code, null]);
  let lastErr: unknown;
  for (const [h, t] of attempts) {
    try {
      const mod = await import(dataUrl(moduleSource(scope, declared, h, t)));
      return mod.default;
    } catch (err) {
      if (!isParseError(err)) throw tidy(err);
      lastErr = err;
    }
  }
  if (isIncomplete(code) || endsEarly(lastErr, code)) {
    throw new Incomplete("input continues on the next line");
  }
  throw syntaxError(lastErr);
}
