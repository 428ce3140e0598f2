/**
 * One process with very many of one thing (issue 12): 10,000 descriptors, 50,000 mappings, 500
 * threads; dumped and restored from the command line, beside CRIU when it is built (`$CRIU` or
 * ../shared/peers/build-criu.sh's /tmp/criu-4.2), with tardigrade's time over CRIU's.
 *
 * Run: deno run -A bench/scale.ts [--short]   (`--short`: a tenth of each)
 */
import {
  cleanupScratch,
  criuPath,
  dumpAndRestore,
  fixtureBinary,
  killAndReap,
  reapOrphans,
  scratch,
  startTarget,
  type Tool,
} from "./common.ts";

const short = Deno.args.includes("--short");
const criu = criuPath();

/** Dump and restore of a fresh target by `tool`: [dump ms, restore ms]. */
async function once(tool: Tool, bin: string, args: string[]) {
  const t = await startTarget(bin, args);
  const dir = `${scratch}/${tool}-${args.join("-")}`;
  try {
    return await dumpAndRestore(tool, t.pid, dir);
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

reapOrphans();
const bin = await fixtureBinary("many", ["-lpthread"]);
const scale = short ? 10 : 1;
const cases = [["fds", 10_000], ["maps", 25_000], ["threads", 500]] as const;
console.log(`one process with many of one thing${criu ? `, beside CRIU (${criu})` : ""}`);
const ms = (x: number) => `${x.toFixed(0).padStart(6)} ms`;
try {
  for (const [what, n] of cases) {
    const args = [what, String(Math.floor(n / scale))];
    const [d, r] = await once("tardigrade", bin, args);
    let line = `${args.join(" ").padEnd(14)} dump ${ms(d)}  restore ${ms(r)}`;
    if (criu) {
      const [cd, cr] = await once("criu", bin, args);
      line += `   criu dump ${ms(cd)}  restore ${ms(cr)}   ratio ${(d / cd).toFixed(1)} / ` +
        `${(r / cr).toFixed(1)}×`;
    }
    console.log(line);
  }
} finally {
  await cleanupScratch();
}
