/** Every example run as a subprocess against a real fixture. */
import assert from "node:assert/strict";
import { WAIT, waitpid } from "../ffi/mod.ts";
import { fixture, killAndReap, reaping, runDeno, spawnTarget, type Target } from "./helpers.ts";

const root = new URL("../", import.meta.url).pathname;

const run = runDeno;

const NEEDLE = "tardigrade-needle-4711";

async function hello(): Promise<Target> {
  return await spawnTarget(await fixture("hello"), [], {
    ready: /READY/,
    env: { EXAMPLE_MARK: NEEDLE },
  });
}

function tempImage(): string {
  return `${Deno.makeTempDirSync({ prefix: "tardigrade-ex-" })}/img`;
}

Deno.test({
  name: "examples: dump.ts then restore.ts",
  async fn() {
    const t = await hello();
    const dir = tempImage();
    try {
      const d = await run(["examples/dump.ts", String(t.pid), dir]);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stdout, new RegExp(`^dumped ${t.pid} into `));
      await t.kill(); // reap the zombie
      const r = await run(["examples/restore.ts", dir]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^restored pid ${t.pid} `));
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
      Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
    }
  },
});

Deno.test({
  name: "examples: migrate.ts shows the process before and after",
  async fn() {
    const t = await hello();
    try {
      const r = await reaping(t.pid, () => run(["examples/migrate.ts", String(t.pid)]));
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, new RegExp(`^before: pid ${t.pid} hello state S`, "m"));
      assert.match(r.stdout, /process ended: true/);
      // Just restored, it may still be on its way back into its sleep: running or sleeping.
      assert.match(r.stdout, new RegExp(`^after:  pid ${t.pid} hello state [RS]`, "m"));
      assert.match(r.stdout, /\| READY/);
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
    }
  },
});

Deno.test({
  name: "examples: clone.ts restores two copies beside the running original",
  async fn() {
    const t = await hello();
    const hosts: number[] = [];
    try {
      const r = await run(["examples/clone.ts", String(t.pid), "2"]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stdout, /the original runs on/);
      for (
        const m of r.stdout.matchAll(/^copy \d: host pid (\d+) \(pid (\d+) in its namespace\)/gm)
      ) {
        hosts.push(Number(m[1]));
        assert.equal(Number(m[2]), t.pid);
        const nspid = Deno.readTextFileSync(`/proc/${m[1]}/status`).match(/^NSpid:\s+(.*)$/m)?.[1];
        assert.equal(nspid, `${m[1]}\t${t.pid}`);
      }
      assert.equal(hosts.length, 2, r.stdout);
      assert.equal(await t.check(), "PASS");
    } finally {
      // Killing a copy's root ends its namespace (its init goes when it has no children left).
      for (const pid of hosts) await killAndReap(pid);
      await t.kill();
    }
  },
});

Deno.test("examples: find-string.ts finds a string in the environment on the stack", async () => {
  const t = await hello();
  try {
    const r = await run(["examples/find-string.ts", String(t.pid), NEEDLE]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^0x[0-9a-f]+ {2}rw-p {2}stack {2}\[stack\]$/m);
    assert.match(r.stdout, /^[1-9]\d* match(es)? of "tardigrade-needle-4711"/m);
    const none = await run(["examples/find-string.ts", String(t.pid), "no-such-string-98765"]);
    // The search string itself is not in the target: zero matches.
    assert.match(none.stdout, /^0 matches/m);
  } finally {
    await t.kill();
  }
});

Deno.test("examples: watch-pages.ts prints a line per second", async () => {
  const t = await hello();
  try {
    const r = await run(["examples/watch-pages.ts", String(t.pid), "2"]);
    assert.equal(r.code, 0, r.stderr);
    const lines = r.stdout.trim().split("\n");
    assert.match(lines[0], /time\s+present\s+swapped\s+file\s+zero\s+change/);
    assert.match(lines[1], /^\s+0s\s+\d+ KiB/);
    assert.match(lines[2], /^\s+1s\s+\d+ KiB\s+.*[+-]\d+ KiB$/);
  } finally {
    await t.kill();
  }
});

Deno.test("examples: the three policies load and dump with the CLI", async () => {
  const t = await hello();
  try {
    for (
      const [name, env] of [
        ["skip-cache", { TARDIGRADE_CACHE_MIN: "4096" }],
        ["redact", { TARDIGRADE_REDACT: NEEDLE }],
        ["reopen-log", {}],
      ] as [string, Record<string, string>][]
    ) {
      const dir = tempImage();
      try {
        const d = await run([
          "main.ts",
          "dump",
          String(t.pid),
          dir,
          "--leave-running",
          "--policy",
          `examples/policies/${name}.ts`,
        ], env);
        assert.equal(d.code, 0, `${name}: ${d.stderr}`);
        const i = await run(["main.ts", "inspect", dir, "--json"]);
        const maps = JSON.parse(i.stdout).processes[0].mappings as {
          kind: string;
          size: number;
          pageBytes: number;
        }[];
        if (name === "skip-cache") {
          for (const m of maps.filter((m) => m.kind === "anonymous")) assert.equal(m.pageBytes, 0);
          assert.ok(maps.find((m) => m.kind === "heap")!.pageBytes > 0);
        }
        assert.equal(await t.check(), "PASS");
      } finally {
        Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
      }
    }
  } finally {
    await t.kill();
  }
});

/** Reaps zombies of ours other than `keep` (orphans reparented to this subreaper). */
function reapOrphans(keep: number): void {
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name) || Number(e.name) === keep) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const [state, ppid] = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (state === "Z" && Number(ppid) === Deno.pid) waitpid(Number(e.name), WAIT.WNOHANG);
    } catch { /* gone */ }
  }
}

Deno.test({
  name: "examples: demo.ts counts on after the restore",
  async fn() {
    // The demo's counter is reparented to this test process (a subreaper) when the demo's shell
    // exits: reap it when the dump ends it, so the restore finds its pid free.
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "examples/demo.ts"],
      cwd: root,
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const timer = setInterval(() => reapOrphans(child.pid), 20);
    const out = await child.output().finally(() => clearInterval(timer));
    const r = {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
    assert.equal(r.code, 0, r.stdout + r.stderr);
    assert.match(r.stdout, /== done: the restored process went on from count \d+/);
  },
});
