/** The `tardigrade` CLI, run as a subprocess: every verb, human and --json output, exit codes. */
import assert from "node:assert/strict";
import { checkpoint } from "../mod.ts";
import { cli, fixture, notInstalled, spawnTarget, type Target } from "./helpers.ts";

/** Runs the CLI with --json and parses stdout. */
async function cliJson<T = unknown>(...args: string[]): Promise<T> {
  const r = await cli(...args, "--json");
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as T;
}

async function hello(): Promise<Target> {
  return await spawnTarget(await fixture("hello"), [], { ready: /READY/ });
}

function tempDir(): string {
  return `${Deno.makeTempDirSync({ prefix: "tardigrade-cli-" })}/img`;
}

const VERBS = [
  "ps",
  "maps",
  "fds",
  "search",
  "check",
  "dump",
  "restore",
  "inspect",
  "diff",
  "repl",
];

/** The keys of a `ps --json` row, live or of an image, in order. */
const PS_KEYS = [
  "pid",
  "ppid",
  "uid",
  "state",
  "threads",
  "rssBytes",
  "comm",
  "cmdline",
  "namespaces",
  "cgroups",
];

Deno.test("cli: --help lists every verb, each verb has --help", async () => {
  const r = await cli("--help");
  assert.equal(r.code, 0);
  for (const v of VERBS) assert.match(r.stdout, new RegExp(`^  ${v} `, "m"));
  for (const v of VERBS) {
    const h = await cli(v, "--help");
    assert.equal(h.code, 0, `${v} --help: ${h.stderr}`);
    assert.match(h.stdout, new RegExp(`^usage: tardigrade ${v}`));
  }
});

Deno.test("cli: bad arguments exit 2 with an error line and a usage line", async () => {
  const cases: [string[], RegExp][] = [
    [[], /no verb/],
    [["frob"], /unknown verb 'frob'/],
    [["maps"], /missing argument TARGET$/],
    [["maps", "abc"], /not a pid or an image directory: 'abc'/],
    [["maps", "1", "--pid", "2"], /--pid is for an image directory/],
    [["maps", "1", "2"], /unexpected argument '2'/],
    [["fds", "1", "--bogus"], /unknown option '--bogus'/],
    [["dump", "1"], /missing argument DIR$/],
    [["dump", "1", "/tmp/x", "--policy"], /argument missing/],
    [["restore"], /missing argument/],
    [["inspect"], /missing argument/],
    [["ps", "a", "b"], /unexpected argument 'b'/],
  ];
  for (const [args, re] of cases) {
    const r = await cli(...args);
    assert.equal(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 2, r.stderr);
    assert.match(lines[0], /^tardigrade: /);
    assert.match(lines[0], re);
    assert.match(lines[1], /^usage: tardigrade/);
    assert.equal(r.stdout, "");
  }
});

Deno.test("cli: a failure is one line and exit 1; --verbose adds the stack", async () => {
  const r = await cli("fds", "999999999");
  assert.equal(r.code, 1);
  assert.match(r.stderr, /^tardigrade: no such process 999999999/);
  assert.equal(r.stderr.trim().split("\n").length, 1);
  const v = await cli("fds", "999999999", "--verbose");
  assert.equal(v.code, 1);
  assert.match(v.stderr, /NoSuchProcess/);
  assert.ok(v.stderr.trim().split("\n").length > 1);
});

Deno.test("cli: ps shows the fixture, as a table and as JSON", async () => {
  const t = await hello();
  try {
    const r = await cli("ps");
    assert.equal(r.code, 0);
    assert.match(r.stdout, /^\s*PID\s+PPID\s+UID\s+S\s+THR\s+RSS\s+NS\s+COMMAND$/m);
    assert.match(r.stdout, new RegExp(`^\\s*${t.pid}\\s+\\d+\\s+0\\s+S\\s+1\\s+.*hello$`, "m"));
    const rows = await cliJson<Record<string, unknown>[]>("ps");
    const me = rows.find((x) => x.pid === t.pid)!;
    assert.deepEqual(Object.keys(me), PS_KEYS);
    assert.equal(me.comm, "hello");
    assert.deepEqual(me.namespaces, [], "it lives in tardigrade's namespaces");
    assert.equal(me.threads, 1);
  } finally {
    await t.kill();
  }
});

Deno.test("cli: maps and fds of the fixture", async () => {
  const t = await hello();
  try {
    const r = await cli("maps", String(t.pid));
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /^START\s+END\s+PERMS\s+SIZE\s+RESIDENT\s+KIND\s+PATH$/m);
    assert.match(r.stdout, /\[heap\]$/m);
    assert.match(r.stdout, /^\d+ mappings, .* mapped, .* resident$/m);
    const maps = await cliJson<Record<string, unknown>[]>("maps", String(t.pid));
    const heap = maps.find((m) => m.kind === "heap")!;
    assert.match(heap.start as string, /^0x[0-9a-f]+$/);
    assert.equal(
      BigInt(heap.end as string) - BigInt(heap.start as string),
      BigInt(heap.size as number),
    );
    assert.ok((heap.residentBytes as number) >= 4096);

    const f = await cli("fds", String(t.pid));
    assert.equal(f.code, 0, f.stderr);
    assert.match(f.stdout, /^FD\s+KIND\s+FLAGS\s+POS\s+CLOEXEC\s+FILE\s+TARGET$/m);
    const fds = await cliJson<Record<string, unknown>[]>("fds", String(t.pid));
    assert.deepEqual(fds.map((x) => x.fd), [0, 1, 2]);
    assert.equal(fds[0].target, "/dev/null");
    assert.equal(fds[1].fileId, fds[2].fileId); // 2>&1 shares the open file
  } finally {
    await t.kill();
  }
});

Deno.test("cli: maps, fds and ps take an image directory, same columns and JSON shape", async () => {
  const t = await hello();
  const dir = tempDir();
  try {
    await checkpoint(t.pid, dir, { leaveRunning: true });
    const liveMaps = await cliJson<Record<string, unknown>[]>("maps", String(t.pid));
    const imageMaps = await cliJson<Record<string, unknown>[]>("maps", dir);
    const same = (rows: Record<string, unknown>[]) =>
      rows.filter((m) => m.kind !== "vsyscall") // every process's, an image does not record it
        .map(({ start, end, size, perms, offset, kind, path }) =>
          JSON.stringify({ start, end, size, perms, offset, kind, path })
        );
    assert.deepEqual(same(imageMaps), same(liveMaps));
    assert.deepEqual(Object.keys(imageMaps[0]), Object.keys(liveMaps[0]));
    const heap = imageMaps.find((m) => m.kind === "heap")!;
    assert.ok((heap.residentBytes as number) >= 4096, "the heap's pages are in the image");
    const table = await cli("maps", dir);
    assert.match(table.stdout, /^START\s+END\s+PERMS\s+SIZE\s+RESIDENT\s+KIND\s+PATH$/m);

    const liveFds = await cliJson<Record<string, unknown>[]>("fds", String(t.pid));
    const imageFds = await cliJson<Record<string, unknown>[]>("fds", dir, "--pid", String(t.pid));
    const noId = (rows: Record<string, unknown>[]) => rows.map(({ fileId: _, ...r }) => r);
    assert.deepEqual(noId(imageFds), noId(liveFds));
    assert.equal(imageFds[1].fileId, imageFds[2].fileId); // 2>&1 still one open file

    const ps = await cliJson<Record<string, unknown>[]>("ps", dir);
    assert.equal(ps.length, 1);
    assert.equal(ps[0].pid, t.pid);
    assert.equal(ps[0].comm, "hello");
    assert.deepEqual(Object.keys(ps[0]), PS_KEYS);
    const psTable = await cli("ps", dir);
    assert.match(
      psTable.stdout,
      new RegExp(`^\\s*${t.pid}\\s+\\d+\\s+0\\s+-\\s+1\\s+.*hello$`, "m"),
    );

    const other = await cli("maps", dir, "--pid", "999999999");
    assert.equal(other.code, 1);
    assert.match(other.stderr, /not in the image .* \(it holds \d+\)/);
  } finally {
    await t.kill();
    await Deno.remove(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("cli: check reports every feature as ok here", async () => {
  const r = await cli("check");
  assert.equal(r.code, 0, r.stdout + r.stderr);
  assert.match(r.stdout, /^FEATURE\s+STATUS\s+REQUIRED\s+DETAIL$/m);
  const j = await cliJson<{ ok: boolean; features: { name: string; ok: boolean }[] }>("check");
  assert.equal(j.ok, true);
  assert.deepEqual(j.features.map((f) => f.name), [
    "ptrace",
    "PROCMAP_QUERY",
    "PAGEMAP_SCAN",
    "/proc/PID/map_files",
    "clone3 set_tid",
    "userfaultfd",
    "ns_last_pid",
    "TCP_REPAIR",
    "pid namespaces",
    "network lock",
  ]);
  // The lock needs nft or iptables, which .ci/run installs; the kernel's features are all here.
  const lockable = !notInstalled("nft") || !notInstalled("iptables");
  for (const f of j.features) if (f.name !== "network lock" || lockable) assert.ok(f.ok, f.name);
  // check --help names every probe it runs, in order.
  const help = (await cli("check", "--help")).stdout;
  const named = [...help.matchAll(/^ {2}(\S+(?: \S+)?) {2,}/gm)].map((m) => m[1]);
  assert.deepEqual(named.slice(0, j.features.length), j.features.map((f) => f.name));
});

Deno.test("cli: dump --leave-running, then inspect and inspect --verify", async () => {
  const t = await hello();
  const dir = tempDir();
  try {
    const d = await cli("dump", String(t.pid), dir, "--leave-running");
    assert.equal(d.code, 0, d.stderr);
    assert.equal(d.stderr, ""); // no progress bar when stderr is not a terminal
    assert.match(d.stdout, new RegExp(`^dumped pid ${t.pid} to .*process left running$`, "m"));
    assert.equal(await t.check(), "PASS");

    const i = await cli("inspect", dir);
    assert.equal(i.code, 0, i.stderr);
    assert.match(i.stdout, new RegExp(`^process ${t.pid} \\(hello\\)`, "m"));
    assert.match(i.stdout, /^\s*TID\s+RIP\s+RSP\s+NAME$/m);
    assert.match(i.stdout, /^totals: 1 thread, \d+ mappings/m);
    assert.doesNotMatch(i.stdout, /registers of thread/);
    const iv = await cli("inspect", dir, "--verbose");
    assert.match(iv.stdout, /registers of thread/);

    type Img = {
      manifest: { format: number };
      verified?: boolean;
      processes: {
        pid: number;
        threads: { tid: number; rip: string; regs?: unknown }[];
        mappings: { kind: string; pageBytes: number }[];
        fds: { fd: number; kind: string }[];
        totals: { pageBytes: number; threads: number };
      }[];
    };
    const j = await cliJson<Img>("inspect", dir);
    assert.equal(j.manifest.format, 1);
    const p = j.processes[0];
    assert.equal(p.pid, t.pid);
    assert.equal(p.threads[0].tid, t.pid);
    assert.match(p.threads[0].rip, /^0x[0-9a-f]+$/);
    assert.equal(p.threads[0].regs, undefined);
    assert.ok(p.mappings.find((m) => m.kind === "heap")!.pageBytes >= 4096);
    assert.deepEqual(p.fds.map((f) => f.fd), [0, 1, 2]);
    assert.equal(p.totals.threads, 1);
    assert.ok(p.totals.pageBytes > 0);
    // Stable: the same image gives the same JSON.
    assert.deepEqual(await cliJson<Img>("inspect", dir), j);

    const v = await cli("inspect", dir, "--verify");
    assert.equal(v.code, 0, v.stderr);
    assert.match(v.stdout, /verify: OK/);
    assert.equal((await cliJson<Img>("inspect", dir, "--verify")).verified, true);

    // One flipped byte of page data: --verify names the file and fails.
    const pages = `${dir}/pages-0.img`;
    const bytes = Deno.readFileSync(pages);
    bytes[10] ^= 0xff;
    Deno.writeFileSync(pages, bytes);
    const bad = await cli("inspect", dir, "--verify");
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /^tardigrade: verify failed: pages-0\.img: checksum mismatch/);
  } finally {
    await t.kill();
    Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("cli: dump --json has a stable shape and a --policy file is loaded", async () => {
  const t = await hello();
  const dir = tempDir();
  const policyFile = Deno.makeTempFileSync({ suffix: ".ts" });
  Deno.writeTextFileSync(
    policyFile,
    `export default { mapping: (m: { kind: string }) => m.kind === "stack" ? { skip: true, evenIfUsed: true } : "dump" };\n`,
  );
  try {
    const j = await cliJson<Record<string, unknown>>(
      "dump",
      String(t.pid),
      dir,
      "--leave-running",
      "--policy",
      policyFile,
    );
    assert.deepEqual(Object.keys(j).sort(), [
      "dir",
      "fds",
      "frozenMs",
      "killed",
      "mappings",
      "pageBytes",
      "pid",
      "processes",
      "threads",
    ]);
    assert.equal(j.pid, t.pid);
    assert.equal(j.killed, false);
    // A time to a tenth of a millisecond, not to the clock's last digit.
    assert.equal(j.frozenMs, Math.round((j.frozenMs as number) * 10) / 10);
    const img = await cliJson<{ processes: { mappings: { kind: string; pageBytes: number }[] }[] }>(
      "inspect",
      dir,
    );
    assert.equal(img.processes[0].mappings.find((m) => m.kind === "stack")!.pageBytes, 0);
  } finally {
    await t.kill();
    Deno.removeSync(policyFile);
    Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test({
  name: "cli: dump ends the process, restore brings it back (--pidfile)",
  async fn() {
    const t = await hello();
    const dir = tempDir();
    const pidfile = Deno.makeTempFileSync();
    try {
      const d = await cli("dump", String(t.pid), dir);
      assert.equal(d.code, 0, d.stderr);
      assert.match(d.stdout, /process ended/);
      assert.equal(t.alive(), false);
      await t.kill(); // reap the zombie (this test process is its subreaper) to free the pid
      const r = await cli("restore", dir, "--pidfile", pidfile);
      assert.equal(r.code, 0, r.stderr);
      assert.equal(r.stdout.trim(), String(t.pid));
      assert.equal(Deno.readTextFileSync(pidfile), `${t.pid}\n`);
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
      Deno.removeSync(pidfile);
      Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
    }
  },
});

Deno.test({
  name: "cli: restore of something that is not an image fails with one line",
  async fn() {
    const r = await cli("restore", "/nonexistent");
    assert.equal(r.code, 1);
    assert.match(r.stderr, /^tardigrade: not an image/);
    assert.equal(r.stderr.trim().split("\n").length, 1);
  },
});
