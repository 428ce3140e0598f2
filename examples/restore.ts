/**
 * Restore the process of an image directory and print its pid.
 *
 *     deno run -A examples/restore.ts DIR
 */
import { restore } from "../mod.ts";

const [dir] = Deno.args;
if (!dir) {
  console.error("usage: deno run -A examples/restore.ts DIR");
  Deno.exit(2);
}
const r = await restore(dir);
for (const w of r.warnings) console.error(`warning: ${w}`);
console.log(
  `restored pid ${r.pid} (${r.threads} thread${r.threads === 1 ? "" : "s"}, ` +
    `${r.pageBytes} bytes of pages)`,
);
