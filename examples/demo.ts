/**
 * The README demo (`deno task demo`): compile a counting program, start it detached, dump it
 * (which ends it), restore it, and watch it count on from where it stopped.
 *
 *     deno run -A examples/demo.ts
 */
import { checkpoint, restore } from "../mod.ts";

const here = new URL(".", import.meta.url).pathname;
const work = await Deno.makeTempDir({ prefix: "tardigrade-demo-" });
const bin = `${work}/counter`;
const out = `${work}/counter.out`;
const step = (s: string) => console.log(`\n== ${s}`);
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const lastLine = () => Deno.readTextFileSync(out).trimEnd().split("\n").at(-1) ?? "";

step(`compile examples/sample/counter.c`);
const cc = await new Deno.Command("cc", { args: ["-O1", "-o", bin, `${here}sample/counter.c`] })
  .output();
if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));

step("start it detached, stdout to a file");
// Through a shell, so the counter is not a child Deno would reap.
const sh = await new Deno.Command("sh", {
  args: ["-c", `'${bin}' >'${out}' 2>&1 </dev/null & echo $!`],
  stdout: "piped",
}).output();
const pid = Number(new TextDecoder().decode(sh.stdout).trim());
await sleep(1100);
console.log(`pid ${pid} is counting: ${lastLine()}`);

step("dump it (this ends the process)");
const dir = `${work}/image`;
const d = await checkpoint(pid, dir);
const atDump = lastLine();
console.log(
  `image in ${dir}: ${d.pageBytes} bytes of pages, frozen ${d.frozenMs.toFixed(1)} ms; ` +
    `last line before the dump: ${atDump}`,
);
await sleep(1000);
console.log(`one second later the file still ends with: ${lastLine()}`);

step("restore it");
const r = await restore(dir);
console.log(`restored as pid ${r.pid}`);
await sleep(1100);
const lines = Deno.readTextFileSync(out).trimEnd().split("\n");
const i = lines.lastIndexOf(atDump);
console.log(
  `it counts on from where it was:\n${lines.slice(i, i + 6).map((l) => `  ${l}`).join("\n")}`,
);

const first = Number(atDump.match(/count (\d+)/)?.[1]);
const next = Number(lines[i + 1]?.match(/count (\d+)/)?.[1]);
Deno.kill(r.pid, "SIGKILL");
await Deno.remove(work, { recursive: true });
if (next !== first + 1) {
  console.error(`demo failed: expected count ${first + 1} after the restore, got ${next}`);
  Deno.exit(1);
}
step("done: the restored process went on from count " + next);
