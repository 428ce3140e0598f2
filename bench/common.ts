/** Shared pieces of the dump and restore benchmarks: the big-memory target, timing, output. */
import { addressOf, libc, setChildSubreaper, WAIT, waitpid } from "../ffi/mod.ts";

/** Size of the reused buffer of the raw baselines (the same as the dumper's staging buffer). */
export const CHUNK = 32 << 20;
export const MiB = 1 << 20;

/** Bench scratch space under /tmp; removed by `cleanupScratch`. */
export const scratch = Deno.makeTempDirSync({ prefix: "tardigrade-bench-" });

let subreaper = false;
/** Makes this process reap the targets (and restored processes) it orphans, at once. */
export function reapOrphans(): void {
  if (!subreaper) setChildSubreaper();
  subreaper = true;
}

/** Compiles bench/fixtures/NAME.c once (with `libs`); returns the binary. */
export async function fixtureBinary(name: string, libs: string[] = []): Promise<string> {
  const out = `${scratch}/${name}`;
  try {
    Deno.statSync(out);
    return out;
  } catch { /* build it */ }
  const src = new URL(`./fixtures/${name}.c`, import.meta.url).pathname;
  const cc = await new Deno.Command("cc", { args: ["-O2", "-o", out, src, ...libs] }).output();
  if (!cc.success) throw new Error(new TextDecoder().decode(cc.stderr));
  return out;
}

/** Compiles bench/fixtures/bigmem.c once. */
export function bigmemBinary(): Promise<string> {
  return fixtureBinary("bigmem");
}

/** The checkout the benches run from. */
export const repo = new URL("../", import.meta.url).pathname;

/** Runs a command from the checkout; returns milliseconds, throws with its output on failure. */
export async function timedCommand(cmd: string, args: string[]): Promise<number> {
  const start = performance.now();
  const r = await new Deno.Command(cmd, { args, cwd: repo, stdout: "piped", stderr: "piped" })
    .output();
  const ms = performance.now() - start;
  if (!r.success) {
    const out = new TextDecoder().decode(r.stderr) + new TextDecoder().decode(r.stdout);
    throw new Error(`${cmd} ${args.join(" ")}: ${out.trim()}`);
  }
  return ms;
}

/** A detached target process with its output file. */
export interface BenchTarget {
  pid: number;
  addr: bigint;
  out: string;
}

/**
 * Starts `bin args` detached (a double fork, so Deno does not reap it); waits for READY. With
 * `append` its output file is opened O_APPEND, so that processes restored from one image add
 * their lines instead of writing over each other's at the offset the image recorded.
 */
export async function startTarget(
  bin: string,
  args: string[],
  opts: { append?: boolean } = {},
): Promise<BenchTarget> {
  const out = Deno.makeTempFileSync({ dir: scratch, prefix: "out-" });
  const redirect = opts.append ? ">>" : ">";
  const sh = await new Deno.Command("sh", {
    args: ["-c", `'${bin}' ${args.join(" ")} ${redirect}'${out}' 2>&1 </dev/null & echo $!`],
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  const deadline = Date.now() + 120_000;
  for (;;) {
    const text = Deno.readTextFileSync(out);
    const m = text.match(/READY (\d+) (0x[0-9a-f]+)/);
    if (m) return { pid, addr: BigInt(m[2]), out };
    if (/SETUP FAILED/.test(text)) throw new Error(`${bin} did not start: ${text.trim()}`);
    if (Date.now() > deadline) throw new Error(`${bin} did not start`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Asks a bigmem target to check its memory; returns its PASS/FAIL line. */
export async function checkTarget(t: BenchTarget, timeoutMs = 30_000): Promise<string> {
  const from = Deno.readTextFileSync(t.out).length;
  try {
    Deno.kill(t.pid, "SIGUSR1");
  } catch (err) {
    return `no process (${(err as Error).message})`;
  }
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const m = Deno.readTextFileSync(t.out).slice(from).match(/^(PASS|FAIL.*)$/m);
    if (m) return m[1];
    if (Date.now() > deadline) {
      // A target that reports its own crash (a fault handler): say where.
      return Deno.readTextFileSync(t.out).match(/^CRASH .*$/m)?.[0] ?? "no answer";
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * The CRIU binary to compare with: `$CRIU`, or where ../shared/peers/build-criu.sh builds it;
 * null when it is not built.
 */
export function criuPath(): string | null {
  for (const p of [Deno.env.get("CRIU"), "/tmp/criu-4.2/criu/criu", "/work/criu-4.2/criu/criu"]) {
    if (!p) continue;
    try {
      if (Deno.statSync(p).isFile) return p;
    } catch { /* not there */ }
  }
  return null;
}

/** The tools a bench compares. */
export type Tool = "tardigrade" | "criu";

/**
 * Dumps process `pid` into `dir` with `tool`'s command line (the process ends), waits for
 * `freed` (by default: `pid` free again), and restores it: [dump ms, restore ms].
 */
export async function dumpAndRestore(
  tool: Tool,
  pid: number,
  dir: string,
  freed: () => Promise<void> = () => killAndReap(pid),
): Promise<[number, number]> {
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  if (tool === "tardigrade") {
    const run = (...args: string[]) =>
      timedCommand(Deno.execPath(), ["run", "-A", "main.ts", ...args]);
    const dump = await run("dump", `${pid}`, dir);
    await freed();
    return [dump, await run("restore", dir)];
  }
  const criu = criuPath();
  if (!criu) throw new Error("CRIU is not built");
  Deno.mkdirSync(dir, { recursive: true });
  const log = ["-o", "log", "-v0"];
  const dump = await timedCommand(criu, ["dump", "-t", `${pid}`, "-D", dir, "--shell-job", ...log]);
  await freed();
  return [dump, await timedCommand(criu, ["restore", "-D", dir, "--shell-job", "-d", ...log])];
}

/** Kills `pid` and waits until the pid is free. */
export async function killAndReap(pid: number): Promise<void> {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* gone */ }
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    try {
      waitpid(pid, WAIT.WNOHANG);
    } catch { /* not ours */ }
    try {
      Deno.statSync(`/proc/${pid}`);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** Raw FFI process_vm_readv / process_vm_writev of one contiguous range (one iovec each). */
export function rawVm(
  which: "process_vm_readv" | "process_vm_writev",
  pid: number,
  local: Uint8Array,
  remote: bigint,
): void {
  const liov = new BigUint64Array([addressOf(local), BigInt(local.length)]);
  const riov = new BigUint64Array([remote, BigInt(local.length)]);
  const n = libc[which](
    pid,
    new Uint8Array(liov.buffer),
    1n,
    new Uint8Array(riov.buffer),
    1n,
    0n,
  );
  if (Number(n) !== local.length) throw new Error(`${which}: ${n} of ${local.length}`);
}

/** GB/s of `bytes` in `ms`. */
export function gbps(bytes: number, ms: number): number {
  return bytes / (ms / 1000) / 1e9;
}

export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/** A line of a result table. */
export function row(name: string, value: string, goal = ""): void {
  console.log(`${name.padEnd(46)} ${value.padStart(14)}  ${goal}`);
}

/** Whether /tmp has room for `bytes` more (with 2 GiB to spare). */
export function roomFor(bytes: number): boolean {
  const out = new Deno.Command("df", { args: ["-B1", "--output=avail", scratch] }).outputSync();
  const avail = Number(new TextDecoder().decode(out.stdout).trim().split("\n").pop());
  return avail > bytes + 2 * 1024 ** 3;
}

export async function cleanupScratch(): Promise<void> {
  await Deno.remove(scratch, { recursive: true }).catch(() => {});
}
