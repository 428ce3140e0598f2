/**
 * The REPL on `node:repl`, with an evaluator of its own (TypeScript, top-level await, names kept
 * between inputs) and dot-commands for the common listings; on a terminal, Tab completion
 * (`tab_key.ts`, `completion.ts`), history across sessions (`history.ts`) with Ctrl-R
 * (`reverse_search.ts`), Ctrl-C that interrupts an input (`interrupt.ts`); errors in a line or
 * two (`errors.ts`).
 */
import process from "node:process";
import repl from "node:repl";
import { PassThrough } from "node:stream";
import { evaluate, Incomplete, isIncomplete } from "./evaluate.ts";
import { helpers, initialScope, RESULT_SHAPES } from "./helpers.ts";
import { complete, watchPromises } from "./completion.ts";
import { HISTORY_SIZE, type HistoryHolder, keepHistory } from "./history.ts";
import { errorSummary, fullStack } from "./errors.ts";
import { Interrupted, Waiting } from "./interrupt.ts";
import { type CompletingEditor, installTabCompletion } from "./tab_key.ts";
import { installReverseSearch, type SearchableEditor } from "./reverse_search.ts";
import { TOOL_VERSION } from "../mod.ts";

type Callback = (err: Error | null, value?: unknown) => void;

/** Whether `v` is a non-empty array of plain objects: shown with console.table. */
function isRows(v: unknown): v is Record<string, unknown>[] {
  return Array.isArray(v) && v.length > 0 &&
    v.every((r) =>
      r !== null && typeof r === "object" && Object.getPrototypeOf(r) === Object.prototype
    );
}

/** Widest text a table cell shows; the whole value stays in the returned rows. */
const CELL_WIDTH = 60;

function clip(s: string): string {
  return s.length > CELL_WIDTH ? `${s.slice(0, CELL_WIDTH - 1)}…` : s;
}

/** Table cells: bigints in hex, arrays joined, nested objects summarized, long text clipped. */
function cells(rows: Record<string, unknown>[]): Record<string, unknown>[] {
  return rows.map((r) =>
    Object.fromEntries(
      Object.entries(r).map(([k, v]) => {
        if (typeof v === "bigint") return [k, `0x${v.toString(16)}`];
        if (Array.isArray(v)) return [k, clip(v.join(" "))];
        if (typeof v === "string") return [k, clip(v)];
        if (v !== null && typeof v === "object") {
          return [
            k,
            clip(JSON.stringify(v, (_, x) => typeof x === "bigint" ? `0x${x.toString(16)}` : x)),
          ];
        }
        return [k, v];
      }),
    )
  );
}

/** Shows a value: rows as a table (resolving to undefined, so nothing else is printed). */
function show(v: unknown): unknown {
  if (!isRows(v)) return v;
  console.table(cells(v));
  return undefined;
}

/** Options of `startRepl`. */
export interface ReplOptions {
  /** Where history is kept (default ~/.tardigrade_history; only for a terminal). */
  historyPath?: string;
  /** How many lines of history are kept, in the file and in the session (default 1000). */
  historySize?: number;
}

/** Runs a REPL on stdin/stdout until it ends; resolves to the exit code. */
export function startRepl(opts: ReplOptions = {}): Promise<number> {
  const scope = initialScope();
  const historySize = opts.historySize ?? HISTORY_SIZE;
  // Inputs run one after another even when lines arrive faster (piped stdin).
  let queue: Promise<unknown> = Promise.resolve();
  const enqueue = (job: () => Promise<void>) => {
    queue = queue.then(job, job);
    return queue;
  };
  const terminal = Deno.stdin.isTerminal();
  const waiting = new Waiting();
  let lastError: unknown = undefined;
  /** Shows an error in a line or two; `.stack` shows all of it. */
  const report = (err: unknown) => {
    lastError = err;
    console.log(errorSummary(err));
  };
  // A promise rejected with no one to hear it ends a Deno program: here it is only reported.
  const onUnhandled = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    lastError = e.reason;
    console.log(`\n(in a promise) ${errorSummary(e.reason)}`);
    // Between inputs on a terminal the prompt is drawn again, with what was being typed.
    if (terminal && !waiting.busy) server.displayPrompt(true);
  };
  globalThis.addEventListener("unhandledrejection", onUnhandled);
  // Piped input is fed one line at a time, each once the previous one is done (the REPL shows
  // its prompt again): node:repl reads ahead otherwise, and async evaluation would interleave.
  let release = () => {};
  let ready = Promise.resolve();
  const input = terminal ? process.stdin : new PassThrough();
  if (!terminal) {
    (async () => {
      let rest = "";
      const feed = async (line: string) => {
        await ready;
        ready = new Promise((r) => release = r);
        (input as PassThrough).write(`${line}\n`);
      };
      for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
        rest += chunk;
        let nl;
        while ((nl = rest.indexOf("\n")) >= 0) {
          await feed(rest.slice(0, nl));
          rest = rest.slice(nl + 1);
        }
      }
      if (rest) await feed(rest);
      await ready;
      (input as PassThrough).end();
    })();
  }
  console.log(`tardigrade ${TOOL_VERSION}: help() lists the helpers, .help the commands`);
  const server = repl.start({
    prompt: "tardigrade> ",
    input,
    output: process.stdout,
    terminal,
    ignoreUndefined: true,
    useColors: terminal && Deno.stdout.isTerminal(),
    eval: (code: string, _ctx: unknown, _file: string, cb: Callback) => {
      // Decided at once, before the next line is read, so the REPL buffers it with this one.
      if (isIncomplete(code)) return cb(new repl.Recoverable(new Incomplete("more input")));
      const run = waiting.begin();
      enqueue(async () => {
        try {
          cb(null, show(await run(() => evaluate(code, scope))));
        } catch (err) {
          if (err instanceof Incomplete) return cb(new repl.Recoverable(err));
          report(err);
          cb(null);
        } finally {
          watchPromises(scope);
        }
      });
    },
    // No inline preview: it runs the input in a context without the session's names.
    preview: false,
  });

  const displayPrompt = server.displayPrompt.bind(server);
  server.displayPrompt = (preserveCursor?: boolean) => {
    displayPrompt(preserveCursor);
    release();
  };

  // A dot-command runs its listing in the queue and prints it as a table.
  const command = (name: string, help: string, body: (arg: string) => Promise<unknown>) => {
    server.defineCommand(name, {
      help,
      action(arg: string) {
        const run = waiting.begin();
        enqueue(async () => {
          try {
            const v = show(await run(() => body(arg.trim())));
            if (v !== undefined) console.log(v);
          } catch (err) {
            if (err instanceof Interrupted) report(err);
            else console.error(`tardigrade: ${(err as Error).message}`);
          }
          server.displayPrompt();
        });
      },
    });
  };
  /** The PID argument of `.name`, or a usage error that says it wants one. */
  const pid = (name: string, arg: string) => {
    if (!arg) throw new Error(`usage: .${name} PID`);
    if (!/^\d+$/.test(arg)) throw new Error(`not a pid: '${arg}' (usage: .${name} PID)`);
    return Number(arg);
  };
  command("ps", "List processes", () => helpers.ps());
  command("maps", "Show the mappings of PID", (a) => helpers.maps(pid("maps", a)));
  command("fds", "Show the descriptors of PID", (a) => helpers.fds(pid("fds", a)));
  command("inspect", "Show what the image in DIR holds", async (a) => {
    if (!a) throw new Error("usage: .inspect DIR");
    const r = await helpers.inspect(a);
    for (const p of r.processes) {
      console.log(`process ${p.pid} (${p.comm}): ${p.cmdline.join(" ")}`);
      console.table(cells(p.threads));
      console.table(cells(p.mappings));
      console.table(cells(p.fds));
      console.log(p.totals);
    }
  });
  command("stack", "Show the whole last error: its stack and causes", () => {
    console.log(lastError === undefined ? "no error yet" : fullStack(lastError));
    return Promise.resolve();
  });
  command("help", "Show the helpers and these commands", () => {
    helpers.help();
    console.log("\ncommands:");
    for (const [name, c] of Object.entries(server.commands).sort()) {
      console.log(`  .${name.padEnd(8)} ${(c as { help?: string }).help ?? ""}`);
    }
    return Promise.resolve();
  });

  // Ctrl-C while an input runs interrupts it; else it clears the line being typed (or the lines
  // of an unfinished input), as node:repl does.
  const clearInput = server.listeners("SIGINT");
  server.removeAllListeners("SIGINT");
  server.on("SIGINT", () => {
    if (waiting.interrupt()) return;
    for (const fn of clearInput) fn.call(server);
  });

  if (terminal) {
    const home = Deno.env.get("HOME") ?? ".";
    const path = opts.historyPath ?? `${home}/.tardigrade_history`;
    Object.assign(server, { historySize });
    keepHistory(server as unknown as HistoryHolder, path, historySize);
    installTabCompletion(
      server as unknown as CompletingEditor,
      (line) => complete(line, scope, Object.keys(server.commands), RESULT_SHAPES),
      process.stdout,
    );
    installReverseSearch(server as unknown as SearchableEditor);
  }
  return new Promise((resolve) => {
    server.on("exit", () => {
      globalThis.removeEventListener("unhandledrejection", onUnhandled);
      queue.then(() => resolve(0), () => resolve(0));
    });
  });
}
