/** Ordinary programs, not fixtures, through a dump and a restore. */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import { isAlive, killAndReap, spawnTarget } from "./helpers.ts";

Deno.test("a `sleep` (the restore stub's own program) restores and sleeps on", async () => {
  const t = await spawnTarget("/bin/sleep", ["1000"]);
  const dir = `${Deno.makeTempDirSync({ prefix: "tardigrade-ord-" })}/img`;
  try {
    // Wait for the shell to exec sleep.
    for (let i = 0; i < 200 && !Deno.readLinkSync(`/proc/${t.pid}/exe`).endsWith("sleep"); i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    const exe = Deno.realPathSync(`/proc/${t.pid}/exe`);
    await checkpoint(t.pid, { dir });
    await killAndReap(t.pid);
    const r = await restore(dir);
    assert.equal(r.pid, t.pid);
    assert.ok(isAlive(t.pid));
    assert.equal(Deno.realPathSync(`/proc/${t.pid}/exe`), exe);
  } finally {
    await t.kill();
    Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
  }
});
