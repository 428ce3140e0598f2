/** mod.ts imported by a script outside the checkout, as a user's research script would: no
 * deno.json of the project's, no import map, its dependencies named in its own source. */
import assert from "node:assert/strict";
import { fixture, runDeno, spawnTarget } from "./helpers.ts";

const modUrl = new URL("../mod.ts", import.meta.url).href;

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
      const d = await runDeno(["script.ts", "dump", dir, String(t.pid)], { NO_COLOR: "1" }, folder);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stdout, /^dumped hello 1\n/);
      await t.kill(); // reap the zombie, so the pid is free again
      const r = await runDeno(["script.ts", "restore", dir], { NO_COLOR: "1" }, folder);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout, `restored ${t.pid}\n`);
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
      Deno.removeSync(folder, { recursive: true });
    }
  },
});
