/**
 * Checkpoint a process into an image directory; the process ends once the image is complete.
 *
 *     deno run -A examples/dump.ts PID DIR
 */
import { checkpoint } from "../mod.ts";

const [pid, dir] = Deno.args;
if (!/^\d+$/.test(pid ?? "") || !dir) {
  console.error("usage: deno run -A examples/dump.ts PID DIR");
  Deno.exit(2);
}
const r = await checkpoint(Number(pid), dir);
console.log(
  `dumped ${r.pid} into ${r.dir}: ${r.threads} thread${r.threads === 1 ? "" : "s"}, ` +
    `${r.mappings} mappings, ${r.fds} fds, ` +
    `${r.pageBytes} bytes of pages, frozen ${r.frozenMs.toFixed(1)} ms`,
);
