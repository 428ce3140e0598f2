/**
 * "Migrate" a process through an image: dump it to a temporary directory (which ends it),
 * restore it, and show that it carries on. Prints the tail of its stdout (when that is a file)
 * and its state before and after.
 *
 *     deno run -A examples/migrate.ts PID
 */
import { checkpoint, Process, restore } from "../mod.ts";

const pid = Number(Deno.args[0]);
if (!pid) {
  console.error("usage: deno run -A examples/migrate.ts PID");
  Deno.exit(2);
}

/** The process's stdout file, if it writes to a regular file. */
async function stdoutFile(p: Process): Promise<string | null> {
  for await (const fd of p.fds()) if (fd.fd === 1 && fd.target.startsWith("/")) return fd.target;
  return null;
}

function tail(path: string | null, lines = 3): string {
  if (!path) return "  (stdout is not a file)";
  const all = Deno.readTextFileSync(path).trimEnd().split("\n");
  return all.slice(-lines).map((l) => `  | ${l}`).join("\n");
}

async function describe(p: Process): Promise<string> {
  const s = await p.stat();
  const threads = `${s.numThreads} thread${s.numThreads === 1 ? "" : "s"}`;
  return `pid ${p.pid} ${s.comm} state ${s.state}, ${threads}, ` +
    `${Number(s.rss) * 4} KiB resident`;
}

const before = await Process.open(pid);
const out = await stdoutFile(before);
console.log(`before: ${await describe(before)}\n${tail(out)}`);

const dir = `${await Deno.makeTempDir({ prefix: "tardigrade-migrate-" })}/image`;
const dumped = await checkpoint(pid, dir);
console.log(`dumped ${dumped.pageBytes} bytes into ${dir}; process ended: ${dumped.killed}`);

const restored = await restore(dir);
const after = await Process.open(restored.pid);
await new Promise((r) => setTimeout(r, 1500)); // let it run on a little
console.log(`after:  ${await describe(after)}\n${tail(out)}`);
await Deno.remove(dir.replace(/\/image$/, ""), { recursive: true });
