/**
 * Restore throughput, measured in one run against its goals:
 * - `restore(dir)` of images of 256 MiB and 2 GiB of anonymous memory ≥ 0.8× a raw FFI baseline
 *   that reads the same page file into a reused 32 MiB buffer and writes it into a fresh process
 *   (untouched memory of the same size, as a restore's is) with process_vm_writev;
 * - end-to-end dump + restore of a small (< 10 MiB) process, in ms (median of several runs).
 *
 * Run: deno run -A bench/restore.ts  (`--small` runs the 256 MiB image only)
 */
import { checkpoint, restore } from "../mod.ts";
import type { ProcessEntry } from "../lib/image/schema.ts";
import { ImageReader } from "../lib/image/mod.ts";
import {
  type BenchTarget,
  bigmemBinary,
  checkTarget,
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

const buf = new Uint8Array(CHUNK);

/** The page file holding the big mapping, and its size. */
async function pageFile(dir: string): Promise<{ path: string; size: number }> {
  using reader = await ImageReader.open(dir);
  const p = await reader.readMeta<ProcessEntry>("process");
  const files = [...new Set(p.extents.map((e) => e.file))];
  if (files.length !== 1) throw new Error(`expected one page file, found ${files}`);
  return { path: `${dir}/${files[0]}`, size: Deno.statSync(`${dir}/${files[0]}`).size };
}

/** The baseline: read the page file into `buf`, process_vm_writev it into a fresh process. */
async function rawRestore(bin: string, mib: number, file: string): Promise<number> {
  const size = mib * MiB;
  const t: BenchTarget = await startTarget(bin, [String(mib), "notouch"]);
  try {
    using f = Deno.openSync(file, { read: true });
    const start = performance.now();
    for (let off = 0; off < size; off += CHUNK) {
      const part = buf.subarray(0, Math.min(CHUNK, size - off));
      for (let o = 0; o < part.length;) {
        const n = f.readSync(part.subarray(o));
        if (n === null) throw new Error("page file too short");
        o += n;
      }
      rawVm("process_vm_writev", t.pid, part, t.addr + BigInt(off));
    }
    return performance.now() - start;
  } finally {
    await killAndReap(t.pid);
  }
}

async function benchSize(mib: number): Promise<void> {
  console.log(`\n## restore of ${mib} MiB of anonymous memory`);
  const bin = await bigmemBinary();
  const target = await startTarget(bin, [String(mib)]);
  const dir = `${scratch}/img-${mib}`;
  try {
    await checkpoint(target.pid, dir);
    await killAndReap(target.pid);
    const file = await pageFile(dir);

    /** One restore, timed; the process is checked once and then ended. */
    const timedRestore = async (check: boolean) => {
      const start = performance.now();
      const r = await restore(dir);
      const ms = performance.now() - start;
      if (r.pid !== target.pid) throw new Error(`restored as ${r.pid}, not ${target.pid}`);
      if (check) {
        const verdict = await checkTarget(target);
        if (verdict !== "PASS") throw new Error(`restored process says ${verdict}`);
      }
      await killAndReap(r.pid);
      return { ms, pageBytes: r.pageBytes };
    };

    // Warm-up of both paths (and a check that the restored memory is right).
    await rawRestore(bin, mib, file.path);
    await timedRestore(true);

    const raw: number[] = [], rest: number[] = [];
    let pageBytes = 0;
    // Faulting in fresh memory is noisy here (±50 %): best of several rounds, alternating.
    const rounds = mib >= 1024 ? 5 : 7;
    for (let i = 0; i < rounds; i++) {
      raw.push(await rawRestore(bin, mib, file.path));
      const r = await timedRestore(false);
      rest.push(r.ms);
      pageBytes = r.pageBytes;
    }
    const best = (xs: number[]) => Math.min(...xs);
    const rawRate = gbps(mib * MiB, best(raw));
    const restoreRate = gbps(pageBytes, best(rest));
    row("raw read + process_vm_writev (baseline)", `${rawRate.toFixed(2)} GB/s`);
    row("restore (verified extents)", `${restoreRate.toFixed(2)} GB/s`);
    const ratio = restoreRate / rawRate;
    row(
      "  ratio vs baseline",
      `${ratio.toFixed(2)}×`,
      `goal ≥ 0.80× ${ratio >= 0.8 ? "ok" : "MISSED"}`,
    );
    row(
      "  restore time (best / median)",
      `${best(rest).toFixed(0)} / ${median(rest).toFixed(0)} ms`,
    );
    row(
      "  baseline time (best / median)",
      `${best(raw).toFixed(0)} / ${median(raw).toFixed(0)} ms`,
    );
  } finally {
    await killAndReap(target.pid);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

/** Dump + restore of the small `hello` fixture, end to end. */
async function benchSmall(): Promise<void> {
  console.log("\n## end-to-end dump + restore of a small process");
  const bin = `${scratch}/hello`;
  const src = new URL("../tests/fixtures/hello.c", import.meta.url).pathname;
  const cc = await new Deno.Command("cc", { args: ["-O1", "-pthread", "-o", bin, src] }).output();
  if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));
  const out = Deno.makeTempFileSync({ dir: scratch, prefix: "hello-" });
  const sh = await new Deno.Command("sh", {
    args: ["-c", `'${bin}' >'${out}' 2>&1 </dev/null & echo $!`],
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  while (!Deno.readTextFileSync(out).includes("READY")) {
    await new Promise((r) => setTimeout(r, 10));
  }
  const rss = Number(
    Deno.readTextFileSync(`/proc/${pid}/status`).match(/^VmRSS:\s+(\d+)/m)?.[1] ?? 0,
  );
  const dumps: number[] = [], restores: number[] = [], total: number[] = [];
  let pageBytes = 0;
  try {
    for (let i = 0; i < 11; i++) {
      const dir = `${scratch}/small-${i}`;
      const t0 = performance.now();
      const c = await checkpoint(pid, dir);
      const t1 = performance.now();
      const r = await restore(dir);
      const t2 = performance.now();
      if (r.pid !== pid) throw new Error(`restored as ${r.pid}`);
      pageBytes = c.pageBytes;
      if (i > 0) { // the first run warms up
        dumps.push(t1 - t0);
        restores.push(t2 - t1);
        total.push(t2 - t0);
      }
      await Deno.remove(dir, { recursive: true });
    }
    const verdict = await checkTarget({ pid, addr: 0n, out });
    if (verdict !== "PASS") throw new Error(`restored hello says ${verdict}`);
  } finally {
    await killAndReap(pid);
  }
  row("process (RSS / page data in image)", `${rss >> 10} / ${(pageBytes / MiB).toFixed(1)} MiB`);
  row(`checkpoint (median of ${dumps.length})`, `${median(dumps).toFixed(1)} ms`);
  row(`restore (median of ${restores.length})`, `${median(restores).toFixed(1)} ms`);
  row(`dump + restore (median of ${total.length})`, `${median(total).toFixed(1)} ms`);
}

reapOrphans();
try {
  await benchSmall();
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
