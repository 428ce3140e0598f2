/**
 * A process in an image looks like a live one: the same script, written against `ProcessView`,
 * gives the same answers on a running fixture and on its image (memory read at a virtual
 * address from the page files included), also as a script outside the checkout importing mod.ts.
 */
import assert from "node:assert/strict";
import {
  checkpoint,
  diffSeries,
  diffTargets,
  imageChain,
  Process,
  ProcessImage,
  type ProcessView,
  searchMemory,
  type TargetDiff,
} from "../mod.ts";
import { cli, fixture, runDeno, spawnTarget, type Target } from "./helpers.ts";

const NEEDLE = "tardigrade-needle-7f3a";

/** Starts image_view.c; returns it with the address of its needle and of its region. */
export async function imageView(): Promise<{ t: Target; needle: bigint; region: bigint }> {
  const t = await spawnTarget(await fixture("image_view"), [], {
    ready: /^(READY|SETUP FAILED)/m,
    env: { IMAGE_VIEW: "needle-env" },
  });
  const m = t.output().match(/^READY \d+ region=(0x[0-9a-f]+) needle=(0x[0-9a-f]+)/m);
  assert.ok(m, t.output());
  return { t, region: BigInt(m[1]), needle: BigInt(m[2]) };
}

/** What a user's script would print about a process: the same for a pid and its image. */
async function describe(p: ProcessView, needle: bigint) {
  const mappings: string[] = [];
  for await (const m of p.mappings()) {
    // The kernel's [vsyscall] is every process's: an image does not record it.
    if (m.kind !== "vsyscall") {
      mappings.push(`${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.kind} ${m.path}`);
    }
  }
  const fds: string[] = [];
  for await (const f of p.fds()) {
    fds.push(`${f.fd} ${f.kind} ${f.target} ${f.flags} ${f.closeOnExec}`);
  }
  const threads: string[] = [];
  for await (const t of p.threads()) threads.push(`${t.tid} ${t.name}`);
  const heap = mappings.find((m) => m.endsWith("[heap]"))!;
  const found = await p.findMapping(needle);
  return {
    pid: p.pid,
    ppid: await p.ppid(),
    pgid: await p.pgid(),
    sid: await p.sid(),
    comm: await p.comm(),
    cmdline: await p.cmdline(),
    exe: await p.exe(),
    cwd: await p.cwd(),
    root: await p.root(),
    umask: await p.umask(),
    environ: (await p.environ()).filter((e) => e.startsWith("IMAGE_VIEW=")),
    uids: await p.uids(),
    gids: await p.gids(),
    groups: await p.groups(),
    capabilities: await p.capabilities(),
    signals: await p.signals(),
    rlimits: await p.rlimits(),
    auxv: await p.auxv(),
    namespaces: await p.namespaces(),
    personality: await p.personality(),
    mappings,
    heap,
    fds,
    threads,
    needle: new TextDecoder().decode(await p.read(needle, NEEDLE.length)),
    needleMapping: found ? `${found.start.toString(16)} ${found.perms}` : null,
    children: (await p.children()).map((c) => c.pid),
  };
}

Deno.test("image process: a script gives the same answers on a pid and on its image", async () => {
  const { t, needle, region } = await imageView();
  const dir = `${await Deno.makeTempDir({ prefix: "tardigrade-view-" })}/img`;
  try {
    await checkpoint(t.pid, dir, { leaveRunning: true });
    const live = await describe(await Process.open(t.pid), needle);
    using image = await ProcessImage.open(dir);
    const offline = await describe(image.root, needle);
    assert.deepEqual(offline, live);
    assert.equal(offline.needle, NEEDLE);
    assert.deepEqual(offline.environ, ["IMAGE_VIEW=needle-env"]);
    assert.equal(offline.rlimits.NOFILE.soft, 123n);
    assert.ok(offline.fds.includes("7 device /dev/null 32768 false"), offline.fds.join("\n"));
    assert.ok(offline.signals.ignored & (1n << 11n), "SIGUSR2 ignored");
    // An image's threads carry their registers; the instruction pointer is in a mapping.
    for await (const th of image.root.threads()) {
      assert.equal(th.tid, t.pid);
      assert.ok(await image.root.findMapping(th.regs.rip), `rip ${th.regs.rip}`);
    }
    // Every page of the region as the process has it (pattern bytes, needle), from the image.
    const bytes = await image.root.read(region, 32 * 4096);
    assert.deepEqual(bytes, await (await Process.open(t.pid)).read(region, 32 * 4096));
    // Memory the image has no bytes of is refused with the reason, not made up.
    const vdso = (await Array.fromAsync(image.root.mappings())).find((m) => m.kind === "vdso")!;
    await assert.rejects(() => image.root.read(vdso.start, 8), /\[vdso\] is the kernel's/);
    await assert.rejects(() => image.root.read(8n, 8), /no mapping there/);
    assert.equal(await t.check(), "PASS");
  } finally {
    await t.kill();
    await Deno.remove(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("image process: a script outside the checkout runs unchanged on a pid and an image", async () => {
  const { t, needle } = await imageView();
  const tmp = await Deno.makeTempDir({ prefix: "tardigrade-script-" });
  try {
    const dir = `${tmp}/img`;
    await checkpoint(t.pid, dir, { leaveRunning: true });
    const mod = new URL("../mod.ts", import.meta.url).href;
    await Deno.writeTextFile(
      `${tmp}/heap.ts`,
      `import { openTarget } from "${mod}";
using target = await openTarget(Deno.args[0]);
const p = target.processes[0];
let heap = "";
for await (const m of p.mappings()) if (m.kind === "heap") heap = m.start.toString(16);
const text = new TextDecoder().decode(await p.read(BigInt(Deno.args[1]), ${NEEDLE.length}));
console.log(JSON.stringify({ pid: p.pid, comm: await p.comm(), heap, text }));
`,
    );
    const onPid = await runDeno([`${tmp}/heap.ts`, String(t.pid), `0x${needle.toString(16)}`]);
    const onImage = await runDeno([`${tmp}/heap.ts`, dir, `0x${needle.toString(16)}`]);
    assert.equal(onPid.code, 0, onPid.stderr);
    assert.equal(onImage.code, 0, onImage.stderr);
    assert.equal(onImage.stdout, onPid.stdout);
    assert.equal(JSON.parse(onImage.stdout).text, NEEDLE);
  } finally {
    await t.kill();
    await Deno.remove(tmp, { recursive: true });
  }
});

Deno.test("search: a string at a known address is found there, live and in the image", async () => {
  const { t, needle } = await imageView();
  const dir = `${await Deno.makeTempDir({ prefix: "tardigrade-search-" })}/img`;
  try {
    await checkpoint(t.pid, dir, { leaveRunning: true });
    const bytes = new TextEncoder().encode(NEEDLE);
    // The SDK: the needle in the anonymous region, with its mapping and context.
    using image = await ProcessImage.open(dir);
    for (const p of [await Process.open(t.pid), image.root]) {
      const hits = (await Array.fromAsync(searchMemory(p, bytes)))
        .filter((h) => h.mapping.kind === "anonymous");
      assert.deepEqual(hits.map((h) => h.address), [needle], `pid ${p.pid}`);
      const h = hits[0];
      assert.ok(h.mapping.start <= needle && needle < h.mapping.end);
      assert.equal(h.mapping.perms, "rw-p");
      assert.deepEqual(h.context.subarray(h.contextOffset, h.contextOffset + bytes.length), bytes);
    }
    // The CLI: text, --hex and --regex, live and in the image, --json.
    const at = `0x${needle.toString(16)}`;
    const hexBytes = [...bytes].map((b) => b.toString(16).padStart(2, "0")).join(" ");
    for (const target of [String(t.pid), dir]) {
      for (
        const [args, address] of [
          [[NEEDLE], at],
          [["--hex", hexBytes], at],
          [["--regex", "needle-[0-9a-f]{4}"], `0x${(needle + 11n).toString(16)}`],
        ] as const
      ) {
        const r = await cli("search", target, ...args, "--json");
        assert.equal(r.code, 0, r.stderr);
        const rows = JSON.parse(r.stdout) as Record<string, unknown>[];
        const anon = rows.filter((x) => (x.mapping as { kind: string }).kind === "anonymous");
        assert.deepEqual(anon.map((x) => [x.pid, x.address]), [[t.pid, address]], r.stdout);
      }
      const table = await cli("search", target, NEEDLE);
      assert.equal(table.code, 0, table.stderr);
      assert.match(table.stdout, /^\s*PID\s+ADDRESS\s+PERMS\s+KIND\s+CONTEXT\s+PATH$/m);
      assert.match(
        table.stdout,
        new RegExp(`^\\s*${t.pid}\\s+${at}\\s+rw-p\\s+anonymous\\s+.*${NEEDLE}`, "m"),
      );
      assert.match(table.stdout, /^\d+ match(es)? in 1 process$/m);
    }
    assert.equal(await t.check(), "PASS");
  } finally {
    await t.kill();
    await Deno.remove(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

/** The region's page numbers that `diff` lists as changed. */
function regionPages(d: TargetDiff, region: bigint): number[] {
  const out: number[] = [];
  for (const m of d.processes[0].pages) {
    for (const r of m.changed) {
      for (let a = r.start; a < r.end; a += 4096n) {
        if (a >= region && a < region + 32n * 4096n) out.push(Number((a - region) / 4096n));
      }
    }
  }
  return out;
}

/** Asks image_view.c for generation `gen` of writes; returns the pages it wrote. */
async function write(t: Target, gen: number): Promise<number[]> {
  const from = t.output().length;
  Deno.kill(t.pid, "SIGHUP");
  const m = await t.waitFor(
    new RegExp(`^CHANGED gen=${gen} pages=(\\d+),(\\d+)$`, "m"),
    10_000,
    from,
  );
  return [Number(m[1]), Number(m[2])];
}

Deno.test("diff: the pages written between two dumps are exactly those listed", async () => {
  const { t, region } = await imageView();
  const base = await Deno.makeTempDir({ prefix: "tardigrade-diff-" });
  const [a, b, c] = ["a", "b", "c"].map((n) => `${base}/${n}`);
  try {
    await checkpoint(t.pid, a, { leaveRunning: true });
    const gen1 = await write(t, 1);
    await checkpoint(t.pid, b, { leaveRunning: true, parent: a }); // per-page checksums
    const gen2 = await write(t, 2);
    await checkpoint(t.pid, c, { leaveRunning: true }); // a separate image: bytes compared
    const sorted = (x: number[]) => [...new Set(x)].sort((p, q) => p - q);
    assert.deepEqual(regionPages(await diffTargets(a, b), region), sorted(gen1));
    assert.deepEqual(regionPages(await diffTargets(b, c), region), sorted(gen2));
    assert.deepEqual(regionPages(await diffTargets(a, c), region), sorted([...gen1, ...gen2]));
    // An image and the process as it runs now.
    assert.deepEqual(regionPages(await diffTargets(c, t.pid), region), []);
    const gen3 = await write(t, 3);
    const live = await diffTargets(c, t.pid);
    assert.deepEqual(regionPages(live, region), sorted(gen3));
    assert.equal(live.processes[0].threads.registersCompared, false);
    // Walking the chain: b's parent a, then b.
    const chain = await imageChain(b);
    assert.deepEqual(chain.map((d) => d.split("/").pop()), ["a", "b"]);
    const series = await Array.fromAsync(diffSeries([...chain, c]));
    assert.deepEqual(series.map((d) => regionPages(d, region)), [sorted(gen1), sorted(gen2)]);
    const one = series[0].processes[0];
    assert.deepEqual(one.mappings, { added: [], removed: [], changed: [] });
    assert.deepEqual(one.limits, []);
    assert.deepEqual(one.creds, []);
    // The CLI: the same pages in --json, and a summary.
    const r = await cli("diff", a, b, "--json");
    assert.equal(r.code, 0, r.stderr);
    const json = JSON.parse(r.stdout);
    const pages = (json.processes[0].pages as { changed: { start: string; end: string }[] }[])
      .flatMap((m) => m.changed)
      .map(({ start, end }) => ({ start: BigInt(start), end: BigInt(end) }));
    assert.deepEqual(
      regionPages({ ...json, processes: [{ pages: [{ changed: pages }] }] }, region),
      sorted(gen1),
    );
    const summary = await cli("diff", "--chain", b);
    assert.equal(summary.code, 0, summary.stderr);
    assert.match(
      summary.stdout,
      new RegExp(`^  process ${t.pid} \\(image_view\\): \\d+ pages? changed`, "m"),
    );
    const at = `0x${(region + BigInt(gen1[0]) * 4096n).toString(16)}`;
    assert.match(summary.stdout, new RegExp(`${at}-`));
    assert.equal(await t.check(), "PASS");
  } finally {
    await t.kill();
    await Deno.remove(base, { recursive: true });
  }
});

Deno.test("image process: a child reads the pages it shared with its parent from the parent's", async () => {
  const t = await spawnTarget(await fixture("r_cow_fork"), [], { ready: /^(READY|SETUP FAILED)/m });
  const dir = `${await Deno.makeTempDir({ prefix: "tardigrade-cow-" })}/img`;
  try {
    const m = t.output().match(/^READY \d+ child=(\d+) region=(0x[0-9a-f]+)/m);
    assert.ok(m, t.output());
    const [child, region] = [Number(m[1]), BigInt(m[2])];
    await checkpoint(t.pid, dir, { leaveRunning: true });
    using image = await ProcessImage.open(dir);
    const entry = image.process(child).entry;
    assert.ok(entry.mappings.some((x) => x.sharedWithParent?.length), "the image shares pages");
    assert.deepEqual((await image.root.children()).map((c) => c.pid), [child]);
    const live = await (await Process.open(child)).read(region, 34 * 4096);
    assert.deepEqual(await image.process(child).read(region, 34 * 4096), live);
    assert.equal(await t.check(), "PASS");
  } finally {
    await t.kill();
    await Deno.remove(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("image process: reading memory does not load the page files", async () => {
  const t = await spawnTarget(await fixture("incr_writer"), ["64"], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const dir = `${await Deno.makeTempDir({ prefix: "tardigrade-read-" })}/img`;
  try {
    const region = BigInt(t.output().match(/^READY \d+ region=(0x[0-9a-f]+)/m)![1]);
    await checkpoint(t.pid, dir, { leaveRunning: true });
    const live = await Process.open(t.pid);
    using image = await ProcessImage.open(dir);
    const before = Deno.memoryUsage().external;
    const [a, b] = [new Uint8Array(1 << 20), new Uint8Array(1 << 20)];
    for (let at = 0n; at < 64n << 20n; at += 1n << 20n) {
      assert.equal(await image.root.readInto(region + at, a), a.length);
      assert.equal(await live.readInto(region + at, b), b.length);
      assert.ok(a.every((x, i) => x === b[i]), `MiB ${at >> 20n} differs`);
    }
    // 64 MiB read a megabyte at a time: far less than the page file stays allocated.
    const grown = Deno.memoryUsage().external - before;
    assert.ok(grown < 16 << 20, `${grown} bytes of buffers after reading`);
    const hits = await Array.fromAsync(
      searchMemory(image.root, new TextEncoder().encode("zz-none")),
    );
    assert.deepEqual(hits, []);
  } finally {
    await t.kill();
    await Deno.remove(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

/** Bytes this process has read so far (rchar of /proc/self/io: every read, cached or not). */
function bytesRead(): number {
  return Number(Deno.readTextFileSync("/proc/self/io").match(/^rchar: (\d+)$/m)![1]);
}

Deno.test("diff: a dump --parent chain is compared from its checksums, not its page data", async () => {
  const t = await spawnTarget(await fixture("incr_writer"), ["64"], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const base = await Deno.makeTempDir({ prefix: "tardigrade-diffsum-" });
  const [a, b, c, d] = ["a", "b", "c", "d"].map((n) => `${base}/${n}`);
  try {
    const region = BigInt(t.output().match(/^READY \d+ region=(0x[0-9a-f]+)/m)![1]);
    const change = async (gen: number) => {
      const from = t.output().length;
      Deno.kill(t.pid, "SIGUSR2");
      const m = await t.waitFor(
        new RegExp(`^CHANGED gen=${gen} pages=([\\d,]+)$`, "m"),
        10_000,
        from,
      );
      return m[1].split(",").map(Number);
    };
    await checkpoint(t.pid, a, { leaveRunning: true });
    await change(1);
    await checkpoint(t.pid, b, { leaveRunning: true, parent: a });
    const gen2 = await change(2);
    await checkpoint(t.pid, c, { leaveRunning: true, parent: b });
    await checkpoint(t.pid, d, { leaveRunning: true }); // the same memory, in an image of its own
    const inRegion = (x: TargetDiff) =>
      x.processes[0].pages.flatMap((m) => m.changed).filter((r) =>
        r.start >= region && r.start < region + (64n << 20n)
      ).flatMap((r) => {
        const out: number[] = [];
        for (let p = r.start; p < r.end; p += 4096n) out.push(Number((p - region) / 4096n));
        return out;
      });
    // b → c: both have per-page checksums; unchanged pages are the same bytes of a's or b's
    // page file: the 64 MiB region is compared without reading it.
    let from = bytesRead();
    const chained = await diffTargets(b, c);
    const readChained = bytesRead() - from;
    assert.deepEqual(inRegion(chained), [...new Set(gen2)].sort((x, y) => x - y));
    assert.ok(readChained < 8 << 20, `${readChained} bytes read for a chain`);
    // c → d: d has its own copy of every page: they are read and compared, and found equal.
    from = bytesRead();
    const separate = await diffTargets(c, d);
    assert.ok(bytesRead() - from > 64 << 20, "separate images are compared by their bytes");
    assert.deepEqual(inRegion(separate), []);
  } finally {
    await t.kill();
    await Deno.remove(base, { recursive: true });
  }
});
