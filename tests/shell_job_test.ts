/**
 * Shell jobs: a program started from a shell in one tmux window is dumped from outside, and
 * `restore --shell-job` brings it back in another window, as that shell's foreground job, with
 * the terminal modes it had set. Real ptys and a real bash; ignored, with the reason, when tmux
 * is missing.
 */
import assert from "node:assert/strict";
import { close, O, open } from "../ffi/mod.ts";
import { ImageReader } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import { exists, fixture, isAlive, killAndReap, needs, waitUntil } from "./helpers.ts";

const root = new URL("../", import.meta.url).pathname;
const deno = Deno.execPath();
const PROMPT = "SJ$ ";

/** Undefined when `cmd arg` runs; else why the tests that need it are ignored. */
function missing(cmd: string, arg: string): string | undefined {
  try {
    const ran = new Deno.Command(cmd, { args: [arg], stdout: "null", stderr: "null" }).outputSync();
    if (ran.success) return undefined;
  } catch { /* not installed */ }
  return `not installed: ${cmd}`;
}
const noTmux = missing("tmux", "-V");

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A tmux server of our own (its own socket), 100x30, windows running a plain bash. */
class Tmux {
  static #count = 0;
  readonly socket = `tardigrade-sj-${Deno.pid}-${Tmux.#count++}`;

  async tmux(...args: string[]): Promise<string> {
    const out = await new Deno.Command("tmux", {
      args: ["-L", this.socket, ...args],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const dec = new TextDecoder();
    if (!out.success) {
      throw new Error(`tmux ${args.join(" ")}: ${dec.decode(out.stderr).trim()}`);
    }
    return dec.decode(out.stdout);
  }

  /** The shell of every window: no rc files, a prompt we can find, no history file. */
  #shell = `env PS1='${PROMPT}' HISTFILE=/dev/null bash --norc --noprofile -i`;

  #socketPath = "";

  async start(): Promise<void> {
    await this.tmux(
      "new-session",
      "-d",
      "-x",
      "100",
      "-y",
      "30",
      "-s",
      "t",
      "-c",
      root,
      this.#shell,
    );
    await this.waitFor("t:0", /^SJ\$/m);
    this.#socketPath = (await this.tmux("display", "-p", "#{socket_path}")).trim();
  }

  async newWindow(index: number): Promise<string> {
    const target = `t:${index}`;
    await this.tmux("new-window", "-d", "-t", target, "-c", root, this.#shell);
    await this.waitFor(target, /^SJ\$/m);
    return target;
  }

  /** Types `text` and Enter (or keys such as C-c with `enter` false). */
  async type(target: string, text: string, enter = true): Promise<void> {
    await this.tmux("send-keys", "-t", target, ...(enter ? ["-l", text] : [text]));
    if (enter) await this.tmux("send-keys", "-t", target, "Enter");
  }

  /** The window's text, its scrollback included, wrapped lines joined. */
  async screen(target: string): Promise<string> {
    return await this.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", target);
  }

  async waitFor(target: string, re: RegExp, timeoutMs = 20_000): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const text = await this.screen(target);
      const m = text.match(re);
      if (m) return m;
      if (Date.now() > deadline) {
        throw new Error(`timed out waiting for ${re} in ${target}; it shows:\n${text}`);
      }
      await sleep(50);
    }
  }

  async panePid(target: string): Promise<number> {
    return Number((await this.tmux("display", "-p", "-t", target, "#{pane_pid}")).trim());
  }

  async paneTty(target: string): Promise<string> {
    return (await this.tmux("display", "-p", "-t", target, "#{pane_tty}")).trim();
  }

  /** Ends the server (its shells and their jobs get SIGHUP) and removes its socket. */
  async kill(): Promise<void> {
    await this.tmux("kill-server").catch(() => {});
    if (this.#socketPath) await Deno.remove(this.#socketPath).catch(() => {});
  }
}

/** pgrp, session and the terminal's foreground group of `pid`. */
function ids(pid: number): { ppid: number; pgrp: number; session: number; tpgid: number } {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ").map(Number);
  return { ppid: f[1], pgrp: f[2], session: f[3], tpgid: f[5] };
}

/** Waits until the group that `pid` leads is the foreground group of its terminal. */
async function untilForeground(pid: number): Promise<void> {
  await waitUntil(
    () => {
      if (!exists(`/proc/${pid}`)) return false; // not restored yet
      return ids(pid).tpgid === pid; // it leads its group, as the job
    },
    20_000,
    `${pid} to have the terminal`,
  );
}

/** The state letter of `pid` (R, S, T …). */
function state(pid: number): string {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  return stat[stat.lastIndexOf(")") + 2];
}

/**
 * Ptys of this process, opened before a test's tmux makes its own, so theirs are the lower
 * numbers, and closed just before that terminal goes: a pty opened meanwhile anywhere on the
 * machine gets the lowest free number, one of these, and the closed terminal's number stays
 * unused while the test looks at it.
 */
class PtyGuard {
  readonly #fds: number[] = [];

  constructor(count: number) {
    for (let i = 0; i < count; i++) {
      this.#fds.push(open("/dev/ptmx", O.RDWR | O.NOCTTY));
    }
  }

  /** The pty numbers held. */
  numbers(): number[] {
    return this.#fds.map((fd) =>
      Number(Deno.readTextFileSync(`/proc/self/fdinfo/${fd}`).match(/^tty-index:\s+(\d+)/m)?.[1])
    );
  }

  release(): void {
    for (const fd of this.#fds.splice(0)) close(fd);
  }
}

/** `c_lflag` bits the tests look at. */
const ICANON = 0o2;
const ECHO = 0o10;

/** The local modes that make a terminal cooked or raw, as `stty -F TTY` sees them from outside. */
async function sttyFrom(tty: string): Promise<string> {
  const out = await new Deno.Command("stty", { args: ["-F", tty, "-a"], stdout: "piped" }).output();
  return modeWords(new TextDecoder().decode(out.stdout));
}

/** "icanon echo" or "-icanon -echo" (or a mix) from `stty -a` output. */
function modeWords(stty: string): string {
  const words = stty.split(/[\s;]+/);
  return ["icanon", "echo"].map((m) => words.find((w) => w === m || w === `-${m}`) ?? "?")
    .join(" ");
}

/**
 * The modes the window's shell runs its commands with: `stty -a` typed there (readline has its
 * own while it reads a line, so a look from outside at the prompt would see those).
 */
async function sttyIn(tmux: Tmux, win: string, tag: string): Promise<string> {
  await tmux.type(
    win,
    `stty -a | tr ' ;' '\\n\\n' | grep -xE -- '-?(icanon|echo)' | sed 's/^/${tag}: /'`,
  );
  const found = await tmux.waitFor(win, new RegExp(`^${tag}: \\S+\\n${tag}: \\S+$`, "m"));
  return modeWords(found[0].replaceAll(`${tag}: `, ""));
}

/** The highest `tick N` on a screen. */
function lastTick(text: string): number {
  return Math.max(0, ...[...text.matchAll(/^tick (\d+)$/gm)].map((m) => Number(m[1])));
}

async function cli(...args: string[]): Promise<{ code: number; stderr: string }> {
  const out = await new Deno.Command(deno, {
    args: ["run", "-A", "main.ts", ...args],
    cwd: root,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code: out.code, stderr: new TextDecoder().decode(out.stderr) };
}

/**
 * Starts the fixture in window 0 of a fresh tmux server, lets it tick, and dumps it from
 * outside (it ends). Returns its pid, its last tick, its old terminal and the image.
 */
async function startAndDump(tmux: Tmux): Promise<
  { pid: number; tick: number; oldTty: string; dir: string }
> {
  await tmux.start();
  const bin = await fixture("shell_job");
  await tmux.type("t:0", bin);
  const pid = Number((await tmux.waitFor("t:0", /^READY (\d+)$/m))[1]);
  await tmux.waitFor("t:0", /^tick 3$/m);
  const dir = `${Deno.makeTempDirSync({ prefix: "tardigrade-sj-" })}/img`;
  const oldTty = await tmux.paneTty("t:0");
  assert.equal(Deno.readLinkSync(`/proc/${pid}/fd/0`), oldTty);
  const dump = await cli("dump", String(pid), dir);
  assert.equal(dump.code, 0, dump.stderr);
  const tick = lastTick(await tmux.screen("t:0"));
  return { pid, tick, oldTty, dir };
}

/** Restores the image in a second window with --shell-job, its old window closed first. */
async function restoreInWindow1(
  tmux: Tmux,
  job: { pid: number; tick: number; dir: string },
): Promise<string> {
  const win = await tmux.newWindow(1);
  await tmux.tmux("kill-window", "-t", "t:0"); // its terminal is gone
  await tmux.type(win, `${deno} run -A main.ts restore ${job.dir} --shell-job; echo EXIT=$?`);
  await tmux.waitFor(win, new RegExp(`^tick ${job.tick + 3}$`, "m"));
  // It goes on counting from where it was, not from the start.
  const first = Number((await tmux.screen(win)).match(/^tick (\d+)$/m)![1]);
  assert.ok(first === job.tick || first === job.tick + 1, `first tick ${first} after ${job.tick}`);
  return win;
}

async function cleanup(tmux: Tmux, job?: { pid: number; dir: string }): Promise<void> {
  await tmux.kill();
  if (job) {
    await killAndReap(job.pid);
    await Deno.remove(job.dir.replace(/\/img$/, ""), { recursive: true }).catch(() => {});
  }
}

type Job = Awaited<ReturnType<typeof startAndDump>>;

/** A test of a job dumped in window 0 and restored with --shell-job in window 1. */
function restoredJobTest(name: string, body: (tmux: Tmux, job: Job, win: string) => Promise<void>) {
  Deno.test({
    ...needs(name, noTmux),
    async fn() {
      const tmux = new Tmux();
      let job: Job | undefined;
      try {
        job = await startAndDump(tmux);
        await body(tmux, job, await restoreInWindow1(tmux, job));
      } finally {
        await cleanup(tmux, job);
      }
    },
  });
}

restoredJobTest(
  "shell job: comes back in another window, reads it, and quit ends restore with its code",
  async (tmux, job, win) => {
    // In the second window's session, leading its own group, which has the terminal.
    const shell = await tmux.panePid(win);
    const st = ids(job.pid);
    assert.equal(st.session, shell);
    assert.equal(st.pgrp, job.pid);
    assert.equal(st.tpgid, job.pid);
    assert.notEqual(ids(st.ppid).pgrp, job.pid); // the tool waits in a group of its own
    const tty = await tmux.paneTty(win);
    assert.notEqual(tty, job.oldTty);
    for (const fd of [0, 1, 2]) assert.equal(Deno.readLinkSync(`/proc/${job.pid}/fd/${fd}`), tty);

    await tmux.type(win, "hello there");
    await tmux.waitFor(win, /^echo: HELLO THERE$/m);
    await tmux.type(win, "quit");
    await tmux.waitFor(win, /^EXIT=3\n+SJ\$/m);
    assert.ok(!isAlive(job.pid));
  },
);

restoredJobTest(
  "shell job: Ctrl-C ends the restored program, and restore exits 130",
  async (tmux, job, win) => {
    const tool = ids(job.pid).ppid;
    await tmux.type(win, "C-c", false);
    await tmux.waitFor(win, /EXIT=130\n+SJ\$/); // after the echoed ^C
    assert.ok(!isAlive(job.pid));
    assert.ok(!isAlive(tool));
  },
);

restoredJobTest(
  "shell job: ^Z stops it and restore with it; fg continues both",
  async (tmux, job, win) => {
    const tool = ids(job.pid).ppid;
    await tmux.type(win, "C-z", false);
    await tmux.waitFor(
      win,
      new RegExp(`\\[tardigrade\\] ${job.pid} stopped \\(SIGTSTP\\)`),
    );
    await tmux.waitFor(win, /^EXIT=148\n+SJ\$/m); // the shell saw its job stop
    assert.equal(ids(job.pid).tpgid, await tmux.panePid(win)); // the shell has the terminal
    await waitUntil(
      () => state(job.pid) === "T",
      5000,
      () => `${job.pid} stopped: ${state(job.pid)}`,
    );
    const stopped = lastTick(await tmux.screen(win));
    // Three ticks' time (it ticks every 100 ms while it runs): stopped, it prints none.
    await sleep(300);
    assert.equal(lastTick(await tmux.screen(win)), stopped);
    assert.ok(isAlive(job.pid) && isAlive(tool));

    await tmux.type(win, "fg; echo FG=$?");
    await tmux.waitFor(win, new RegExp(`^tick ${stopped + 3}$`, "m"));
    assert.equal(ids(job.pid).tpgid, job.pid);
    await tmux.type(win, "again");
    await tmux.waitFor(win, /^echo: AGAIN$/m);
    await tmux.type(win, "quit");
    await tmux.waitFor(win, /^FG=3\n+SJ\$/m);
  },
);

Deno.test({
  ...needs("shell job: without --shell-job a closed terminal is refused, with the hint", noTmux),
  async fn() {
    const tmux = new Tmux();
    const guard = new PtyGuard(8);
    let job;
    try {
      job = await startAndDump(tmux);
      const number = Number(job.oldTty.match(/\/dev\/pts\/(\d+)$/)![1]);
      const below = guard.numbers().filter((n) => n < number).length;
      assert.ok(below > 0, `no guard pty below ${job.oldTty}: ${guard.numbers()}`);
      guard.release();
      await tmux.kill(); // the pane and its pty are gone
      await waitUntil(() => !exists(job!.oldTty), 5000, `${job.oldTty} to go with tmux`);
      const r = await cli("restore", job.dir);
      const reused = exists(job.oldTty) ? ` (${job.oldTty} was reused meanwhile)` : "";
      assert.equal(r.code, 1, r.stderr + reused);
      assert.match(r.stderr, new RegExp(`${job.oldTty} no longer exists`));
      assert.match(r.stderr, /--shell-job/);
      // And --shell-job wants a terminal to come back to (stdin here is /dev/null).
      const s = await cli("restore", job.dir, "--shell-job");
      assert.equal(s.code, 1);
      assert.match(s.stderr, /--shell-job needs a terminal: run restore from one/);
    } finally {
      guard.release();
      await cleanup(tmux, job);
    }
  },
});

Deno.test({
  ...needs(
    "shell job: a raw-mode program gets its terminal modes back; the shell's come back after",
    noTmux,
  ),
  async fn() {
    const tmux = new Tmux();
    let job;
    try {
      await tmux.start();
      await tmux.type("t:0", await fixture("raw_keys"));
      const pid = Number((await tmux.waitFor("t:0", /^RAW (\d+)$/m))[1]);
      const dir = `${Deno.makeTempDirSync({ prefix: "tardigrade-sj-" })}/img`;
      job = { pid, dir };
      const dump = await cli("dump", String(pid), dir);
      assert.equal(dump.code, 0, dump.stderr);
      {
        // The dump read the modes and the size, and left them as they were.
        using image = await ImageReader.open(dir);
        const tty = (await image.readMeta<ProcessEntry>("process")).tty!;
        assert.equal(tty.modes!.lflag & (ICANON | ECHO), 0);
        assert.equal(tty.modes!.raw.length, 36);
        assert.deepEqual([tty.winsize!.cols, tty.winsize!.rows], [100, 30]);
      }

      const win = await tmux.newWindow(1);
      await tmux.tmux("kill-window", "-t", "t:0");
      const tty = await tmux.paneTty(win);
      const restore = `${deno} run -A main.ts restore ${dir} --shell-job`;
      await tmux.type(win, `${restore}; echo EXIT=$?`);
      await untilForeground(pid);
      assert.equal(await sttyFrom(tty), "-icanon -echo");
      // Each key arrives alone, without Enter, and is not echoed (an echo would precede "key").
      await tmux.type(win, "x", false);
      await tmux.waitFor(win, /^key 78$/m);
      await tmux.tmux("send-keys", "-t", win, "-l", "ab");
      await tmux.waitFor(win, /^key 61\nkey 62$/m);
      // ^C (ISIG is on) ends it without it putting anything back: restore does. (bash keeps
      // the modes a job that exits leaves, so this is restore's doing.)
      await tmux.type(win, "C-c", false);
      await tmux.waitFor(win, /^EXIT=130\n+SJ\$/m);
      assert.ok(!isAlive(pid));
      assert.equal(await sttyIn(tmux, win, "ENDED"), "icanon echo");

      // Again from the same image: ^Z gives the shell its modes; fg gives the job its own again
      // (bash's fg sets the modes the tool stopped with: the shell's).
      await tmux.type(win, `clear; ${restore}; echo AGAIN=$?`);
      await untilForeground(pid);
      await tmux.type(win, "C-z", false);
      await tmux.waitFor(win, /^AGAIN=148\n+SJ\$/m);
      assert.equal(await sttyIn(tmux, win, "STOPPED"), "icanon echo");
      await tmux.type(win, "fg; echo FG=$?");
      await untilForeground(pid);
      assert.equal(await sttyFrom(tty), "-icanon -echo");
      await tmux.tmux("send-keys", "-t", win, "-l", "y");
      await tmux.waitFor(win, /^key 79$/m);
      await tmux.type(win, "C-c", false);
      await tmux.waitFor(win, /^FG=130\n+SJ\$/m);
    } finally {
      await cleanup(tmux, job);
    }
  },
});

Deno.test({
  ...needs(
    "shell job: vim comes back in another window, in insert mode, and :wq writes the file",
    noTmux ?? missing("vim", "--version"),
  ),
  async fn() {
    const tmux = new Tmux();
    const tmp = Deno.makeTempDirSync({ prefix: "tardigrade-sj-" });
    const dir = `${tmp}/img`;
    const file = `${tmp}/scratch.txt`;
    let job;
    try {
      await tmux.start();
      await tmux.type("t:0", `vim --clean ${file}`);
      await tmux.waitFor("t:0", /"[^"]*scratch\.txt" \[New\]/);
      const pid = ids(await tmux.panePid("t:0")).tpgid; // vim leads the foreground job
      job = { pid, dir };
      assert.match(Deno.readTextFileSync(`/proc/${pid}/comm`), /^vim/);
      await tmux.type("t:0", "i", false);
      await tmux.tmux("send-keys", "-t", "t:0", "-l", "typed before the dump");
      await tmux.waitFor("t:0", /^typed before the dump/m);
      await tmux.waitFor("t:0", /-- INSERT --/);
      const dump = await cli("dump", String(pid), dir);
      assert.equal(dump.code, 0, dump.stderr);

      const win = await tmux.newWindow(1);
      await tmux.tmux("kill-window", "-t", "t:0");
      await tmux.type(win, `${deno} run -A main.ts restore ${dir} --shell-job; echo EXIT=$?`);
      await untilForeground(pid);
      // The SIGWINCH a job gets makes vim redraw: its text, still in insert mode.
      await tmux.waitFor(win, /^typed before the dump/m);
      await tmux.waitFor(win, /-- INSERT --/);
      // Escape alone leaves insert mode at once (in cooked mode it would wait for an Enter).
      await tmux.type(win, "Escape", false);
      let visible = "";
      await waitUntil(
        async () =>
          !/-- INSERT --/.test(visible = await tmux.tmux("capture-pane", "-p", "-t", win)),
        10_000,
        () => `vim to leave insert mode:\n${visible}`,
      );
      await tmux.tmux("send-keys", "-t", win, "-l", ":wq");
      await tmux.type(win, "Enter", false);
      await tmux.waitFor(win, /^EXIT=0\n+SJ\$/m);
      assert.equal(Deno.readTextFileSync(file), "typed before the dump\n");
      assert.ok(!isAlive(pid));
    } finally {
      await cleanup(tmux, job);
      await Deno.remove(tmp, { recursive: true }).catch(() => {});
    }
  },
});
