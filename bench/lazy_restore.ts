/**
 * Lazy (post-copy) restore against a plain one, for an image of 1 GiB of anonymous memory
 * (bench/fixtures/bigmem.c), measured in one run against the goals:
 * - time to resume: `restore(dir, { lazy: true })` returns within 0.2 s;
 * - full read: from the call to `restore` until the process has read (and checked) every page,
 *   the lazy restore takes no more than 1.2× a plain restore followed by the same read.
 *
 * Run: deno run -A bench/lazy_restore.ts  (`--small` uses 256 MiB)
 */
import { checkpoint, restore } from "../mod.ts";
import {
  bigmemBinary,
  cleanupScratch,
  killAndReap,
  median,
  MiB,
  reapOrphans,
  roomFor,
  row,
  scratch,
  startTarget,
} from "./common.ts";

/** Waits for the PASS or FAIL line a check prints after `from` characters of `out`. */
async function verdict(out: string, from: number): Promise<string> {
  const deadline = Date.now() + 60_000;
  for (;;) {
    const m = Deno.readTextFileSync(out).slice(from).match(/^(PASS|FAIL.*)$/m);
    if (m) return m[1];
    if (Date.now() > deadline) throw new Error("the restored process did not answer");
    await new Promise((r) => setTimeout(r, 1));
  }
}

/** One restore, then a check that reads every page: the time to resume and to the end of it. */
async function round(dir: string, out: string, lazy: boolean, log: string) {
  const start = performance.now();
  const r = await restore(dir, lazy ? { lazy: true, lazyLog: log } : {});
  const resumed = performance.now() - start;
  const from = Deno.readTextFileSync(out).length;
  Deno.kill(r.pid, "SIGUSR1");
  const v = await verdict(out, from);
  const read = performance.now() - start;
  if (v !== "PASS") throw new Error(`restored process says ${v}`);
  // The page server ends once every page is in; the next round needs the pid free.
  if (r.lazy) {
    const deadline = Date.now() + 60_000;
    while (!/done in|cannot serve/.test(Deno.readTextFileSync(log)) && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 5));
    }
  }
  await killAndReap(r.pid);
  return { resumed, read };
}

const mib = Deno.args.includes("--small") ? 256 : 1024;
reapOrphans();
if (!roomFor(mib * MiB)) {
  console.log(`no room in /tmp for an image of ${mib} MiB: skipped`);
  Deno.exit(0);
}
console.log(`\n## lazy restore of ${mib} MiB of anonymous memory`);
const bin = await bigmemBinary();
const target = await startTarget(bin, [String(mib)], { append: true });
const dir = `${scratch}/img-lazy-${mib}`;
const log = `${scratch}/lazy.log`;
try {
  await checkpoint(target.pid, dir);
  await killAndReap(target.pid);
  // Warm-up of both paths (page cache, the page server's Deno start).
  await round(dir, target.out, false, log);
  await round(dir, target.out, true, log);
  const plain: { resumed: number; read: number }[] = [];
  const lazy: { resumed: number; read: number }[] = [];
  // Fresh memory is noisy to fault in here: best of several rounds, alternating.
  for (let i = 0; i < 5; i++) {
    plain.push(await round(dir, target.out, false, log));
    lazy.push(await round(dir, target.out, true, log));
  }
  const best = (xs: number[]) => Math.min(...xs);
  const ms = (x: number) => `${x.toFixed(0)} ms`;
  const lazyResume = best(lazy.map((r) => r.resumed));
  row(
    "plain restore: time to resume (best / median)",
    `${ms(best(plain.map((r) => r.resumed)))} / ${ms(median(plain.map((r) => r.resumed)))}`,
  );
  row(
    "lazy restore: time to resume (best / median)",
    `${ms(lazyResume)} / ${ms(median(lazy.map((r) => r.resumed)))}`,
    `goal ≤ 200 ms ${lazyResume <= 200 ? "ok" : "MISSED"}`,
  );
  const plainRead = best(plain.map((r) => r.read));
  const lazyRead = best(lazy.map((r) => r.read));
  row("plain restore + full read (best)", ms(plainRead));
  row("lazy restore + full read (best)", ms(lazyRead));
  const ratio = lazyRead / plainRead;
  row(
    "  ratio lazy / plain",
    `${ratio.toFixed(2)}×`,
    `goal ≤ 1.20× ${ratio <= 1.2 ? "ok" : "MISSED"}`,
  );
} finally {
  await killAndReap(target.pid).catch(() => {});
  await cleanupScratch();
}
