/**
 * Trees of processes (issue 12): a parent with N children (each with a socketpair to the parent,
 * its own process group, every third its own session), dumped and restored from the CLI, as
 * `tardigrade dump` and `restore` run; time per process should stay flat as N grows. With CRIU
 * built (`CRIU=/path/to/criu`, or ../shared/peers/build-criu.sh's default /tmp/criu-4.2), the
 * same tree is dumped and restored by it in the same run, and the ratios are printed.
 *
 * Run: deno run -A bench/tree.ts [N …]   (default 10 100 400; `--short`: 10 40)
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
const sizes = Deno.args.filter((a) => /^\d+$/.test(a)).map(Number);
const ns = sizes.length ? sizes : short ? [10, 40] : [10, 100, 400];

/** The children of `pid` (every thread's). */
function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Ends a tree root first: its children, which it never reaps, are then reparented to us. */
async function endTree(pid: number): Promise<void> {
  const kids = childrenOf(pid);
  await killAndReap(pid);
  for (const k of kids) await killAndReap(k);
}

/** The pids of the tree are free again (dumped and ended, reaped by us as their subreaper). */
async function waitFree(pids: number[]): Promise<void> {
  for (const pid of pids) await killAndReap(pid);
}

interface Run {
  dump: number;
  restore: number;
}

async function once(bin: string, n: number, tool: Tool): Promise<Run> {
  const t = await startTarget(bin, [String(n)]);
  const pids = [t.pid, ...childrenOf(t.pid)];
  const dir = `${scratch}/${tool}-${n}`;
  try {
    const [dump, restore] = await dumpAndRestore(tool, t.pid, dir, () => waitFree(pids));
    return { dump: dump / 1000, restore: restore / 1000 };
  } finally {
    await endTree(t.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

reapOrphans();
const bin = await fixtureBinary("tree");
const criu = criuPath();
console.log(`trees: a parent and N children${criu ? `, beside CRIU (${criu})` : ""}`);
console.log(
  "N".padStart(5) + "  dump s  restore s  ms/process" +
    (criu ? "   criu dump  criu restore  ratio (tardigrade/criu)" : ""),
);
try {
  for (const n of ns) {
    const ours = await once(bin, n, "tardigrade");
    const per = ((ours.dump + ours.restore) * 1000) / (n + 1);
    let line = `${String(n).padStart(5)}  ${ours.dump.toFixed(2).padStart(6)}  ` +
      `${ours.restore.toFixed(2).padStart(9)}  ${per.toFixed(1).padStart(10)}`;
    if (criu) {
      const theirs = await once(bin, n, "criu");
      const ratio = (ours.dump + ours.restore) / (theirs.dump + theirs.restore);
      line +=
        `   ${theirs.dump.toFixed(2).padStart(9)}  ${theirs.restore.toFixed(2).padStart(12)}` +
        `  ${ratio.toFixed(2).padStart(6)}×`;
    }
    console.log(line);
  }
} finally {
  await cleanupScratch();
}
