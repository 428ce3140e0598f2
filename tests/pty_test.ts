/**
 * Pseudo-terminals with both ends in the dump (lib/files/pty.ts), beyond the r_pty fixtures of
 * the restore suite: a dump that leaves the process running gives it back its queues, and real
 * programs that own a pty (`script`, a tmux server) run on after a restore.
 */
import assert from "node:assert/strict";
import { checkpoint, DumpError, restore } from "../mod.ts";
import {
  exists,
  fixture,
  isAlive,
  needs,
  notInstalled,
  onPath,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

Deno.test("pty: a dump that leaves r_pty running leaves both queues as they were", async () => {
  const t = await spawnTarget(await fixture("r_pty"), [], { ready: /^(READY|SETUP FAILED) /m });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-pty-" });
  try {
    assert.match(t.output(), /^READY /m, t.output());
    await checkpoint(t.pid, `${dir}/image`, { leaveRunning: true });
    // The check reads every queued byte and line: it finds them all, in order, after the dump.
    assert.equal(await t.check(), "PASS", t.output());
    await checkpoint(t.pid, `${dir}/again`, { leaveRunning: true });
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await t.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("pty: a master whose slave was never opened is refused, and left running", async () => {
  const t = await spawnTarget(await fixture("pty_unopened"), [], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-pty-" });
  try {
    assert.match(t.output(), /^READY /m, t.output());
    await assert.rejects(checkpoint(t.pid, `${dir}/image`), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        /fd 3 of \d+ \(\/dev\/ptmx\): the slave of pty \d+ was never opened/,
      );
      return true;
    });
    const status = Deno.readTextFileSync(`/proc/${t.pid}/status`);
    assert.match(status, /^TracerPid:\s+0$/m, "still traced");
    assert.match(status, /^State:\s+S/m, "not waiting as it was");
  } finally {
    await t.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

Deno.test("pty: a pty whose output is stopped (^S) is refused, and left stopped", async () => {
  const t = await spawnTarget(await fixture("pty_stopped"), [], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-pty-" });
  try {
    assert.match(t.output(), /^READY /m, t.output());
    assert.equal(await t.check(), "PASS", t.output());
    await assert.rejects(checkpoint(t.pid, `${dir}/image`), (err: Error) => {
      assert.ok(err instanceof DumpError, String(err));
      assert.match(
        err.message,
        /fd 3 of \d+ \(\/dev\/ptmx\): the output of pty \d+ does not run \(stopped by \^S/,
      );
      return true;
    });
    // Still stopped, and the byte the dump wrote to find out did not stay behind.
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await t.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

/** The numbers of the `tick N` lines in `file`, in order. */
function ticks(file: string): number[] {
  if (!exists(file)) return []; // script has not made it yet
  return [...Deno.readTextFileSync(file).matchAll(/^tick (\d+)\r$/gm)].map((m) => Number(m[1]));
}

Deno.test({
  ...needs(
    "pty: script and its shell come back and go on writing the typescript",
    notInstalled("script"),
  ),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-script-" });
    const log = `${dir}/typescript`;
    const loop = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    let t: Target | undefined;
    try {
      // script holds the master; the shell it runs leads a session on the slave.
      t = await spawnTarget(onPath("script")!, ["-q", "-f", "-c", loop, log]);
      await waitUntil(() => ticks(log).length >= 3, 10_000, "three ticks");
      await checkpoint(t.pid, `${dir}/image`);
      assert.ok(!isAlive(t.pid));
      const atDump = ticks(log).length;
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, t.pid);
      await waitUntil(() => ticks(log).length >= atDump + 5, 10_000, "five more ticks");
      // Every line through the pty again: none lost, none twice.
      const seen = ticks(log);
      assert.deepEqual(seen, seen.map((_, i) => i + 1));
    } finally {
      await t?.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});

async function tmux(sock: string, ...args: string[]): Promise<string> {
  const out = await new Deno.Command("tmux", { args: ["-S", sock, ...args] }).output();
  const text = new TextDecoder().decode(out.stdout);
  if (!out.success) {
    throw new Error(`tmux ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`);
  }
  return text;
}

Deno.test({
  ...needs(
    "pty: a tmux server and its shell come back; clients still drive it",
    notInstalled("tmux"),
  ),
  async fn() {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tmux-" });
    const sock = `${dir}/sock`;
    let server = 0;
    try {
      await tmux(sock, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "80", "-y", "24");
      server = Number((await tmux(sock, "display", "-p", "#{pid}")).trim());
      const pane = async () => await tmux(sock, "capture-pane", "-p", "-t", "t");
      await tmux(sock, "send-keys", "-t", "t", "echo before-$((6*7))", "Enter");
      await waitUntil(async () => (await pane()).includes("before-42"), 10_000, "the shell");
      const shellTty = Number((await tmux(sock, "display", "-p", "#{pane_pid}")).trim());
      const ttyBefore = Deno.readLinkSync(`/proc/${shellTty}/fd/0`);

      await checkpoint(server, `${dir}/image`);
      assert.ok(!isAlive(server));
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, server);

      // The pane's history is there, and its shell reads and answers through the pty.
      assert.match(await pane(), /before-42/);
      await tmux(sock, "send-keys", "-t", "t", "echo after-$((6*7)) $(tty)", "Enter");
      await waitUntil(async () => (await pane()).includes("after-42"), 10_000, "the shell");
      assert.match(await pane(), new RegExp(`after-42 ${ttyBefore}`));
      await tmux(sock, "resize-window", "-t", "t", "-x", "100", "-y", "30");
      await tmux(sock, "send-keys", "-t", "t", "stty size", "Enter");
      await waitUntil(async () => (await pane()).includes("30 100"), 10_000, "the new size");
    } finally {
      await tmux(sock, "kill-server").catch(() => {});
      if (server && isAlive(server)) Deno.kill(server, "SIGKILL");
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
});
