/**
 * Watch how the pages of a process change: one line per second with the bytes present in RAM,
 * swapped, file-backed, zero pages, and how much the present set grew or shrank.
 *
 *     deno run -A examples/watch-pages.ts PID [SECONDS]
 */
import { Process } from "../mod.ts";

const pid = Number(Deno.args[0]);
const seconds = Number(Deno.args[1] ?? 10);
if (!pid || !(seconds > 0)) {
  console.error("usage: deno run -A examples/watch-pages.ts PID [SECONDS]");
  Deno.exit(2);
}
const proc = await Process.open(pid);
const KiB = (n: number) => `${(n / 1024).toFixed(0)} KiB`.padStart(11);

let previous: number | null = null;
console.log("   time      present      swapped         file         zero       change");
for (let s = 0; s < seconds; s++) {
  if (s > 0) await new Promise((r) => setTimeout(r, 1000));
  if (!(await proc.isRunning())) {
    console.log(`process ${pid} is gone`);
    break;
  }
  let present = 0, swapped = 0, file = 0, zero = 0;
  for await (const r of proc.pages()) {
    const n = Number(r.end - r.start);
    if (r.present) present += n;
    if (r.swapped) swapped += n;
    if (r.file) file += n;
    if (r.zero) zero += n;
  }
  const change = previous === null
    ? ""
    : `${present >= previous ? "+" : "-"}${KiB(Math.abs(present - previous)).trim()}`;
  console.log(
    `${String(s).padStart(6)}s  ${KiB(present)}  ${KiB(swapped)}  ${KiB(file)}  ${KiB(zero)}  ${
      change.padStart(11)
    }`,
  );
  previous = present;
}
