/**
 * Outside peers (lib/files/outside_peers.ts, lib/files/external.ts): a writer whose pipe, UNIX
 * socket, FIFO or pseudo-terminal has its other side in a process outside the dump is refused,
 * naming the fd, the object and that process; declared external (`--external KEY`, a policy's
 * `{ external: KEY }`) it is dumped without it, and the restore needs it handed in
 * (`--inherit-fd fd[N]:KEY`, `inheritFds`): then the restored writer writes into what the
 * restoring process handed in. Each refused dump leaves the writer as it was: alive, not traced,
 * not stopped, its own check passing.
 */
import assert from "node:assert/strict";
import { AF, close, O, open, SOCK, tryConnect, trySocket } from "../ffi/mod.ts";
import { checkpoint, DumpError, ImageReader, PolicyError, restore, RestoreError } from "../mod.ts";
import type { ExternalEntry } from "../mod.ts";
import type { FileEntry, ProcessEntry } from "../image.ts";
import {
  cli,
  exists,
  fixture,
  killAndReap,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const repoRoot = new URL("../", import.meta.url).pathname;

/** The fixture: its parent (the outside peer, `t.pid`) and the writer, the one dumped. */
interface Peer {
  t: Target;
  writer: number;
  /** The writer's descriptor of the channel. */
  chan: number;
  /** The number of the writer's next PASS line. */
  checks: number;
}

async function startPeer(mode: string, ...args: string[]): Promise<Peer> {
  const t = await spawnTarget(await fixture("outside_peer"), [mode, ...args], {
    ready: /^(READY \d+ chan=\d+|SETUP FAILED.*)$/m,
  });
  const m = t.output().match(/^READY (\d+) chan=(\d+)$/m);
  assert.ok(m, t.output());
  await t.waitFor(/^PEER \d+$/m);
  if (mode === "tty") await t.waitFor(/^SESSION \d+ /m);
  return { t, writer: Number(m[1]), chan: Number(m[2]), checks: 0 };
}

/** Asks the writer to check itself; its PASS line comes through the outside peer's relay. */
async function checkViaPeer(p: Peer): Promise<void> {
  const from = p.t.output().length;
  Deno.kill(p.writer, "SIGUSR1");
  const line = await p.t.waitFor(/^(PASS \d+|FAIL.*)$/m, 10_000, from);
  assert.equal(line[1], `PASS ${++p.checks}`, p.t.output());
}

/** After a refused dump: alive, not traced, not stopped, and its check passes. */
async function unharmed(p: Peer): Promise<void> {
  const status = Deno.readTextFileSync(`/proc/${p.writer}/status`);
  assert.match(status, /^TracerPid:\s+0$/m, "still traced");
  assert.doesNotMatch(status, /^State:\s+[tTZX]/m, "left stopped, or gone");
  await checkViaPeer(p);
}

/** The writer, killed by the dump, reaped by its parent: its pid is free for the restore. */
async function gone(pid: number): Promise<void> {
  await waitUntil(() => !exists(`/proc/${pid}`), 5000, `${pid} to be reaped`);
}

async function cleanup(p: Peer, base: string): Promise<void> {
  await killAndReap(p.writer);
  const session = p.t.output().match(/^SESSION (\d+) /m);
  if (session) await killAndReap(Number(session[1]));
  await p.t.kill();
  await Deno.remove(base, { recursive: true }).catch(() => {});
  await Deno.remove(p.t.outPath).catch(() => {});
}

async function externalEntries(dir: string): Promise<ExternalEntry[]> {
  using image = await ImageReader.open(dir);
  const p = await image.readMeta<ProcessEntry>("process");
  return p.files.filter((f: FileEntry) => f.kind === "external") as ExternalEntry[];
}

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}

/** Restores `dir`, handing in `path` (opened here with `flags`) as its external file `path`. */
async function restoreHandingIn(dir: string, path: string, flags: number): Promise<void> {
  const mine = open(path, flags | O.CLOEXEC);
  try {
    await restore(dir, { inheritFds: { [path]: mine } });
  } finally {
    close(mine); // the restored process has it now
  }
}

/** Reads `stream` until its text matches `re`; returns the text read. */
async function readUntil(
  reader: ReadableStreamDefaultReader<Uint8Array>,
  re: RegExp,
  timeoutMs = 10_000,
): Promise<string> {
  let text = "";
  const decoder = new TextDecoder();
  const deadline = Date.now() + timeoutMs;
  while (!re.test(text)) {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<null>((r) =>
      timer = setTimeout(() => r(null), deadline - Date.now())
    );
    const chunk = await Promise.race([reader.read(), timeout]);
    clearTimeout(timer);
    if (chunk === null) {
      throw new Error(`timed out waiting for ${re}; read: ${JSON.stringify(text)}`);
    }
    if (chunk.done) throw new Error(`EOF before ${re}; read: ${JSON.stringify(text)}`);
    text += decoder.decode(chunk.value, { stream: true });
  }
  return text;
}

Deno.test("outside peers: a pipe to a reader outside the dump, refused, declared external, handed in (CLI)", async () => {
  const p = await startPeer("pipe");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  const dir = `${base}/img`;
  try {
    const key = Deno.readLinkSync(`/proc/${p.writer}/fd/1`);
    assert.match(key, /^pipe:\[\d+\]$/);
    const refused = await cli("dump", String(p.writer), dir);
    assert.equal(refused.code, 1, refused.stderr);
    assert.match(
      refused.stderr,
      new RegExp(
        `^tardigrade: fd 1 of process ${p.writer}, the write end of ${escape(key)}: its read ` +
          `end is held by peer_reader ${p.t.pid} \\(fd 3\\), outside the dump; restored alone ` +
          `it would be cut off from it: declare it external \\(dump --external ${escape(key)}`,
      ),
    );
    assert.match(refused.stderr, new RegExp(`--inherit-fd fd\\[N\\]:${escape(key)}`));
    assert.ok(!exists(dir), "an image was left");
    await unharmed(p);

    const dumped = await cli("dump", String(p.writer), dir, "--external", key);
    assert.equal(dumped.code, 0, dumped.stderr);
    const [entry] = await externalEntries(dir);
    assert.equal(entry.key, key);
    assert.equal(entry.was, "pipe");
    assert.equal(entry.flags & O.ACCMODE, O.WRONLY);
    assert.equal(
      entry.origin,
      `fd 1 of process ${p.writer}; when dumped, its read end is held by peer_reader ${p.t.pid} (fd 3)`,
    );
    await gone(p.writer);

    const missing = await cli("restore", dir);
    assert.equal(missing.code, 1);
    assert.equal(
      missing.stderr.trim(),
      `tardigrade: the image needs an outside file for ${key} (${entry.origin}): ` +
        `restore --inherit-fd fd[N]:${key}`,
    );
    const unknown = await cli("restore", dir, "--inherit-fd", "fd[1]:pipe:[1]");
    assert.equal(unknown.code, 1);
    assert.match(
      unknown.stderr,
      new RegExp(
        `fd\\[1\\]:pipe:\\[1\\]: the image has no outside file pipe:\\[1\\] \\(its outside files: ${
          escape(key)
        }\\)`,
      ),
    );
    const wrongMode = await cli("restore", dir, "--inherit-fd", `0=${key}`); // stdin: /dev/null
    assert.equal(wrongMode.code, 1);
    assert.match(
      wrongMode.stderr,
      /fd 0 of tardigrade is open for reading, but .* was open for writing/,
    );
    const badSyntax = await cli("restore", dir, "--inherit-fd", `one:${key}`);
    assert.equal(badSyntax.code, 2);
    assert.match(badSyntax.stderr, /is not fd\[N\]:KEY \(or N=KEY\)/);
    assert.ok(!exists(`/proc/${p.writer}`), "a refused restore left a process");

    // The restore's stdout is a pipe this test reads: the restored writer writes into it.
    const tool = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "main.ts", "restore", dir, "--inherit-fd", `fd[1]:${key}`],
      cwd: repoRoot,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = tool.stdout.getReader();
    try {
      const [status, stderr] = await Promise.all([
        tool.status,
        new Response(tool.stderr).text(),
      ]);
      assert.equal(status.code, 0, stderr);
      // Its pid went to stderr: stdout is the restored writer's.
      assert.equal(stderr.trim(), String(p.writer));
      const now = Deno.readLinkSync(`/proc/${p.writer}/fd/1`);
      assert.match(now, /^pipe:\[\d+\]$/);
      assert.notEqual(now, key);
      Deno.kill(p.writer, "SIGUSR1");
      assert.equal(await readUntil(reader, /\n/), `PASS ${++p.checks}\n`);
    } finally {
      await killAndReap(p.writer);
      await reader.cancel().catch(() => {});
    }
  } finally {
    await cleanup(p, base);
  }
});

/** A sockaddr_un for `path`. */
function unixAddress(path: string): Uint8Array {
  const name = new TextEncoder().encode(path);
  const addr = new Uint8Array(2 + name.length + 1);
  new DataView(addr.buffer).setUint16(0, AF.UNIX, true);
  addr.set(name, 2);
  return addr;
}

Deno.test("outside peers: a UNIX socket whose peer is outside, refused, then a policy's external answer, handed in (SDK)", async () => {
  const p = await startPeer("socket");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  const dir = `${base}/img`;
  let listener: Deno.UnixListener | undefined;
  try {
    const key = Deno.readLinkSync(`/proc/${p.writer}/fd/3`);
    await assert.rejects(checkpoint(p.writer, dir, { leaveRunning: true }), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `^fd 3 of process ${p.writer}: UNIX stream socket \\(${escape(key)}\\) is connected ` +
            `to an unnamed peer \\(socket:\\[\\d+\\]\\) outside the dump: no process of this ` +
            `dump holds that end \\(peer_reader ${p.t.pid} \\(fd 3\\) does\\)`,
        ),
      );
      assert.match(err.message, new RegExp(`--external ${escape(key)}`));
      return true;
    });
    assert.ok(!exists(dir));
    await unharmed(p);

    const policy = {
      fd: (fd: { target: string }) => fd.target === key ? { external: key } : "dump" as const,
    };
    await checkpoint(p.writer, dir, { policy });
    const [entry] = await externalEntries(dir);
    assert.deepEqual([entry.key, entry.was], [key, "socket"]);
    await gone(p.writer);
    await assert.rejects(
      restore(dir),
      (err: Error) =>
        err instanceof RestoreError &&
        err.message.startsWith(`the image needs an outside file for ${key} (fd 3 of process `),
    );

    // A connection of this test's own, to a listener it accepts on: handed in as the socket.
    listener = Deno.listen({ transport: "unix", path: `${base}/s` });
    const mine = trySocket(AF.UNIX, SOCK.STREAM | SOCK.CLOEXEC, 0);
    assert.ok(mine >= 0);
    assert.equal(tryConnect(mine, unixAddress(`${base}/s`)), 0);
    const conn = await listener.accept();
    try {
      const r = await restore(dir, { inheritFds: { [key]: mine } });
      assert.equal(r.pid, p.writer);
      close(mine); // the restored writer has it now
      Deno.kill(p.writer, "SIGUSR1");
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), `PASS ${++p.checks}\n`);
    } finally {
      conn.close();
    }
  } finally {
    listener?.close();
    await cleanup(p, base);
  }
});

Deno.test("outside peers: a FIFO its reader holds outside, declared as fd:N, handed in: the same reader again", async () => {
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  const path = `${base}/fifo`;
  const dir = `${base}/img`;
  const p = await startPeer("fifo", path);
  try {
    await assert.rejects(checkpoint(p.writer, dir), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `^fd 3 of process ${p.writer}, FIFO ${escape(path)}, open for writing: it is open ` +
            `for reading by peer_reader ${p.t.pid} \\(fd 3\\), outside the dump;.*` +
            `--external ${escape(path)}`,
        ),
      );
      return true;
    });
    await unharmed(p);
    // A key that names nothing, and an external fd the policy skips: refused, nothing dumped.
    await assert.rejects(
      checkpoint(p.writer, dir, { external: ["fd:9"] }),
      /--external fd:9 names no descriptor of the dump/,
    );
    await assert.rejects(
      checkpoint(p.writer, dir, { external: ["fd:3"], policy: { fd: () => "skip" } }),
      (err: Error) => err instanceof PolicyError && /is declared external/.test(err.message),
    );
    await assert.rejects(
      checkpoint(p.writer, dir, { policy: { fd: () => ({ external: "" }) } }),
      (err: Error) => err instanceof PolicyError && /a name on one line/.test(err.message),
    );
    await assert.rejects(
      checkpoint(p.writer, dir, { policy: { fd: () => ({ external: 3 }) as never } }),
      (err: Error) =>
        err instanceof PolicyError &&
        err.message.includes(`none of "dump", "skip", { reopen: "/path" } or { external: "KEY" }`),
    );
    assert.ok(!exists(dir));
    await unharmed(p);

    await checkpoint(p.writer, dir, { external: ["fd:3"] });
    const [entry] = await externalEntries(dir);
    assert.deepEqual([entry.key, entry.was], [path, "fifo"]);
    await gone(p.writer);
    // This test's own writer of the FIFO, handed in: the outside reader, still there, gets the
    // restored writer's lines again.
    await restoreHandingIn(dir, path, O.WRONLY | O.NONBLOCK);
    // The dumped flags, not the handed-in ones.
    const flags = Deno.readTextFileSync(`/proc/${p.writer}/fdinfo/3`).match(/^flags:\s+(\d+)/m)!;
    assert.equal(parseInt(flags[1], 8) & O.NONBLOCK, 0);
    await checkViaPeer(p);
  } finally {
    await cleanup(p, base);
  }
});

Deno.test("outside peers: a pseudo-terminal whose session is outside, refused, declared by path, handed in", async () => {
  const p = await startPeer("tty");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  const dir = `${base}/img`;
  try {
    const [, session, path] = p.t.output().match(/^SESSION (\d+) (\S+)$/m)!;
    await assert.rejects(checkpoint(p.writer, dir), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `^fd 3 of process ${p.writer}, terminal ${escape(path)}: its session leader is ` +
            `peer_session ${session}, outside the dump;.*--external ${escape(path)}`,
        ),
      );
      return true;
    });
    await unharmed(p);

    await checkpoint(p.writer, dir, { external: [path] });
    await gone(p.writer);
    await restoreHandingIn(dir, path, O.RDWR | O.NOCTTY);
    await checkViaPeer(p); // through the terminal to its master, held by the reader
  } finally {
    await cleanup(p, base);
  }
});

Deno.test("outside peers: a pipe whose reader is gone is no outside peer (it comes back the same: EPIPE)", async () => {
  const p = await startPeer("pipe");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  try {
    await p.t.kill(); // the reader: the pipe's read end is closed everywhere now
    await checkpoint(p.writer, `${base}/img`, { leaveRunning: true });
    assert.deepEqual(await externalEntries(`${base}/img`), []);
  } finally {
    await cleanup(p, base);
  }
});

Deno.test("outside peers: a pty master whose slave is the terminal of a session outside is refused", async () => {
  const p = await startPeer("tty");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-peers-" });
  try {
    const [, session, path] = p.t.output().match(/^SESSION (\d+) (\S+)$/m)!;
    const index = path.slice("/dev/pts/".length);
    // The relay alone holds the master; the writer and the session's leader stay outside.
    await assert.rejects(checkpoint(p.t.pid, `${base}/img`, { single: true }), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        new RegExp(
          `fd 3 of process ${p.t.pid}, the master of pty ${index} \\(/dev/ptmx\\): its slave ` +
            `is the terminal of peer_session ${session}, outside the dump;`,
        ),
      );
      return true;
    });
    await unharmed(p);
  } finally {
    await cleanup(p, base);
  }
});
