/**
 * Search the memory of a process, or of the processes in an image, for a string and print every
 * address with the mapping it lies in. The same script for both: `openTarget` gives
 * `ProcessView`s, `searchMemory` streams through their pages.
 *
 *     deno run -A examples/find-string.ts PID|DIR STRING
 */
import { openTarget, searchMemory } from "../mod.ts";

const [target, needleText] = Deno.args;
if (!target || !needleText) {
  console.error("usage: deno run -A examples/find-string.ts PID|DIR STRING");
  Deno.exit(2);
}
using opened = await openTarget(target);
const needle = new TextEncoder().encode(needleText);
let hits = 0;
for (const proc of opened.processes) {
  for await (const { address, mapping: m } of searchMemory(proc, needle)) {
    hits++;
    console.log(`0x${address.toString(16)}  ${m.perms}  ${m.kind}  ${m.path ?? ""}`);
  }
}
const where = opened.image ? `the image ${target}` : `pid ${target}`;
console.log(`${hits} match${hits === 1 ? "" : "es"} of ${JSON.stringify(needleText)} in ${where}`);
