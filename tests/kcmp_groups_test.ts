import assert from "node:assert/strict";
import { KCMP } from "../ffi/mod.ts";
import { kcmpGroups } from "../lib/inspect/kcmp_groups.ts";
import { killAndReap, spawnTarget } from "./helpers.ts";

Deno.test("kcmpGroups: processes share a descriptor table exactly when they have one number", async () => {
  // Two sleeps (each its own table and fs context) between this process, listed three times.
  const a = await spawnTarget("/bin/sleep", ["60"]);
  const b = await spawnTarget("/bin/sleep", ["60"]);
  try {
    const pids = [Deno.pid, a.pid, Deno.pid, b.pid, Deno.pid];
    for (const type of [KCMP.FILES, KCMP.FS]) {
      const groups = kcmpGroups(pids, type);
      assert.deepEqual(groups, [groups[0], groups[1], groups[0], groups[3], groups[0]]);
      assert.equal(new Set(groups).size, 3);
      assert.equal(groups[0], 0, "numbered by first appearance");
    }
  } finally {
    await killAndReap(a.pid);
    await killAndReap(b.pid);
  }
});
