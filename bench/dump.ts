/**
 * Dump throughput, measured in one run against its goals:
 * - `checkpoint(pid, {leaveRunning})` of 256 MiB and 2 GiB of touched anonymous memory
 *   ≥ 0.8× a raw FFI baseline that copies the same pages with process_vm_readv into a reused
 *   32 MiB buffer and writes them to a file on the same disk, in the same process. A checkpoint
 *   fsyncs its page files at commit, so the baseline is timed with fdatasync too (and without,
 *   for reference);
 * - how long the target stays frozen (`CheckpointResult.frozenMs`), and with `preCopy` (the
 *   memory copied while the target runs, only pages written meanwhile copied while frozen);
 * - the dumper's peak RSS (VmHWM of a subprocess that only runs the checkpoint) < 128 MiB for the
 *   2 GiB dump: the image is never buffered whole.
 *
 * Run: deno run -A bench/dump.ts  (`--small` runs the 256 MiB target only)
 */
import { checkpoint } from "../mod.ts";
import {
  bigmemBinary,
  CHUNK,
  cleanupScratch,
  gbps,
  killAndReap,
  median,
  MiB,
  rawVm,
  reapOrphans,
  roomFor,
  row,
  scratch,
  startTarget,
} from "./common.ts";

function hwmKiB(): number {
  const m = Deno.readTextFileSync("/proc/self/status").match(/^VmHWM:\s+(\d+) kB/m);
  return Number(m?.[1] ?? 0);
}

// Child mode: one checkpoint, then its peak RSS, as JSON on stdout.
if (Deno.args[0] === "--child") {
  const [pid, dir] = [Number(Deno.args[1]), Deno.args[2]];
  const before = hwmKiB();
  const t = performance.now();
  const r = await checkpoint(pid, dir, { leaveRunning: true });
  const ms = performance.now() - t;
  console.log(
    JSON.stringify({ ms, frozenMs: r.frozenMs, pageBytes: r.pageBytes, before, hwm: hwmKiB() }),
  );
  await cleanupScratch();
  Deno.exit(0);
}

const buf = new Uint8Array(CHUNK);

/** The baseline: process_vm_readv into `buf`, writeSync to a new file, fdatasync if `sync`. */
function rawDump(pid: number, addr: bigint, size: number, path: string, sync: boolean): number {
  using f = Deno.openSync(path, { write: true, createNew: true });
  const t = performance.now();
  for (let off = 0; off < size; off += CHUNK) {
    const part = buf.subarray(0, Math.min(CHUNK, size - off));
    rawVm("process_vm_readv", pid, part, addr + BigInt(off));
    for (let o = 0; o < part.length;) o += f.writeSync(part.subarray(o));
  }
  if (sync) f.syncDataSync();
  const ms = performance.now() - t;
  Deno.removeSync(path);
  return ms;
}

async function timedCheckpoint(pid: number, dir: string, preCopy = false) {
  const t = performance.now();
  const r = await checkpoint(pid, dir, { leaveRunning: true, preCopy });
  const ms = performance.now() - t;
  await Deno.remove(dir, { recursive: true });
  return { ms, frozenMs: r.frozenMs, pageBytes: r.pageBytes };
}

async function benchSize(mib: number): Promise<void> {
  const size = mib * MiB;
  console.log(`\n## dump of ${mib} MiB of touched anonymous memory`);
  const target = await startTarget(await bigmemBinary(), [String(mib)]);
  try {
    // Warm-up: the staging buffers and the page cache, on both paths. Page cache pages freed by
    // one round are handed out again to the next, so a few rounds of writing make later writes
    // land on memory the guest has already touched.
    for (let i = 0; i < 2; i++) rawDump(target.pid, target.addr, size, `${scratch}/warm`, false);
    await timedCheckpoint(target.pid, `${scratch}/warm-img`);

    const raw: number[] = [], rawSync: number[] = [], dump: number[] = [], frozen: number[] = [];
    let pageBytes = 0;
    const rounds = mib >= 1024 ? 3 : 5;
    const preFrozen: number[] = [], preDump: number[] = [];
    for (let i = 0; i < rounds; i++) {
      const p = await timedCheckpoint(target.pid, `${scratch}/img`, true);
      preFrozen.push(p.frozenMs);
      preDump.push(p.ms);
      raw.push(rawDump(target.pid, target.addr, size, `${scratch}/raw`, false));
      rawSync.push(rawDump(target.pid, target.addr, size, `${scratch}/raw`, true));
      const c = await timedCheckpoint(target.pid, `${scratch}/img`);
      dump.push(c.ms);
      frozen.push(c.frozenMs);
      pageBytes = c.pageBytes;
    }
    const best = (xs: number[]) => Math.min(...xs);
    const rawRate = gbps(size, best(raw));
    const rawSyncRate = gbps(size, best(rawSync));
    const dumpRate = gbps(pageBytes, best(dump));
    row("raw readv + write (no fsync)", `${rawRate.toFixed(2)} GB/s`);
    row("raw readv + write + fdatasync (baseline)", `${rawSyncRate.toFixed(2)} GB/s`);
    row("checkpoint, leaveRunning (fsync at commit)", `${dumpRate.toFixed(2)} GB/s`);
    const ratio = dumpRate / rawSyncRate;
    row(
      "  ratio vs baseline",
      `${ratio.toFixed(2)}×`,
      `goal ≥ 0.80× ${ratio >= 0.8 ? "ok" : "MISSED"}`,
    );
    row("  ratio vs raw without fsync", `${(dumpRate / rawRate).toFixed(2)}×`, "(reference)");
    row("  time frozen (best)", `${best(frozen).toFixed(0)} ms`);
    row(
      "  time frozen with preCopy (best / median)",
      `${best(preFrozen).toFixed(1)} / ${median(preFrozen).toFixed(1)} ms`,
      `${(best(frozen) / best(preFrozen)).toFixed(0)}× shorter`,
    );
    row(
      "  checkpoint time with preCopy (best)",
      `${best(preDump).toFixed(0)} ms`,
      "(idle target: every page reused)",
    );
    row(
      "  checkpoint time (best / median)",
      `${best(dump).toFixed(0)} / ${median(dump).toFixed(0)} ms`,
    );
    row(
      "  baseline time (best / median)",
      `${best(rawSync).toFixed(0)} / ${median(rawSync).toFixed(0)} ms`,
    );

    // Peak RSS of a dumper that does nothing else.
    const child = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL(import.meta.url).pathname,
        "--child",
        String(target.pid),
        `${scratch}/rss-img`,
      ],
      stdout: "piped",
    }).output();
    await Deno.remove(`${scratch}/rss-img`, { recursive: true }).catch(() => {});
    if (!child.success) throw new Error("the dump subprocess failed");
    const r = JSON.parse(new TextDecoder().decode(child.stdout).trim().split("\n").pop()!);
    const peak = r.hwm / 1024;
    row(
      "dumper peak RSS (VmHWM, subprocess)",
      `${peak.toFixed(0)} MiB`,
      mib >= 1024 ? `goal < 128 MiB ${peak < 128 ? "ok" : "MISSED"}` : "",
    );
    row("  of which before the checkpoint", `${(r.before / 1024).toFixed(0)} MiB`);
    row("  subprocess checkpoint", `${gbps(r.pageBytes, r.ms).toFixed(2)} GB/s`, "(cold process)");
  } finally {
    await killAndReap(target.pid);
  }
}

reapOrphans();
try {
  await benchSize(256);
  if (!Deno.args.includes("--small")) {
    if (roomFor(2 * 2048 * MiB)) await benchSize(2048);
    else {
      console.log("\n(not enough room in /tmp for two 2 GiB images: 1 GiB instead)");
      await benchSize(1024);
    }
  }
} finally {
  await cleanupScratch();
}
