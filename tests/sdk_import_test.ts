/** mod.ts imported by a script outside the checkout, as a user's research script would: no
 * deno.json of the project's, no import map, its dependencies named in its own source. */
import assert from "node:assert/strict";
import { fixture, spawnTarget } from "./helpers.ts";

const modUrl = new URL("../mod.ts", import.meta.url).href;

/** Runs `deno run -A script.ts ...args` in `cwd`, a folder with no configuration of its own. */
async function runOutside(cwd: string, args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "script.ts", ...args],
    cwd,
    env: { NO_COLOR: "1" },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test({
  name: "sdk: a script in a folder outside the checkout dumps and restores through mod.ts",
  async fn() {
    const folder = Deno.makeTempDirSync({ prefix: "tardigrade-user-" });
    Deno.writeTextFileSync(
      `${folder}/script.ts`,
      `import { checkpoint, Process, restore } from "${modUrl}";
const [verb, dir, pid] = Deno.args;
if (verb === "dump") {
  const p = await Process.open(Number(pid));
  const res = await checkpoint(p.pid, dir);
  console.log(\`dumped \${await p.comm()} \${res.processes.length}\`);
} else {
  console.log(\`restored \${(await restore(dir)).pid}\`);
}
`,
    );
    const t = await spawnTarget(await fixture("hello"), [], { ready: /READY/ });
    const dir = `${folder}/img`;
    try {
      const d = await runOutside(folder, ["dump", dir, String(t.pid)]);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stdout, /^dumped hello 1\n/);
      await t.kill(); // reap the zombie, so the pid is free again
      const r = await runOutside(folder, ["restore", dir]);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `restored ${t.pid}\n`);
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
      Deno.removeSync(folder, { recursive: true });
    }
  },
});
