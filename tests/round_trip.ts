/** What the tests of real programs share: a scratch directory, and a dump and restore by pid. */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import { isAlive, killAndReap } from "./helpers.ts";

/** A scratch directory for one test (`img` inside it for the image), removed at the end. */
export function scratch(prefix: string): { dir: string; img: string; [Symbol.dispose](): void } {
  const dir = Deno.makeTempDirSync({ prefix });
  return {
    dir,
    img: `${dir}/img`,
    [Symbol.dispose]: () => Deno.removeSync(dir, { recursive: true }),
  };
}

/** Dumps `pid` (which ends it), makes sure it is gone, restores it: the same pid runs again. */
export async function dumpAndRestore(pid: number, img: string): Promise<void> {
  await checkpoint(pid, img);
  await killAndReap(pid);
  const r = await restore(img);
  assert.equal(r.pid, pid);
  assert.ok(isAlive(pid));
}
