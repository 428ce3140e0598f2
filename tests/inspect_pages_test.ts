import assert from "node:assert/strict";
import { type PageRegion, Process } from "../mod.ts";
import { pagesFromPagemap } from "../lib/inspect/pages.ts";
import { fixture, spawnTarget, withTarget } from "./helpers.ts";

const PAGE = 4096n;

/** Reads the raw 8-byte pagemap entries of `count` pages from `addr`, independently of the SDK. */
function pagemapEntries(pid: number, addr: bigint, count: number): bigint[] {
  const f = Deno.openSync(`/proc/${pid}/pagemap`);
  try {
    f.seekSync(Number(addr / PAGE) * 8, Deno.SeekMode.Start);
    const buf = new Uint8Array(count * 8);
    let got = 0;
    while (got < buf.length) got += f.readSync(buf.subarray(got))!;
    return [...new BigUint64Array(buf.buffer)];
  } finally {
    f.close();
  }
}

/** The state of each page of [addr, addr + count pages) according to a region list. */
function perPage(regions: PageRegion[], addr: bigint, count: number) {
  return Array.from({ length: count }, (_, i) => {
    const a = addr + BigInt(i) * PAGE;
    return regions.find((r) => r.start <= a && a < r.end) ?? null;
  });
}

async function startPagesFixture() {
  const t = await spawnTarget(await fixture("inspect_pages"), [], { ready: /READY/ });
  const region = BigInt((await t.waitFor(/^region (0x[0-9a-f]+)$/m))[1]);
  const big = BigInt((await t.waitFor(/^big (0x[0-9a-f]+)$/m))[1]);
  return { t, region, big };
}

Deno.test("pages: PAGEMAP_SCAN agrees with pagemap on pages 0, 2, 5 of 8", async () => {
  const { t, region, big } = await startPagesFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    const regions: PageRegion[] = [];
    for await (const r of p.pages({ start: region, end: region + 8n * PAGE })) regions.push(r);
    const present = perPage(regions, region, 8).map((r) => r?.present ?? false);
    const entries = pagemapEntries(t.pid, region, 8);
    assert.deepEqual(present, entries.map((e) => (e >> 63n) === 1n));
    // pages 0, 2, 5 written; page 7 was only read: present, as the shared zero page
    assert.deepEqual(present, [true, false, true, false, false, true, false, true]);
    assert.equal(perPage(regions, region, 8)[7]?.zero, true);
    assert.equal(perPage(regions, region, 8)[0]?.zero, false);

    // the whole address space: every page the SDK calls present is present in pagemap
    const everything: PageRegion[] = [];
    for await (const r of p.pages()) everything.push(r);
    const bigRegion = everything.find((r) => r.start <= big && big < r.end)!;
    assert.ok(bigRegion.present && bigRegion.end - big >= 1n << 20n);

    // the pagemap fallback gives the same present/swapped/file answer
    const fallback = pagesFromPagemap(t.pid, { start: region, end: region + 8n * PAGE });
    assert.deepEqual(perPage(fallback, region, 8).map((r) => r?.present ?? false), present);
  });
});

Deno.test("pages: dumpableRanges merges present pages", async () => {
  const { t, region, big } = await startPagesFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    assert.deepEqual(await p.dumpableRanges(region, region + 8n * PAGE), [
      { start: region, end: region + PAGE },
      { start: region + 2n * PAGE, end: region + 3n * PAGE },
      { start: region + 5n * PAGE, end: region + 6n * PAGE },
      { start: region + 7n * PAGE, end: region + 8n * PAGE },
    ]);
    // without the zero page (page 7 was only read)
    assert.deepEqual(
      await p.dumpableRanges(region, region + 8n * PAGE, { skipZero: true }),
      [
        { start: region, end: region + PAGE },
        { start: region + 2n * PAGE, end: region + 3n * PAGE },
        { start: region + 5n * PAGE, end: region + 6n * PAGE },
      ],
    );
    assert.deepEqual(await p.dumpableRanges(big, big + (1n << 20n)), [
      { start: big, end: big + (1n << 20n) },
    ]);
  });
});
