/** Test harness: compiles C fixtures, starts them detached, and talks to them through files. */
import { F, FD_CLOEXEC, setChildSubreaper, syscall, WAIT, waitpid } from "../ffi/mod.ts";
import { STUB_PROGRAM } from "../lib/ptrace/stub.ts";

// Orphaned fixtures are reparented to the test process, so they are reaped at once.
setChildSubreaper();

// Descriptors the test run inherited from whatever started it (a job runner's pipes) are not
// passed on to fixtures: holding one end of a pipe whose other end is out there, a fixture would
// have a peer outside its dump, which a dump refuses.
for (const e of [...Deno.readDirSync("/proc/self/fd")]) {
  const fd = Number(e.name);
  if (fd <= 2) continue;
  try {
    syscall("fcntl", fd, F.SETFD, FD_CLOEXEC);
  } catch { /* the directory's own descriptor, closed by now */ }
}

const fixtureDir = new URL("./fixtures/", import.meta.url).pathname;
const buildDir = Deno.makeTempDirSync({ prefix: "tardigrade-fixtures-" });
// Binaries and fixture output live for one test run only.
globalThis.addEventListener("unload", () => {
  try {
    Deno.removeSync(buildDir, { recursive: true });
  } catch { /* already gone */ }
});
const built = new Map<string, string>();

/** Compiles `tests/fixtures/NAME.c` once per test run and returns the binary's path. */
export async function fixture(name: string, extraFlags: string[] = []): Promise<string> {
  const key = [name, ...extraFlags].join(" ");
  const have = built.get(key);
  if (have) return have;
  const out = `${buildDir}/${name}${extraFlags.length ? `-${built.size}` : ""}`;
  const cc = await new Deno.Command("cc", {
    args: ["-O1", "-g", "-pthread", "-o", out, `${fixtureDir}${name}.c`, ...extraFlags],
  }).output();
  if (!cc.success) throw new Error(`cc ${name}.c failed:\n${new TextDecoder().decode(cc.stderr)}`);
  built.set(key, out);
  return out;
}

/** A fixture process started detached (not a child of Deno.Command), with its output file. */
export class Target {
  constructor(readonly pid: number, readonly outPath: string) {}

  /** Everything the process has printed so far. */
  output(): string {
    try {
      return Deno.readTextFileSync(this.outPath);
    } catch {
      return "";
    }
  }

  /** Waits until the output has a line matching `re` after `from` characters; returns the match. */
  async waitFor(re: RegExp, timeoutMs = 10_000, from = 0): Promise<RegExpMatchArray> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const m = this.output().slice(from).match(re);
      if (m) return m;
      if (Date.now() > deadline) {
        throw new Error(
          `timed out waiting for ${re} from pid ${this.pid}; output:\n${this.output()}`,
        );
      }
      await new Promise((r) => setTimeout(r, 20));
    }
  }

  /** Asks the fixture to check itself (SIGUSR1) and returns its PASS/FAIL line. */
  async check(pid = this.pid): Promise<string> {
    const from = this.output().length;
    Deno.kill(pid, "SIGUSR1");
    return (await this.waitFor(/^(PASS|FAIL.*)$/m, 10_000, from))[1];
  }

  /** Whether the process exists and is not a zombie. */
  alive(pid = this.pid): boolean {
    return isAlive(pid);
  }

  /** Kills the process and reaps it if it is ours. */
  async kill(pid = this.pid): Promise<void> {
    await killAndReap(pid);
  }
}

/**
 * Waits until `cond` holds, polling every 20 ms; fails after `timeoutMs` naming `what` (a
 * function is called then, to describe the state it timed out in). The wait for anything a
 * test needs to have happened, instead of a fixed sleep.
 */
export async function waitUntil(
  cond: () => boolean | Promise<boolean>,
  timeoutMs: number,
  what: string | (() => string),
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await cond())) {
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${typeof what === "string" ? what : what()}`,
      );
    }
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The path of `cmd` on PATH, or undefined. */
export function onPath(cmd: string): string | undefined {
  for (const dir of (Deno.env.get("PATH") ?? "").split(":")) {
    if (!dir) continue;
    try {
      if (Deno.statSync(`${dir}/${cmd}`).isFile) return `${dir}/${cmd}`;
    } catch { /* not here */ }
  }
  return undefined;
}

/** "not installed: a, b" for the commands of `cmds` missing from PATH; undefined if none is. */
export function notInstalled(...cmds: string[]): string | undefined {
  const missing = cmds.filter((c) => !onPath(c));
  return missing.length ? `not installed: ${missing.join(", ")}` : undefined;
}

/**
 * "not installed: nft, iptables" where neither is there to lock the network: a dump of TCP
 * connections is then refused. Undefined when one is.
 */
export function noNetworkLock(): string | undefined {
  return onPath("nft") || onPath("iptables") ? undefined : "not installed: nft, iptables";
}

/**
 * Name and `ignore` of a test that needs something a machine may lack. `missing` says what is
 * missing, found before the test runs (undefined: all is there); the test is then ignored, not
 * passed, and its name carries the reason: `NAME [REASON]`.
 */
export function needs(
  name: string,
  missing: string | undefined,
): { name: string; ignore: boolean } {
  return missing === undefined
    ? { name, ignore: false }
    : { name: `${name} [${missing}]`, ignore: true };
}

/** Whether `path` exists (a link: what it points to). */
export function exists(path: string): boolean {
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
}

/** Whether a pid is a live process (not a zombie). */
export function isAlive(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0] !== "Z";
  } catch {
    return false;
  }
}

/** Whether `pid` runs a restore's stub (`/bin/cat`). */
export function isRestoreStub(pid: number): boolean {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/cmdline`) === `${STUB_PROGRAM}\0`;
  } catch {
    return false;
  }
}

/**
 * How many restore stubs are children of this process: a stub is orphaned at start and
 * reparented to this process (a child subreaper), so other test runs do not disturb the count.
 */
export function ourStubCount(): number {
  let n = 0;
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (pid > 0 && isRestoreStub(pid) && parentOf(pid) === Deno.pid) n++;
  }
  return n;
}

/** The parent of `pid` (0 once it is gone). */
export function parentOf(pid: number): number {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
  } catch {
    return 0;
  }
}

/** The children of `pid` (its leader thread's), none once it is gone. */
export function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** The children of `pid` that are zombies (exited, not waited for). */
export function zombieChildrenOf(pid: number): number[] {
  return childrenOf(pid).filter((c) => {
    try {
      const stat = Deno.readTextFileSync(`/proc/${c}/stat`);
      return stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z";
    } catch {
      return false;
    }
  });
}

/**
 * Reaps zombies that became ours (the test process is a subreaper) when their parent was
 * dumped and ended, as init would on a real system, so their pids are free for a restore.
 */
export async function reapAdopted(pids: number[]): Promise<void> {
  for (const pid of pids) await killAndReap(pid);
}

/** Kills a process and waits until its pid is free again (reaped by us or by init). */
export async function killAndReap(pid: number): Promise<void> {
  try {
    Deno.kill(pid, "SIGKILL");
  } catch { /* already gone */ }
  const deadline = Date.now() + 5000;
  while (Date.now() < deadline) {
    try {
      waitpid(pid, WAIT.WNOHANG);
    } catch { /* not our child */ }
    try {
      Deno.statSync(`/proc/${pid}`);
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

/**
 * Starts `bin args` detached through a shell (so Deno does not reap it), stdout and stderr into
 * a fresh file, stdin from /dev/null. Waits for `ready` in its output when given. With `append`
 * the output file is opened with O_APPEND, so copies of the process restored beside it add their
 * lines instead of writing over the original's at the same offsets.
 */
export async function spawnTarget(
  bin: string,
  args: string[] = [],
  opts: { ready?: RegExp; cwd?: string; env?: Record<string, string>; append?: boolean } = {},
): Promise<Target> {
  const outPath = Deno.makeTempFileSync({ dir: buildDir, prefix: "out-" });
  const quoted = [bin, ...args].map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
  const sh = await new Deno.Command("sh", {
    args: ["-c", `${quoted} ${opts.append ? ">>" : ">"}'${outPath}' 2>&1 </dev/null & echo $!`],
    cwd: opts.cwd,
    env: opts.env,
    stdout: "piped",
  }).output();
  const pid = Number(new TextDecoder().decode(sh.stdout).trim());
  const target = new Target(pid, outPath);
  if (opts.ready) await target.waitFor(opts.ready);
  return target;
}

/** Runs a test body with a target that is always killed afterwards. */
export async function withTarget<T>(
  target: Target,
  body: (t: Target) => Promise<T>,
): Promise<T> {
  try {
    return await body(target);
  } finally {
    await target.kill();
  }
}

/**
 * Removes what a fixture announced on its READY line as leftovers of its own: temporary paths
 * (`tmp=PATH`) and System V shared memory segments (`shm=ID`, which outlive a killed process).
 */
export async function removeAnnounced(t: Target): Promise<void> {
  const ready = t.output().match(/^READY .*$/m)?.[0] ?? "";
  for (const [, path] of ready.matchAll(/\btmp=(\S+)/g)) {
    await Deno.remove(path, { recursive: true }).catch(() => {});
  }
  for (const [, id] of ready.matchAll(/\bshm=(\d+)/g)) {
    await new Deno.Command("ipcrm", { args: ["-m", id], stderr: "null" }).output();
  }
}

/** What a deno subprocess printed, and how it ended. */
export interface Run {
  code: number;
  stdout: string;
  stderr: string;
}

/** The checkout this test suite runs from. */
export const repoRoot = new URL("../", import.meta.url).pathname;

/** Runs `deno run -A ...args` from the repository root (or `cwd`), stdin from /dev/null. */
export async function runDeno(
  args: string[],
  env: Record<string, string> = {},
  cwd = repoRoot,
): Promise<Run> {
  const out = await new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", ...args],
    cwd,
    env,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

/** Runs the CLI, `deno run -A main.ts ...args`, from the repository root. */
export function cli(...args: string[]): Promise<Run> {
  return runDeno(["main.ts", ...args]);
}

/**
 * `length` bytes of stream `seed` from offset `from`, as tests/fixtures/tcp_client.c makes and
 * checks them: each depends on its offset, so a lost, doubled or moved byte shows.
 */
export function streamBytes(seed: number, from: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, k) => {
    const i = from + k;
    return ((Math.imul(i, 2654435761) >>> 24) ^ (i >>> 11) ^ (seed * 37)) & 0xff;
  });
}

/** Runs `body` while reaping `pid` (or each of `pid`) as soon as it dies (this test process is
 * its subreaper), so a restore in another process finds the pid free. */
export async function reaping<T>(pid: number | number[], body: () => Promise<T>): Promise<T> {
  const timer = setInterval(() => {
    for (const p of [pid].flat()) {
      try {
        waitpid(p, WAIT.WNOHANG);
      } catch { /* not ours (any more) */ }
    }
  }, 10);
  try {
    return await body();
  } finally {
    clearInterval(timer);
  }
}

/** Lets gid 0 make ICMP "ping" sockets, which a default machine allows nobody. */
export const PING_GROUPS = { "net/ipv4/ping_group_range": "0 0" };

/**
 * Sets the sysctls `values` (paths under /proc/sys/, as "net/ipv4/ping_group_range") until the
 * returned handle is disposed (`using`), which puts back what they were: for a fixture that needs
 * the machine to allow something (ping sockets for gid 0).
 */
export function setSysctls(values: Record<string, string> | undefined): Disposable {
  const saved: [string, string][] = [];
  const putBack = () => {
    for (const [path, value] of saved.reverse()) Deno.writeTextFileSync(path, value);
    saved.length = 0;
  };
  try {
    for (const [name, value] of Object.entries(values ?? {})) {
      const path = `/proc/sys/${name}`;
      saved.push([path, Deno.readTextFileSync(path)]);
      Deno.writeTextFileSync(path, value);
    }
  } catch (err) {
    putBack();
    throw err;
  }
  return { [Symbol.dispose]: putBack };
}

/** A cgroup made for a test in hierarchy directory `root`, removed after. */
export function makeGroup(
  root: string,
  name: string,
  settings: Record<string, string> = {},
): string {
  const dir = `${root}/${name}`;
  Deno.mkdirSync(dir);
  for (const [file, value] of Object.entries(settings)) {
    Deno.writeTextFileSync(`${dir}/${file}`, value);
  }
  return dir;
}

/** Removes a test's cgroup once the processes in it are gone. */
export async function removeGroup(dir: string): Promise<void> {
  await waitUntil(
    () => {
      try {
        Deno.removeSync(dir);
        return true;
      } catch (err) {
        return err instanceof Deno.errors.NotFound;
      }
    },
    5000,
    `cgroup ${dir} to be empty and removed`,
  );
}

/** The group of `pid` in the hierarchy `hierarchy` names in /proc/PID/cgroup. */
export function groupOf(pid: number, hierarchy: string): string | undefined {
  return Deno.readTextFileSync(`/proc/${pid}/cgroup`).split("\n")
    .map((l) => l.split(":")).find((f) => f[1] === hierarchy)?.[2];
}

/** The v1 pids hierarchy and the v2 one of this machine. */
export const CGROUP_PIDS = "/sys/fs/cgroup/pids", CGROUP_UNIFIED = "/sys/fs/cgroup/unified";

/** The processes running `bin`. */
export function runningFixtures(bin: string): number[] {
  return [...Deno.readDirSync("/proc")].map((e) => Number(e.name)).filter((pid) => {
    try {
      return pid > 0 && isAlive(pid) && Deno.readLinkSync(`/proc/${pid}/exe`) === bin;
    } catch {
      return false;
    }
  });
}
