/**
 * Incremental dumps: a second dump of the 256 MiB target after 1 % of its pages changed, in full
 * and with `parent` (the first dump), both with leaveRunning and fsync at commit. Reports the
 * time and the bytes written of each and their ratio. Each round starts from a fresh full dump,
 * so the child always differs from its parent by 1 % of the pages.
 *
 * Run: deno run -A bench/incremental.ts
 */
import { checkpoint } from "../mod.ts";
import {
  bigmemBinary,
  cleanupScratch,
  killAndReap,
  median,
  MiB,
  rawVm,
  reapOrphans,
  row,
  scratch,
  startTarget,
} from "./common.ts";

const SIZE_MIB = 256;
const PAGE = 4096;
const ROUNDS = 5;

/** Writes one word into 1 % of the target's pages, spread over the whole region. */
function changePages(pid: number, addr: bigint, round: number): number {
  const pages = SIZE_MIB * MiB / PAGE;
  const changed = Math.round(pages / 100);
  const word = new Uint8Array(8).fill(round + 1);
  for (let k = 0; k < changed; k++) {
    const page = (k * 7919 + round * 104729) % pages;
    rawVm("process_vm_writev", pid, word, addr + BigInt(page * PAGE));
  }
  return changed;
}

async function timed(pid: number, dir: string, parent?: string) {
  const t = performance.now();
  const r = await checkpoint(pid, dir, { leaveRunning: true, parent });
  return { ms: performance.now() - t, pageBytes: r.pageBytes };
}

reapOrphans();
const target = await startTarget(await bigmemBinary(), [String(SIZE_MIB)]);
try {
  console.log(`\n## second dump of ${SIZE_MIB} MiB with 1 % of the pages changed`);
  const full: { ms: number; pageBytes: number }[] = [];
  const incremental: { ms: number; pageBytes: number }[] = [];
  let changed = 0;
  await timed(target.pid, `${scratch}/warm`); // warm-up: buffers, page cache
  await Deno.remove(`${scratch}/warm`, { recursive: true });
  for (let round = 0; round < ROUNDS; round++) {
    const parent = `${scratch}/parent`;
    await timed(target.pid, parent);
    changed = changePages(target.pid, target.addr, round);
    // Alternate the order, so neither always runs on a warmer page cache.
    const runs = [
      async () => full.push(await timed(target.pid, `${scratch}/full`)),
      async () => incremental.push(await timed(target.pid, `${scratch}/child`, parent)),
    ];
    for (const run of round % 2 ? runs.reverse() : runs) await run();
    for (const d of ["full", "child", "parent"]) {
      await Deno.remove(`${scratch}/${d}`, { recursive: true });
    }
  }
  const best = (xs: { ms: number }[]) => Math.min(...xs.map((x) => x.ms));
  const mid = (xs: { ms: number }[]) => median(xs.map((x) => x.ms));
  row("pages changed", `${changed} of ${SIZE_MIB * MiB / PAGE}`);
  row(
    "full dump (best / median)",
    `${best(full).toFixed(0)} / ${mid(full).toFixed(0)} ms`,
    `${(full[0].pageBytes / MiB).toFixed(1)} MiB written`,
  );
  row(
    "with --parent (best / median)",
    `${best(incremental).toFixed(0)} / ${mid(incremental).toFixed(0)} ms`,
    `${(incremental[0].pageBytes / MiB).toFixed(1)} MiB written`,
  );
  row(
    "  time ratio full / with parent",
    `${(best(full) / best(incremental)).toFixed(1)}×`,
    `bytes ${(full[0].pageBytes / incremental[0].pageBytes).toFixed(0)}× fewer`,
  );
} finally {
  await killAndReap(target.pid);
  await cleanupScratch();
}
