import assert from "node:assert/strict";
import { fixture, spawnTarget, withTarget } from "./helpers.ts";

Deno.test("harness: a fixture starts detached and answers checks", async () => {
  const bin = await fixture("hello");
  await withTarget(await spawnTarget(bin, [], { ready: /READY/ }), async (t) => {
    assert.equal(await t.check(), "PASS");
    assert.equal(t.alive(), true);
  });
});
