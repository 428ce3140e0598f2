/**
 * Tab completion: the members of the object before the dot (`sdk.P`, `p.`, `Math.`), the
 * session's names for a bare identifier, dot-commands at the start of a line, and the members
 * of an awaited value (`(await p).`) when the promise has already settled or the function is a
 * helper whose result is known. Nothing is called to find out: completing never runs code.
 */

/** The session's names, as the evaluator keeps them. */
export type Names = Record<string, unknown>;

/** What a completer answers: the candidates and the text at the end of the line they replace. */
export type Completion = [string[], string];

/** What a function resolves to, for the functions whose result completion may describe. */
export type ResultShapes = Map<unknown, object>;

const IDENT = /^[A-Za-z_$][\w$]*$/;
/** `(await a.b).x` or `(await f(…)).x` at the end of a line. */
const AWAITED =
  /\(\s*await\s+((?:[A-Za-z_$][\w$]*\.)*[A-Za-z_$][\w$]*)\s*(\([^()]*\))?\s*\)\??\.([\w$]*)$/;

/** Names of `obj`'s own properties and its prototypes' (not those every object or function has). */
export function memberNames(obj: unknown): string[] {
  const out = new Set<string>();
  let o = obj;
  if (typeof o !== "object" && typeof o !== "function") o = Object(o);
  while (o && o !== Object.prototype && o !== Function.prototype) {
    for (const k of Object.getOwnPropertyNames(o)) out.add(k);
    o = Object.getPrototypeOf(o);
  }
  return [...out].filter((k) => IDENT.test(k) && k !== "constructor").sort();
}

/** The value at `a.b.c` in the session (or the global object), without calling anything. */
function lookUp(path: string[], names: Names): unknown {
  let obj: unknown = path[0] in names ? names[path[0]] : (globalThis as Names)[path[0]];
  for (const p of path.slice(1)) {
    if (obj === null || obj === undefined) return undefined;
    obj = (obj as Names)[p];
  }
  return obj;
}

/** The values of the promises `watchPromises` saw settle. */
const settledValues = new WeakMap<Promise<unknown>, unknown>();
const watched = new WeakSet<Promise<unknown>>();

/**
 * Notes the value of every promise among `names` once it settles, so that `(await p).` can
 * complete with its members: the line editor's completer must answer at once, it cannot await.
 */
export function watchPromises(names: Names): void {
  for (const value of Object.values(names)) {
    if (!(value instanceof Promise) || watched.has(value)) continue;
    watched.add(value);
    value.then((v) => settledValues.set(value, v), () => {});
  }
}

/** What `await value` gives, if known now: undefined for a promise pending or rejected. */
function awaited(value: unknown): unknown {
  return value instanceof Promise ? settledValues.get(value) : value;
}

function matching(candidates: Iterable<string>, partial: string): string[] {
  return [...new Set(candidates)].filter((n) => n.startsWith(partial)).sort();
}

/** The members of `obj` that start with `partial`, replacing `partial`. */
function members(obj: unknown, partial: string): Completion {
  if (obj === undefined || obj === null) return [[], partial];
  return [matching(memberNames(obj), partial), partial];
}

/**
 * Completes the end of `line`: `names` are the session's, `commands` the dot-commands, `shapes`
 * what known functions resolve to (for `(await f(…)).`).
 */
export function complete(
  line: string,
  names: Names,
  commands: string[] = [],
  shapes: ResultShapes = new Map(),
): Completion {
  const command = line.match(/^\s*\.([\w-]*)$/);
  if (command) return [matching(commands, command[1]).map((c) => `.${c}`), `.${command[1]}`];
  try {
    const inAwait = line.match(AWAITED);
    if (inAwait) {
      const [, path, call, partial] = inAwait;
      const target = lookUp(path.split("."), names);
      return members(call === undefined ? awaited(target) : shapes.get(target), partial);
    }
    // `a?.b` completes as `a.b`; only the part after the last dot is replaced.
    const run = line.replace(/\?\./g, ".").match(/[\w$.]*$/)![0];
    const dot = run.lastIndexOf(".");
    const partial = run.slice(dot + 1);
    const before = line[line.length - run.length - 1];
    // After `)` or `]` the object is the result of running code: completion does not run it.
    if (before === ")" || before === "]") return [[], partial];
    if (dot < 0) {
      const all = [...Object.keys(names), ...Object.getOwnPropertyNames(globalThis)];
      return [matching(all.filter((n) => IDENT.test(n)), run), run];
    }
    const path = run.slice(0, dot).split(".");
    if (!path.every((p) => IDENT.test(p))) return [[], partial];
    return members(lookUp(path, names), partial);
  } catch {
    // A getter on the way threw (a revoked proxy, a checked accessor): nothing to offer.
    return [[], ""];
  }
}
