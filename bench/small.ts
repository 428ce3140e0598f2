/**
 * A small process's dump and restore, and where their time goes (issue 12), measured in one run:
 * - from the command line, as a user runs it: `dump` and `restore` of a 1 MiB target (each
 *   restored process checks its memory), beside Deno's own start (an empty script) and the tool's
 *   (`main.ts --version`: Deno starting and loading the tool), so that what the verbs themselves
 *   cost shows; CRIU 4.2 on the same target when it is built, with tardigrade's ratio to it;
 * - from the SDK in this running script: `checkpoint` and `restore` of a `sleep`, the restore
 *   split by its stages (`RestorePolicy.restoreStage`).
 *
 * Run: deno run -A bench/small.ts [--rounds N]   (CRIU from `$CRIU` or
 * ../shared/peers/build-criu.sh's /tmp/criu-4.2; without it, its column says so)
 */
import { parseArgs } from "node:util";
import { checkpoint, restore, type RestoreStage } from "../mod.ts";
import {
  bigmemBinary,
  checkTarget,
  cleanupScratch,
  criuPath,
  dumpAndRestore,
  killAndReap,
  median,
  reapOrphans,
  repo,
  scratch,
  startTarget,
  timedCommand,
  type Tool,
} from "./common.ts";

const { values: flags } = parseArgs({
  args: Deno.args,
  // --small (from deno task bench) changes nothing: this bench is small.
  options: { rounds: { type: "string" }, small: { type: "boolean" } },
});
const rounds = Number(flags.rounds ?? 9);

/**
 * One dump and restore of a fresh 1 MiB target from `tool`'s command line, the restored one
 * checked; `measured` wraps the two commands.
 */
async function cliRound(
  tool: Tool,
  bin: string,
  measured: <T>(work: () => Promise<T>) => Promise<T>,
): Promise<[number, number]> {
  const t = await startTarget(bin, ["1"], { append: true });
  const dir = `${scratch}/${tool}-small`;
  try {
    const times = await measured(() => dumpAndRestore(tool, t.pid, dir));
    const check = await checkTarget(t);
    if (check !== "PASS") throw new Error(`${tool}: the restored process says ${check}`);
    return times;
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/**
 * CPU time (user and system, ms) of the children this process has waited for, from
 * /proc/self/stat: what the commands cost whatever else the machine runs (in 10 ms ticks, so
 * only a sum over rounds says much).
 */
function childCpuMs(): number {
  const fields = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
  // cutime and cstime, fields 16 and 17 of the line (the 14th and 15th after the comm).
  return (Number(fields[13]) + Number(fields[14])) * 10;
}

/** A `sleep` detached from this process (so it is not our child): its pid. */
async function startSleep(): Promise<number> {
  const sh = await new Deno.Command("sh", {
    args: ["-c", "sleep 1000 </dev/null >/dev/null 2>&1 & echo $!"],
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  // Until it runs `sleep` (not the shell's fork any more) and sleeps in it.
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const stat = await Deno.readTextFile(`/proc/${pid}/stat`).catch(() => "");
    const comm = await Deno.readTextFile(`/proc/${pid}/comm`).catch(() => "");
    if (comm.trim() === "sleep" && / S /.test(stat)) return pid;
    await new Promise((r) => setTimeout(r, 5));
  }
  throw new Error(`sleep ${pid} did not start`);
}

/** The restore's time from its call to each stage (told before it runs) and to its return. */
type Split = Map<string, number>;

/** One checkpoint and restore of a `sleep` in this script: [dump ms, restore ms, its split]. */
async function sdkRound(): Promise<[number, number, Split]> {
  const pid = await startSleep();
  const dir = `${scratch}/sdk-small`;
  try {
    let t = performance.now();
    await checkpoint(pid, dir); // it ends, as from the command line
    const dump = performance.now() - t;
    await killAndReap(pid);
    const split: Split = new Map();
    let last = "read";
    let since = t = performance.now();
    const restoreStage = (stage: RestoreStage) => {
      const now = performance.now();
      split.set(last, now - since);
      [last, since] = [stage, now];
    };
    await restore(dir, { policy: { restoreStage } });
    const end = performance.now();
    split.set(last, end - since);
    return [dump, end - t, split];
  } finally {
    await killAndReap(pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

const ms = (x: number) => `${x.toFixed(1).padStart(7)} ms`;
const ratio = (a: number, b: number) => `${(a / b).toFixed(2)}×`;

reapOrphans();
const bin = await bigmemBinary();
const criu = criuPath();
const empty = `${scratch}/empty.ts`;
Deno.writeTextFileSync(empty, "");
const deno = (...args: string[]) => timedCommand(Deno.execPath(), ["run", "-A", ...args]);
try {
  const cli = {
    empty: [] as number[],
    load: [] as number[],
    tardigrade: [[], []] as [number[], number[]],
    criu: [[], []] as [number[], number[]],
  };
  /** CPU ms summed over the rounds: of the two floors, and of each tool's dump and restore. */
  const cpu = { empty: 0, load: 0, tardigrade: 0, criu: 0 };
  const counted = async <T>(what: keyof typeof cpu, work: () => Promise<T>): Promise<T> => {
    const before = childCpuMs();
    const result = await work();
    cpu[what] += childCpuMs() - before;
    return result;
  };
  // Interleaved, so the load of a shared machine falls on every column alike.
  for (let i = 0; i < rounds; i++) {
    cli.empty.push(await counted("empty", () => deno(empty)));
    cli.load.push(await counted("load", () => deno(`${repo}main.ts`, "--version")));
    for (const tool of criu ? ["tardigrade", "criu"] as Tool[] : ["tardigrade"] as Tool[]) {
      const [d, r] = await cliRound(tool, bin, (work) => counted(tool, work));
      cli[tool][0].push(d);
      cli[tool][1].push(r);
    }
  }
  const perRound = (ms: number) => ms / rounds;
  const [emptyMs, loadMs] = [median(cli.empty), median(cli.load)];
  const [td, tr] = cli.tardigrade.map(median);
  console.log(`A small process (1 MiB), from the command line; medians of ${rounds}`);
  console.log(`  Deno's start (an empty script)            ${ms(emptyMs)}`);
  console.log(
    `  + loading the tool (main.ts --version)    ${ms(loadMs)}   (${ms(loadMs - emptyMs)})`,
  );
  console.log(
    `  dump                                      ${ms(td)}   (${ms(td - loadMs)} past loading)`,
  );
  console.log(
    `  restore                                   ${ms(tr)}   (${ms(tr - loadMs)} past loading)`,
  );
  if (criu) {
    const [cd, cr] = cli.criu.map(median);
    console.log(`  CRIU dump / restore                       ${ms(cd)} / ${ms(cr)}`);
    console.log(`  tardigrade / CRIU                         ${ratio(td, cd)} / ${ratio(tr, cr)}`);
  } else {
    console.log("  CRIU is not built (../shared/peers/build-criu.sh): no ratio");
  }
  console.log("CPU (user + system) of the commands, mean of the rounds");
  console.log(
    `  Deno's start / loading the tool           ${ms(perRound(cpu.empty))} / ${
      ms(perRound(cpu.load))
    }`,
  );
  console.log(`  tardigrade dump + restore                 ${ms(perRound(cpu.tardigrade))}`);
  if (criu) {
    console.log(`  CRIU dump + restore                       ${ms(perRound(cpu.criu))}`);
    console.log(`  tardigrade / CRIU                         ${ratio(cpu.tardigrade, cpu.criu)}`);
  }

  // Two rounds first, not counted: the functions the dump and the restore run are compiled then.
  for (let i = 0; i < 2; i++) await sdkRound();
  const sdk: [number, number, Split][] = [];
  for (let i = 0; i < rounds; i++) sdk.push(await sdkRound());
  console.log(`\nA sleep, from the SDK in a running script; medians of ${rounds}`);
  console.log(`  checkpoint                                ${ms(median(sdk.map((r) => r[0])))}`);
  console.log(`  restore                                   ${ms(median(sdk.map((r) => r[1])))}`);
  for (const stage of sdk[0][2].keys()) {
    const label = stage === "read" ? "reading the image, checks" : `stage ${stage}`;
    console.log(`    ${label.padEnd(38)} ${ms(median(sdk.map((r) => r[2].get(stage) ?? 0)))}`);
  }
} finally {
  await cleanupScratch();
}
