/**
 * The REPL on a real terminal (a tmux pane, a pty): Tab completion, history across sessions and
 * Ctrl-R, Ctrl-C on the input being typed, on a pending await and on a dump holding a process
 * frozen, and errors in a line or two.
 */
import assert from "node:assert/strict";
import * as sdk from "../mod.ts";
import {
  exists,
  fixture,
  needs,
  notInstalled,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const root = new URL("../", import.meta.url).pathname;
const missing = notInstalled("tmux");
/** The prompt as the screen shows it once trailing blanks are cut. */
const PROMPT = "tardigrade>";
/** Generous: the machine is shared, and Deno compiles the REPL at its first start. */
const WAIT_MS = 60_000;
let sessions = 0;

/** A REPL in a tmux pane of its own server (its own socket), driven by keys and read off the screen. */
class Terminal {
  private constructor(readonly socket: string, readonly home: string) {}

  static async start(home: string): Promise<Terminal> {
    // A server of its own, on a socket in the session's home: removed with it.
    const t = new Terminal(`${home}/tmux-${++sessions}.sock`, home);
    // A home of its own for the history file; Deno's cache stays where it was.
    const cache = Deno.env.get("DENO_DIR") ?? `${Deno.env.get("HOME")}/.cache/deno`;
    const cmd = `cd '${root}' && HOME='${home}' DENO_DIR='${cache}' ` +
      `exec '${Deno.execPath()}' run -A repl/main.ts`;
    await t.tmux("new-session", "-d", "-s", "repl", "-x", "200", "-y", "50", cmd);
    await t.waitFor(new RegExp(`^${PROMPT}$`, "m"), "the first prompt");
    return t;
  }

  async tmux(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", { args: ["-S", this.socket, ...args] }).output();
    const text = new TextDecoder().decode(out.stdout);
    if (!out.success) throw new Error(`tmux ${args[0]}: ${new TextDecoder().decode(out.stderr)}`);
    return text;
  }

  /** The pid of the REPL (the pane's process: the shell exec'd it). */
  async pid(): Promise<number> {
    return Number((await this.tmux("display-message", "-p", "-t", "repl", "#{pane_pid}")).trim());
  }

  /** Types `text` as it is (no key names). */
  async type(text: string): Promise<void> {
    await this.tmux("send-keys", "-t", "repl", "-l", text);
  }

  /** Presses keys by tmux's names (Tab, Enter, C-c, Up …), one write each. */
  async press(...keys: string[]): Promise<void> {
    for (const k of keys) await this.tmux("send-keys", "-t", "repl", k);
  }

  /** The screen and the pane's scrollback, wrapped lines joined, trailing blanks cut. */
  async screen(): Promise<string> {
    const text = await this.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", "repl");
    return text.split("\n").map((l) => l.trimEnd()).join("\n").trimEnd();
  }

  /** The screen once it matches `re`. */
  async waitFor(re: RegExp, what: string): Promise<string> {
    let last = "";
    await waitUntil(
      async () => re.test(last = await this.screen()),
      WAIT_MS,
      () => `${what} (${re}); the screen:\n${last}`,
    );
    return last;
  }

  /** Enters `line` at a fresh prompt and waits for the next; returns what the input printed. */
  async run(line: string): Promise<string> {
    const before = await this.waitFor(new RegExp(`${PROMPT}$`), "a prompt");
    await this.type(line);
    await this.press("Enter");
    const echo = `${PROMPT} ${line}`.trimEnd();
    const after = await this.waitFor(
      new RegExp(`^${escape(echo)}\n(?:.*\n)*${PROMPT}$`, "m"),
      `the output of ${line}`,
    );
    const rest = after.slice(before.length - PROMPT.length);
    return rest.slice(echo.length + 1, rest.length - PROMPT.length).trimEnd();
  }

  /** Ends the session with Ctrl-D and waits for the REPL to exit. */
  async exit(): Promise<void> {
    await this.press("C-d");
    await waitUntil(
      async () => {
        const out = await new Deno.Command("tmux", { args: ["-S", this.socket, "has-session"] })
          .output();
        return !out.success;
      },
      WAIT_MS,
      "the REPL to exit",
    );
  }

  async close(): Promise<void> {
    await new Deno.Command("tmux", { args: ["-S", this.socket, "kill-server"], stderr: "null" })
      .output();
  }
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** A session with its own home (its own history file) and a fixture to look at. */
async function withSession(
  body: (term: Terminal, target: Target, home: string) => Promise<void>,
): Promise<void> {
  const home = await Deno.makeTempDir({ prefix: "tardigrade-repl-home-" });
  const target = await spawnTarget(await fixture("hello"), [], { ready: /READY/ });
  const term = await Terminal.start(home);
  try {
    await body(term, target, home);
  } finally {
    await term.close();
    await target.kill();
    await Deno.remove(home, { recursive: true });
  }
}

/** TracerPid of `pid`: who holds it frozen (0: no one). */
function tracerOf(pid: number): number {
  return Number(Deno.readTextFileSync(`/proc/${pid}/status`).match(/^TracerPid:\s+(\d+)/m)![1]);
}

Deno.test(
  needs("repl terminal: Tab lists the members of the object before the dot", missing),
  () =>
    withSession(async (term, target) => {
      await term.type("sdk.P");
      await term.press("Tab", "Tab");
      // Every export of mod.ts that starts with P, in a row.
      const members = Object.keys(sdk).filter((k) => k.startsWith("P")).sort();
      let screen = await term.waitFor(
        new RegExp(`^${members.join("\\s+")}$`, "m"),
        "sdk.P's members",
      );
      assert.doesNotMatch(screen, /ArrayBuffer|setTimeout/, "not every global");
      await term.press("C-u");

      // A Process in the session: Tab completes its method, which then runs.
      await term.run(`const p = await proc(${target.pid})`);
      await term.type("p.cm");
      await term.press("Tab");
      await term.waitFor(/^tardigrade> p\.cmdline$/m, "p.cm completed to p.cmdline");
      await term.type("()");
      await term.press("Enter");
      await term.waitFor(/^tardigrade> p\.cmdline\(\)\n\[ '[^']*\/hello' \]$/m, "p.cmdline()");

      // Awaited values: a settled promise of the session, and a helper whose result is known.
      await term.run(`const pending = proc(${target.pid})`);
      await term.type("(await pending).env");
      await term.press("Tab");
      await term.waitFor(/^tardigrade> \(await pending\)\.environ$/m, "a settled promise");
      await term.press("C-u");
      await term.type("(await proc(1)).thr");
      await term.press("Tab");
      await term.waitFor(/^tardigrade> \(await proc\(1\)\)\.threads$/m, "a helper's result");
      await term.press("C-u");

      await term.type("Math.");
      await term.press("Tab", "Tab");
      screen = await term.waitFor(/^E\s+LN10\s+.*\babs\b/m, "Math's members");
      assert.doesNotMatch(screen.slice(screen.lastIndexOf("Math.")), /ArrayBuffer/);
    }),
);

Deno.test(
  needs("repl terminal: history is kept across sessions; Ctrl-R finds and runs a line", missing),
  () =>
    withSession(async (term, _target, home) => {
      assert.equal(await term.run("const alpha = 6"), "");
      assert.equal(await term.run("alpha * 7"), "42");
      await term.exit();
      const path = `${home}/.tardigrade_history`;
      assert.equal(Deno.readTextFileSync(path), "const alpha = 6\nalpha * 7\n");
      assert.equal(Deno.statSync(path).mode! & 0o777, 0o600);

      const next = await Terminal.start(home);
      try {
        // Up brings back the last line of the previous session.
        await next.press("Up");
        await next.waitFor(/^tardigrade> alpha \* 7$/m, "the last line of the session before");
        await next.press("C-u", "C-r");
        await next.type("alp");
        await next.waitFor(/^\(reverse-i-search\)'alp': alpha \* 7$/m, "the newest match");
        await next.press("C-r");
        await next.waitFor(/^\(reverse-i-search\)'alp': const alpha = 6$/m, "the older match");
        await next.press("Enter");
        await next.waitFor(/^tardigrade> const alpha = 6\ntardigrade>$/m, "the match run");
        assert.equal(await next.run("alpha + 1"), "7");
        await next.type("zz");
        await next.press("C-r");
        await next.type("qqq");
        await next.waitFor(/^\(failed reverse-i-search\)'qqq': zz$/m, "no match");
        await next.press("C-g");
        await next.waitFor(/^tardigrade> zz$/m, "the line as it was");
      } finally {
        await next.close();
      }
    }),
);

Deno.test(
  needs(
    "repl terminal: Ctrl-C clears the line, interrupts an await and releases a freeze",
    missing,
  ),
  () =>
    withSession(async (term, target) => {
      await term.type("abc");
      await term.press("C-c");
      await term.waitFor(/^tardigrade> abc\ntardigrade>$/m, "the line cleared");
      assert.equal(await term.run("1 + 1"), "2");

      await term.type("await new Promise(() => {})");
      await term.press("Enter");
      await term.press("C-c");
      await term.waitFor(/^Interrupted: stopped waiting for the input/m, "the await interrupted");
      assert.equal(await term.run("6 * 7"), "42");

      // A dump whose policy never answers holds the process frozen until Ctrl-C releases it.
      const dir = await Deno.makeTempDir({ prefix: "tardigrade-repl-dump-" });
      try {
        const image = `${dir}/image`;
        await term.type(
          `await dump(${target.pid}, "${image}", { mapping: () => new Promise(() => {}) })`,
        );
        await term.press("Enter");
        const repl = await term.pid();
        await waitUntil(() => tracerOf(target.pid) === repl, WAIT_MS, "the dump to freeze it");
        await term.press("C-c");
        await term.waitFor(
          new RegExp(`^Interrupted: .*released process ${target.pid} from its freeze`, "m"),
          "the freeze released",
        );
        assert.equal(tracerOf(target.pid), 0);
        assert.equal(await target.check(), "PASS");
        assert.deepEqual([...Deno.readDirSync(dir)], [], "no image, no partial image");
        assert.ok(!exists(image));
        assert.equal(await term.run("6 * 7"), "42");
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    }),
);

Deno.test(
  needs("repl terminal: errors in a line or two, .stack on request, early ends continue", missing),
  () =>
    withSession(async (term) => {
      assert.equal(await term.run("nosuch"), "ReferenceError: nosuch is not defined");
      assert.equal(
        await term.run('throw new Error("outer", { cause: new RangeError("inner") })'),
        "Error: outer\n  cause: RangeError: inner",
      );
      const stack = await term.run(".stack");
      assert.match(stack, /^Error: outer\n\s+at <repl>:1\nCaused by RangeError: inner/);
      assert.equal(await term.run("1 +* 2"), "SyntaxError: Expression expected (line 1, column 4)");
      // An input that stops too early goes on on the next line, with no wrapper code shown.
      await term.type("const a =");
      await term.press("Enter");
      await term.waitFor(/^\|$/m, "the continuation prompt");
      await term.type("5");
      await term.press("Enter");
      assert.equal(await term.run("a * 2"), "10");
      assert.doesNotMatch(await term.screen(), /data:|base64|__value|__scope/);
    }),
);
