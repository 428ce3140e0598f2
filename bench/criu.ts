/**
 * tardigrade beside CRIU (issue 12), from their command lines as a user runs them, on the same
 * targets in the same run: a small process (1 MiB of touched memory) and 256 MiB (`--big`: and
 * 2 GiB). Each round dumps (the process ends), restores and checks the restored process's
 * memory; a round whose check fails stops the bench. Prints medians and tardigrade's time over
 * CRIU's (below 1: faster). tardigrade syncs its image to disk at commit; CRIU does not.
 *
 * Run: deno run -A bench/criu.ts [--big] [--rounds N]   (CRIU from `$CRIU` or
 * ../shared/peers/build-criu.sh's /tmp/criu-4.2; without it, a line says so and it stops)
 */
import { parseArgs } from "node:util";
import {
  bigmemBinary,
  checkTarget,
  cleanupScratch,
  criuPath,
  dumpAndRestore,
  killAndReap,
  median,
  reapOrphans,
  scratch,
  startTarget,
  type Tool,
} from "./common.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  // --small (from deno task bench) is this bench's default.
  options: { big: { type: "boolean" }, small: { type: "boolean" }, rounds: { type: "string" } },
});
const criu = criuPath();
if (!criu) {
  console.log("CRIU is not built (../shared/peers/build-criu.sh): nothing to compare with");
  Deno.exit(0);
}

/** One dump and restore of a fresh `mib` MiB target; the restored one checked, then ended. */
async function round(tool: Tool, bin: string, mib: number): Promise<[number, number]> {
  const t = await startTarget(bin, [String(mib)], { append: true });
  const dir = `${scratch}/${tool}-${mib}`;
  try {
    const [dump, restore] = await dumpAndRestore(tool, t.pid, dir);
    const check = await checkTarget(t);
    if (check !== "PASS") throw new Error(`${tool}: the restored ${mib} MiB process says ${check}`);
    return [dump, restore];
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const fmt = (ms: number) => `${ms.toFixed(0).padStart(7)} ms`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2).padStart(6)}×`;

reapOrphans();
const bin = await bigmemBinary();
const cases = [{ mib: 1, rounds: 7 }, { mib: 256, rounds: 3 }];
if (flags.big) cases.push({ mib: 2048, rounds: 2 });
console.log(`tardigrade beside CRIU (${criu}), from the command line; medians`);
console.log(
  "  size".padEnd(10) + "dump: tardigrade       criu   ratio" +
    "   restore: tardigrade       criu   ratio",
);
try {
  for (const c of cases) {
    const rounds = Number(flags.rounds ?? c.rounds);
    const times: Record<Tool, [number[], number[]]> = {
      tardigrade: [[], []],
      criu: [[], []],
    };
    for (let i = 0; i < rounds; i++) {
      for (const tool of ["tardigrade", "criu"] as Tool[]) {
        const [d, r] = await round(tool, bin, c.mib);
        times[tool][0].push(d);
        times[tool][1].push(r);
      }
    }
    const [td, tr] = times.tardigrade.map(median);
    const [cd, cr] = times.criu.map(median);
    console.log(
      `  ${c.mib} MiB`.padEnd(10) + `      ${fmt(td)} ${fmt(cd)} ${ratio(td, cd)}` +
        `              ${fmt(tr)} ${fmt(cr)} ${ratio(tr, cr)}`,
    );
  }
} finally {
  await cleanupScratch();
}
