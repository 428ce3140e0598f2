/**
 * Pre-copy checkpoints (`preCopy: true`): a target that keeps writing part of its memory while it
 * is copied is restored intact (pages written after arming are copied again, a mapping replaced
 * meanwhile too, the rest reused), and with `leaveRunning` it is left exactly as it was: same
 * maps, same descriptors (no userfaultfd), not traced, and no longer write-protected.
 */
import assert from "node:assert/strict";
import { checkpoint, Process, restore } from "../mod.ts";
import { PrecopiedPages } from "../lib/dump/precopy.ts";
import { fixture, spawnTarget, type Target, waitUntil } from "./helpers.ts";

function fdsOf(pid: number): string[] {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].map((e) => e.name).sort().map((fd) =>
    `${fd} ${Deno.readLinkSync(`/proc/${pid}/fd/${fd}`)}`
  );
}

function tracerOf(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).match(/^TracerPid:\s+(\d+)/m)![1];
}

const MiB = 1024 * 1024;

/** Page visits of the writer so far: the sum of the generations of its 1024 rolling pages. */
async function rollingWrites(t: Target): Promise<bigint> {
  const roll = BigInt(t.output().match(/\broll=(0x[0-9a-f]+)/)![1]);
  const pages = await (await Process.open(t.pid)).read(roll, 1024 * 4096);
  const view = new DataView(pages.buffer, pages.byteOffset, pages.byteLength);
  let sum = 0n;
  for (let at = 0; at < pages.length; at += 4096) sum += view.getBigUint64(at, true);
  return sum;
}

Deno.test("precopy: a target writing while it is copied restores intact", async () => {
  const t = await spawnTarget(await fixture("precopy_writer"), [], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const img = await Deno.makeTempDir({ prefix: "tardigrade-precopy-" });
  let restored: number | undefined;
  try {
    assert.match(t.output(), /^READY /m, t.output());
    assert.equal(await t.check(), "PASS");
    const r = await checkpoint(t.pid, img + "/image", { preCopy: true });
    assert.ok(r.killed);
    assert.ok(r.preCopy, "pre-copy result");
    // The 8 MiB static block and most of the rolling region are reused; the window is not.
    assert.ok(r.preCopy.reusedBytes >= 8 * MiB, `reused ${r.preCopy.reusedBytes}`);
    assert.ok(r.preCopy.reusedBytes < r.preCopy.copiedBytes, JSON.stringify(r.preCopy));
    const res = await restore(img + "/image");
    restored = res.pid;
    assert.equal(res.pid, t.pid);
    assert.equal(await t.check(), "PASS", t.output());
    // It runs on, writing (a few turns of its window), and stays consistent.
    const atRestore = await rollingWrites(t);
    let now = atRestore;
    await waitUntil(
      async () => (now = await rollingWrites(t)) >= atRestore + 64n,
      5000,
      () => `64 page writes after the restore: ${now - atRestore}`,
    );
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await t.kill();
    if (restored !== undefined && restored !== t.pid) await t.kill(restored);
    await Deno.remove(img, { recursive: true }).catch(() => {});
  }
});

Deno.test("precopy: leaveRunning leaves maps, fds and tracer as they were", async () => {
  const t = await spawnTarget(await fixture("precopy_writer"), [], { ready: /^READY /m });
  const img = await Deno.makeTempDir({ prefix: "tardigrade-precopy-" });
  try {
    const maps = Deno.readTextFileSync(`/proc/${t.pid}/maps`);
    const fds = fdsOf(t.pid);
    const r = await checkpoint(t.pid, img + "/a", { preCopy: true, leaveRunning: true });
    assert.ok(!r.killed);
    assert.ok(r.preCopy && r.preCopy.reusedBytes > 0);
    assert.equal(Deno.readTextFileSync(`/proc/${t.pid}/maps`), maps);
    assert.deepEqual(fdsOf(t.pid), fds);
    assert.ok(!fds.some((f) => f.includes("userfaultfd")));
    assert.equal(tracerOf(t.pid), "0");
    assert.equal(await t.check(), "PASS", t.output());
    // The image is an ordinary one: same processes and mappings as a plain dump.
    const plain = await checkpoint(t.pid, img + "/b", { leaveRunning: true });
    assert.equal(r.mappings, plain.mappings);
    assert.equal(r.fds, plain.fds);
  } finally {
    await t.kill();
    await Deno.remove(img, { recursive: true }).catch(() => {});
  }
});

Deno.test("precopy: splitting a range over reusable runs", () => {
  const p = new PrecopiedPages([
    { start: 0x1000n, length: 0x2000, extent: 0, offset: 0 },
    { start: 0x3000n, length: 0x1000, extent: 0, offset: 0x2000 },
    { start: 0x6000n, length: 0x1000, extent: 1, offset: 0 },
  ]);
  assert.deepEqual(p.split(0n, 0x8000n), [
    { start: 0n, end: 0x1000n },
    {
      start: 0x1000n,
      end: 0x4000n,
      runs: [{ start: 0x1000n, length: 0x3000, extent: 0, offset: 0 }],
    },
    { start: 0x4000n, end: 0x6000n },
    {
      start: 0x6000n,
      end: 0x7000n,
      runs: [{ start: 0x6000n, length: 0x1000, extent: 1, offset: 0 }],
    },
    { start: 0x7000n, end: 0x8000n },
  ]);
  assert.deepEqual(p.split(0x2000n, 0x3000n), [
    {
      start: 0x2000n,
      end: 0x3000n,
      runs: [{ start: 0x2000n, length: 0x1000, extent: 0, offset: 0x1000 }],
    },
  ]);
});
