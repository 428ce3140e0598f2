/**
 * Benchmarks of the inspection SDK, measured in one run against their goals:
 * - listing mappings of a 10,000-VMA process: SDK ≤ 1.2× reading + parsing /proc/PID/maps in JS;
 * - reading 1 GiB of touched memory: `readInto` into a reused buffer ≥ 0.9× a raw FFI
 *   process_vm_readv loop.
 *
 * Run: deno run -A bench/inspect.ts
 */
import { addressOf, libc } from "../ffi/mod.ts";
import { listMappings } from "../lib/inspect/mappings.ts";
import { Process } from "../lib/inspect/process.ts";

const fixtureDir = new URL("../tests/fixtures/", import.meta.url).pathname;
const buildDir = Deno.makeTempDirSync({ prefix: "tardigrade-bench-" });

async function build(name: string): Promise<string> {
  const out = `${buildDir}/${name}`;
  const cc = await new Deno.Command("cc", {
    args: ["-O1", "-pthread", "-o", out, `${fixtureDir}${name}.c`],
  }).output();
  if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));
  return out;
}

/** Starts a fixture and waits for `READY PID ADDR`. */
async function start(bin: string, args: string[]): Promise<{ pid: number; addr: bigint }> {
  const outPath = `${buildDir}/${bin.split("/").pop()}.out`;
  const sh = await new Deno.Command("sh", {
    args: ["-c", `'${bin}' ${args.join(" ")} >'${outPath}' 2>&1 </dev/null & echo $!`],
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  const deadline = Date.now() + 60_000;
  for (;;) {
    const m = Deno.readTextFileSync(outPath).match(/READY (\d+) (0x[0-9a-f]+)/);
    if (m) return { pid, addr: BigInt(m[2]) };
    if (Date.now() > deadline) throw new Error(`fixture ${bin} did not start`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

function stop(pid: number): void {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
}

/** Median time of `runs` calls, in ms, after one warm-up call. */
async function median(runs: number, body: () => unknown): Promise<number> {
  await body();
  const times: number[] = [];
  for (let i = 0; i < runs; i++) {
    const t0 = performance.now();
    await body();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1];
}

/** A naive baseline: /proc/PID/maps read and split on whitespace. */
function naiveMaps(pid: number) {
  const text = Deno.readTextFileSync(`/proc/${pid}/maps`);
  const out = [];
  for (const line of text.split("\n")) {
    if (!line) continue;
    const [range, perms, offset, dev, inode, ...name] = line.split(/\s+/);
    const dash = range.indexOf("-");
    out.push({
      start: BigInt(`0x${range.slice(0, dash)}`),
      end: BigInt(`0x${range.slice(dash + 1)}`),
      perms,
      offset: BigInt(`0x${offset}`),
      dev,
      inode: BigInt(inode),
      path: name.join(" ") || null,
    });
  }
  return out;
}

/**
 * The strict baseline: /proc/PID/maps read and parsed with indexOf/slice into plain objects with
 * the same fields (bigint addresses), the way a careful JS programmer would.
 */
function carefulMaps(pid: number) {
  const text = Deno.readTextFileSync(`/proc/${pid}/maps`);
  const out = [];
  const big = (s: string) => s.length <= 13 ? BigInt(parseInt(s, 16)) : BigInt(`0x${s}`);
  let pos = 0;
  while (pos < text.length) {
    const eol = text.indexOf("\n", pos);
    const dash = text.indexOf("-", pos);
    const sp1 = text.indexOf(" ", dash);
    const sp3 = text.indexOf(" ", sp1 + 6);
    const sp4 = text.indexOf(" ", sp3 + 1);
    let sp5 = text.indexOf(" ", sp4 + 1);
    if (sp5 < 0 || sp5 > eol) sp5 = eol;
    let p = sp5;
    while (p < eol && text.charCodeAt(p) === 32) p++;
    out.push({
      start: big(text.slice(pos, dash)),
      end: big(text.slice(dash + 1, sp1)),
      perms: text.slice(sp1 + 1, sp1 + 5),
      offset: big(text.slice(sp1 + 6, sp3)),
      dev: text.slice(sp3 + 1, sp4),
      inode: BigInt(text.slice(sp4 + 1, sp5)),
      path: p < eol ? text.slice(p, eol) : null,
    });
    pos = eol + 1;
  }
  return out;
}

const VMAS = 10_000;
const GIB = 1 << 30;

async function benchMappings(): Promise<boolean> {
  const { pid } = await start(await build("inspect_many_vmas"), [String(VMAS)]);
  try {
    const proc = await Process.open(pid);
    const count = listMappings(pid).length;
    const runs = 30;
    const per = (ms: number) => (ms * 1e6 / count).toFixed(0).padStart(5);
    const naive = await median(runs, () => naiveMaps(pid));
    const base = await median(runs, () => carefulMaps(pid));
    const ioctl = await median(runs, () => listMappings(pid, { via: "ioctl" }));
    const text = await median(runs, () => listMappings(pid, { via: "text" }));
    const iterated = await median(runs, async () => {
      let n = 0;
      for await (const _ of proc.mappings()) n++;
      return n;
    });
    console.log(`mappings of a process with ${count} VMAs (median of ${runs}), ns/VMA:`);
    console.log(`  naive: read + split /proc/PID/maps on spaces ${per(naive)}`);
    console.log(`  baseline: read + indexOf-parse /proc/PID/maps ${per(base)}`);
    console.log(`  SDK listMappings, PROCMAP_QUERY walk         ${per(ioctl)}`);
    console.log(`  SDK listMappings, maps text                  ${per(text)}`);
    console.log(`  SDK for await of proc.mappings() (default)   ${per(iterated)}`);
    const ratio = iterated / base;
    const ok = ratio <= 1.2;
    console.log(
      `  ratio SDK (for await, default path) / baseline = ${ratio.toFixed(2)}  ` +
        `goal ≤ 1.20: ${ok ? "MET" : "MISSED"}  (ioctl array ${(ioctl / base).toFixed(2)}, ` +
        `text array ${(text / base).toFixed(2)})`,
    );
    return ok;
  } finally {
    stop(pid);
  }
}

async function benchRead(): Promise<boolean> {
  const { pid, addr } = await start(await build("inspect_touched"), ["1024"]);
  try {
    const proc = await Process.open(pid);
    const chunk = 64 << 20;
    const buf = new Uint8Array(chunk);
    buf.fill(1); // first touch of fresh memory is slow: do it before timing

    // The raw loop: process_vm_readv through FFI with prepared iovecs, nothing else.
    const local = new BigUint64Array([addressOf(buf), BigInt(chunk)]);
    const remote = new BigUint64Array(2);
    const localBytes = new Uint8Array(local.buffer);
    const remoteBytes = new Uint8Array(remote.buffer);
    const raw = () => {
      for (let off = 0; off < GIB; off += chunk) {
        remote[0] = addr + BigInt(off);
        remote[1] = BigInt(chunk);
        const n = libc.process_vm_readv(pid, localBytes, 1n, remoteBytes, 1n, 0n);
        if (n !== BigInt(chunk)) throw new Error(`raw read ${n}`);
      }
    };
    const sdk = async () => {
      for (let off = 0; off < GIB; off += chunk) {
        const n = await proc.readInto(addr + BigInt(off), buf);
        if (n !== chunk) throw new Error(`readInto ${n}`);
      }
    };
    const runs = 7;
    // Alternate to share the machine's noise fairly.
    const rawTimes: number[] = [], sdkTimes: number[] = [];
    raw();
    await sdk();
    for (let i = 0; i < runs; i++) {
      let t0 = performance.now();
      raw();
      rawTimes.push(performance.now() - t0);
      t0 = performance.now();
      await sdk();
      sdkTimes.push(performance.now() - t0);
    }
    const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1];
    const gbps = (ms: number) => (GIB / 1e9 / (ms / 1000)).toFixed(2);
    const rawMs = med(rawTimes), sdkMs = med(sdkTimes);
    console.log(`reading 1 GiB of touched memory, 64 MiB reused buffer (median of ${runs}), GB/s:`);
    console.log(`  raw FFI process_vm_readv loop  ${gbps(rawMs)}`);
    console.log(`  SDK proc.readInto loop         ${gbps(sdkMs)}`);
    const ratio = rawMs / sdkMs;
    const ok = ratio >= 0.9;
    console.log(`  ratio SDK / raw = ${ratio.toFixed(2)}  goal ≥ 0.90: ${ok ? "MET" : "MISSED"}`);
    return ok;
  } finally {
    stop(pid);
  }
}

const results = [await benchMappings(), await benchRead()];
Deno.removeSync(buildDir, { recursive: true });
if (results.includes(false)) Deno.exitCode = 1;
