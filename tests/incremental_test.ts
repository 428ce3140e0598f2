/**
 * Incremental dumps (`parent`): a chain full → child → grandchild of a process that changes a
 * few pages between dumps writes only those pages, restores from the last image with the latest
 * writes, is verified through the chain, and is refused with a clear reason when a parent is
 * missing or was replaced. A parent of another process works too, only with fewer equal pages.
 */
import assert from "node:assert/strict";
import { checkpoint, ImageError, ImageReader, Process, restore } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import { parentDirOf, recordedParentPath } from "../lib/image/parent.ts";
import { cli, fixture, isAlive, spawnTarget, type Target } from "./helpers.ts";

const MiB = 1024 * 1024;
const PAGE = 4096;

/** The fixture's word `i` as generation `g` wrote it (incr_writer.c's word_at). */
function wordAt(i: number, g: number): bigint {
  const base = BigInt.asUintN(64, BigInt(i) * 0x9E3779B97F4A7C15n) ^ 0xC0FFEE5EED5n;
  return base ^ BigInt.asUintN(64, BigInt(g) * 0x0101010101010101n);
}

/** Bytes in the page files of the image `dir`. */
function pageFileBytes(dir: string): number {
  let n = 0;
  for (const e of Deno.readDirSync(dir)) {
    if (/^pages-\d+\.img$/.test(e.name)) n += Deno.statSync(`${dir}/${e.name}`).size;
  }
  return n;
}

/** Asks the fixture for a new generation of writes; returns the region pages it wrote. */
async function change(t: Target, gen: number): Promise<number[]> {
  const from = t.output().length;
  Deno.kill(t.pid, "SIGUSR2");
  const m = await t.waitFor(new RegExp(`^CHANGED gen=${gen} pages=([\\d,]+)$`, "m"), 10_000, from);
  return m[1].split(",").map(Number);
}

async function refused(fn: () => Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof ImageError, `not an ImageError: ${err}`);
    assert.match(err.message, re);
    return true;
  });
}

Deno.test("incremental: a chain of dumps writes only changed pages and restores the latest", async () => {
  const t = await spawnTarget(await fixture("incr_writer"), ["64"], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const base = await Deno.makeTempDir({ prefix: "tardigrade-incr-" });
  const [a, b, c, other] = ["a", "b", "c", "other"].map((n) => `${base}/${n}`);
  let restored: number | undefined;
  try {
    const region = BigInt(t.output().match(/^READY \d+ region=(0x[0-9a-f]+)/m)![1]);
    const full = await checkpoint(t.pid, a, { leaveRunning: true });
    assert.equal(full.incremental, undefined);
    const gen1 = await change(t, 1);
    const second = await checkpoint(t.pid, b, { parent: a, leaveRunning: true });
    const gen2 = await change(t, 2);
    const third = await checkpoint(t.pid, c, { parent: b, leaveRunning: true });
    // The same process dumped in full again: it will stand in for a replaced parent.
    await checkpoint(t.pid, other, { leaveRunning: true });

    assert.ok(full.pageBytes >= 64 * MiB, `full dump wrote ${full.pageBytes}`);
    for (const r of [second, third]) {
      assert.ok(r.incremental && r.incremental.reusedBytes >= 60 * MiB, JSON.stringify(r));
      assert.ok(r.pageBytes < full.pageBytes / 10, `wrote ${r.pageBytes} of ${full.pageBytes}`);
    }
    assert.ok(pageFileBytes(c) < pageFileBytes(a) / 10, `${pageFileBytes(c)} ${pageFileBytes(a)}`);
    {
      // Pages unchanged since the full dump live in the grandparent: `image: 2`.
      using image = await ImageReader.open(c);
      assert.equal(image.manifest.format, 2);
      assert.equal(image.manifest.parent?.path, b); // absolute, as given
      const entry = await image.readMeta<ProcessEntry>("process");
      assert.ok(entry.extents.some((e) => e.image === 2), "an extent in the grandparent");
      assert.ok(entry.mappings.some((m) => m.pages.some((r) => r.checksums)), "block tables");
    }
    // The full image has the format of images without a parent, unchanged.
    assert.equal((await ImageReader.open(a)).manifest.format, 1);

    const inspected = await cli("inspect", c, "--verify", "--json");
    assert.equal(inspected.code, 0, inspected.stderr);
    const report = JSON.parse(inspected.stdout);
    assert.equal(report.verified, true);
    assert.deepEqual(report.parents, [b, a]);

    await t.kill();
    const res = await restore(c);
    restored = res.pid;
    assert.equal(res.pid, t.pid);
    assert.equal(await t.check(), "PASS", t.output());
    assert.match(t.output(), /^GEN 2$/m);
    const p = await Process.open(t.pid);
    const expect = async (page: number, gen: number) => {
      const word = page * PAGE / 8;
      const bytes = await p.read(region + BigInt(page * PAGE), 8);
      const got = new DataView(bytes.buffer, bytes.byteOffset).getBigUint64(0, true);
      assert.equal(got, wordAt(word, gen), `page ${page} should hold generation ${gen}`);
    };
    for (const page of gen2) await expect(page, 2);
    for (const page of gen1.filter((x) => !gen2.includes(x))) await expect(page, 1);
    await expect(
      [...Array(64 * 256).keys()].find((x) => !gen1.includes(x) && !gen2.includes(x))!,
      0,
    );
    await t.kill();
    restored = undefined;

    // The grandparent missing: refused, naming it.
    await Deno.rename(a, `${a}-moved`);
    await refused(
      () => restore(c),
      new RegExp(`image ${b} needs its parent ${a}, which is missing`),
    );
    const failed = await cli("inspect", c, "--verify");
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /needs its parent .*, which is missing/);
    await Deno.rename(`${a}-moved`, a);
    // The parent replaced by another image at the same path: refused, naming it.
    await Deno.rename(b, `${b}-orig`);
    await Deno.rename(other, b);
    await refused(
      () => restore(c),
      new RegExp(`image ${c} needs its parent ${b} as it was when .* was replaced or changed`),
    );
    assert.ok(!isAlive(t.pid), "nothing restored after a refusal");
  } finally {
    await t.kill();
    if (restored !== undefined) await t.kill(restored);
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

Deno.test("incremental: a parent of another process works, finding fewer equal pages", async () => {
  const bin = await fixture("incr_writer");
  const one = await spawnTarget(bin, ["4"], { ready: /^READY /m });
  const two = await spawnTarget(bin, ["8"], { ready: /^READY /m });
  const base = await Deno.makeTempDir({ prefix: "tardigrade-incr-" });
  try {
    await checkpoint(one.pid, `${base}/one`, { leaveRunning: true });
    await change(two, 1);
    const r = await cli(
      "dump",
      String(two.pid),
      `${base}/two`,
      "--parent",
      `${base}/one`,
      "--json",
    );
    assert.equal(r.code, 0, r.stderr);
    const result = JSON.parse(r.stdout);
    assert.equal(result.incremental.parent, `${base}/one`);
    assert.ok(result.pageBytes >= 8 * MiB, `wrote ${result.pageBytes}`);
    assert.ok(!isAlive(two.pid));
    const res = await restore(`${base}/two`);
    assert.equal(res.pid, two.pid);
    assert.equal(await two.check(), "PASS", two.output());
    assert.match(two.output(), /^GEN 1$/m);
  } finally {
    await one.kill();
    await two.kill();
    await Deno.remove(base, { recursive: true }).catch(() => {});
  }
});

Deno.test("incremental: a relative parent path is kept relative to the image's directory", () => {
  assert.equal(recordedParentPath("/x/b", "/x/a"), "/x/a");
  assert.equal(recordedParentPath(`${Deno.cwd()}/imgs/b`, "imgs/a"), "a");
  const link = { path: "a", manifestChecksum: 0, createdAt: "" };
  assert.equal(parentDirOf("/x/b", link), "/x/a");
  assert.equal(parentDirOf("/x/b", { ...link, path: "/y/a" }), "/y/a");
});
