/**
 * Errors as the REPL shows them: one line with the class and the message (a second with the
 * cause, when there is one), and the whole stack only on request (`.stack`). The evaluator's
 * modules are `data:` URLs hundreds of characters long: frames in them are shown as `<repl>`
 * with the line of the input, and the REPL's own frames are left out.
 */
import { inspect } from "node:util";

/** Lines the evaluator puts before an input in its module: input line N is module line N + 3. */
export const LINES_BEFORE_INPUT = 3;

/** An evaluator module's URL, also as Deno shortens long ones in stacks (`AAAA......ZZZZ`). */
const MODULE_URL = /data:application\/typescript;base64,[A-Za-z0-9+/=]*(?:\.{3,}[A-Za-z0-9+/=]*)?/;
const MODULE_FRAME = new RegExp(`${MODULE_URL.source}:(\\d+):\\d+`, "g");
/** Frames of the REPL itself (the evaluator and the line editor), not of what the input ran. */
const OWN_FRAME = /^\s*at .*(?:\/repl\/(?:evaluate|server)\.ts|ext:deno_node\/|node:repl)/;

/** `text` with the evaluator's module URLs made short: `<repl>:LINE` of the input. */
export function withoutModuleUrls(text: string): string {
  return text.replace(
    MODULE_FRAME,
    (_, line) => `<repl>:${Math.max(1, Number(line) - LINES_BEFORE_INPUT)}`,
  ).replace(new RegExp(MODULE_URL.source, "g"), "<repl>");
}

function oneLine(err: unknown): string {
  if (!(err instanceof Error)) return `Uncaught ${inspect(err, { breakLength: Infinity })}`;
  const message = withoutModuleUrls(err.message).replace(/\s*\n\s*/g, " ").trim();
  return message ? `${err.name}: ${message}` : err.name;
}

/** The error in one line (class and message), and its cause in a second when it has one. */
export function errorSummary(err: unknown): string {
  const cause = err instanceof Error && err.cause !== undefined
    ? `\n  cause: ${oneLine(err.cause)}`
    : "";
  return oneLine(err) + cause;
}

/** The whole error for `.stack`: its stack and its causes', without the REPL's own frames. */
export function fullStack(err: unknown): string {
  if (!(err instanceof Error)) return oneLine(err);
  const stack = withoutModuleUrls(err.stack ?? oneLine(err))
    .split("\n").filter((l) => !OWN_FRAME.test(l)).join("\n");
  return err.cause === undefined ? stack : `${stack}\nCaused by ${fullStack(err.cause)}`;
}
