/**
 * Live migration's downtime (issue 16), on one machine: a process of 1 GiB (256 MiB with
 * `--short`) that rewrites 5% of its memory a second measures the largest gap in its own loop
 * while it is migrated (`migrate --lazy` and `migrate --post-copy`, twice each in turns, to a
 * `serve` over loopback), then while it is dumped and
 * restored (CRIU's only way on this kernel). Prints the gaps, the bytes sent against the memory
 * size and the time to complete, and for scale the largest gap the process saw in a second of
 * its own before (what the machine's load alone does to it) and the load average. With `--runs N`
 * each mode runs N times (2 by default) and the median is printed too; with `--timeline`, each
 * migration's moments (both sides' marks, lib/timeline.ts) from the process's last timestamp before
 * its largest gap to its first after.
 *
 * Run: deno run -A bench/migrate.ts [--short] [--runs N] [--timeline] [--modes M1,M2…]
 */
import {
  type BenchTarget,
  cleanupScratch,
  fixtureBinary,
  MiB,
  reapOrphans,
  repo,
  scratch,
  startTarget,
} from "./common.ts";
import { WAIT, waitpid } from "../ffi/mod.ts";

const mib = Deno.args.includes("--short") ? 256 : 1024;
const runsArg = Deno.args.indexOf("--runs");
const runsPerMode = runsArg >= 0 ? Number(Deno.args[runsArg + 1]) : 2;
const showTimeline = Deno.args.includes("--timeline");
const modesArg = Deno.args.indexOf("--modes");
/** The ways to migrate, in turns: e.g. `--modes "--lazy,--post-copy,--post-copy --no-warm-up"`. */
const modes = modesArg >= 0 ? Deno.args[modesArg + 1].split(",") : ["--lazy", "--post-copy"];
const key = `${scratch}/key`;
Deno.writeFileSync(key, crypto.getRandomValues(new Uint8Array(32)));

/** Runs the CLI; returns its stdout, or throws with its stderr. */
async function tool(...args: string[]): Promise<string> {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", ...args],
    cwd: repo,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!r.success) throw new Error(new TextDecoder().decode(r.stderr).trim());
  return new TextDecoder().decode(r.stdout);
}

/** The target's largest gap since the last ask, in ms, and its last timestamp before it. */
async function gapAt(t: BenchTarget): Promise<{ ms: number; at: number }> {
  const from = Deno.readTextFileSync(t.out).length;
  Deno.kill(t.pid, "SIGUSR1");
  for (let i = 0; i < 500; i++) {
    const m = Deno.readTextFileSync(t.out).slice(from).match(/GAP ([\d.]+) TURNS \d+ AT ([\d.]+)/);
    if (m) return { ms: Number(m[1]), at: Number(m[2]) };
    await new Promise((r) => setTimeout(r, 10));
  }
  throw new Error("the writer did not answer");
}

/** The target's largest gap since the last ask, in ms. */
async function gap(t: BenchTarget): Promise<number> {
  return (await gapAt(t)).ms;
}

/** A migration's marks (both sides, CLOCK_MONOTONIC) from the process's last timestamp on. */
function timelineOf(
  out: { timeline: { sender: [string, number][]; receiver: [string, number][] } },
  from: number,
  gapMs: number,
): string {
  const marks = [...out.timeline.sender, ...out.timeline.receiver]
    .filter(([, at]) => at >= from - 50 && at <= from + gapMs + 50)
    .sort((a, b) => a[1] - b[1]);
  const lines = [`  ${"0.0".padStart(7)}  the process's last timestamp`];
  let last = from;
  for (const [what, at] of marks) {
    lines.push(`  ${(at - from).toFixed(1).padStart(7)}  (+${(at - last).toFixed(1)}) ${what}`);
    last = at;
  }
  lines.push(`  ${gapMs.toFixed(1).padStart(7)}  its first timestamp after`);
  return lines.join("\n");
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** The text of `path`, or "" while it is not there. */
function readOr(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Waits until `pid` is free (reaped by whoever adopted it). */
async function free(pid: number): Promise<void> {
  for (let i = 0; i < 1000; i++) {
    try {
      Deno.statSync(`/proc/${pid}`);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

const bin = await fixtureBinary("migrate_writer");
// The writer is this process's child, reaped at once when it ends, as a shell reaps its job (this
// machine's init reaps its orphans a second or two late, and a restore waits for the pid).
reapOrphans();
const t = await startTarget(bin, [String(mib), "5"], { append: true });
const reaper = setInterval(() => {
  try {
    waitpid(t.pid, WAIT.WNOHANG);
  } catch { /* not ours: the restored process is its restorer's child */ }
}, 2);
await new Promise((r) => setTimeout(r, 1000));
await gap(t); // from here on
await new Promise((r) => setTimeout(r, 1000));
const idle = await gap(t); // a second of its own: the machine's noise

/** Migrates the target to a receiver in a process of its own, over loopback, with `mode`. */
async function migrateOnce(mode: string) {
  const serve = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "main.ts", "serve", "--listen", "127.0.0.1:0", "--key", key, "--once"],
    cwd: repo,
    stdout: "piped",
    stderr: "inherit",
  }).spawn();
  const reader = serve.stdout.getReader();
  let banner = "";
  while (!/listening on/.test(banner)) {
    banner += new TextDecoder().decode((await reader.read()).value);
  }
  const port = /:(\d+)/.exec(banner)![1];
  const started = performance.now();
  const to = `127.0.0.1:${port}`;
  const out = JSON.parse(
    await tool("migrate", String(t.pid), "--to", to, "--key", key, ...mode.split(" "), "--json"),
  );
  const ms = performance.now() - started;
  reader.releaseLock();
  await serve.status;
  await new Promise((r) => setTimeout(r, 500));
  const { ms: downtime, at } = await gapAt(t);
  // Its memory is registered with the page server's userfaultfd until every page is in: the
  // next migration or dump waits for that.
  const lazyLog = `${Deno.env.get("TMPDIR") ?? "/tmp"}/tardigrade-lazy-${t.pid}.log`;
  for (let i = 0; i < 12_000 && !/done in|cannot serve/.test(readOr(lazyLog)); i++) {
    await new Promise((r) => setTimeout(r, 10));
  }
  Deno.removeSync(lazyLog);
  return { mode, downtime, out, ms, timeline: timelineOf(out, at, downtime) };
}

// Each mode in turns, so that both see the same load.
const runs = [];
for (let i = 0; i < runsPerMode; i++) {
  for (const mode of modes) runs.push(await migrateOnce(mode));
}

// Plain dump and restore of the same process.
const dir = `${scratch}/plain`;
const t0 = performance.now();
await tool("dump", String(t.pid), dir);
await free(t.pid);
await tool("restore", dir);
const plainMs = performance.now() - t0;
await new Promise((r) => setTimeout(r, 500));
const plain = await gap(t);
Deno.kill(t.pid, "SIGKILL");
clearInterval(reaper);

const load = Deno.readTextFileSync("/proc/loadavg").split(" ")[0];
console.log(
  `live migration of ${mib} MiB rewriting 5% a second, one machine over loopback ` +
    `(load average ${load}; its largest gap in a second alone ${idle.toFixed(0)} ms)`,
);
for (const { mode, downtime, out, ms, timeline } of runs) {
  const held = out.postCopyBytes === undefined
    ? ""
    : `   held back ${(out.postCopyBytes / MiB).toFixed(1)} MiB`;
  console.log(
    `migrate ${mode.padEnd(24)} downtime ${downtime.toFixed(0).padStart(5)} ms   sent ${
      (out.bytesSent / MiB).toFixed(0)
    } MiB of ${mib} (${(out.bytesSent / (mib * MiB)).toFixed(2)}×)   frozen at the sender ${
      out.dump.frozenMs.toFixed(0)
    } ms   done in ${(ms / 1000).toFixed(2)} s${held}`,
  );
  if (showTimeline) console.log(timeline);
}
for (const mode of modes) {
  const of = runs.filter((r) => r.mode === mode).map((r) => r.downtime);
  console.log(
    `migrate ${mode.padEnd(24)} median downtime ${median(of).toFixed(0)} ms of ${of.length}`,
  );
}
const best = Math.min(...runs.map((r) => r.downtime));
console.log(
  `dump + restore   downtime ${plain.toFixed(0).padStart(5)} ms   done in ${
    (plainMs / 1000).toFixed(2)
  } s   ratio to the best migration ${(plain / best).toFixed(1)}×`,
);
await cleanupScratch(); // the plain dump alone is 1 GiB
