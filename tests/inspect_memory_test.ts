import assert from "node:assert/strict";
import { Process } from "../mod.ts";
import { fixture, spawnTarget, withTarget } from "./helpers.ts";

const text = (b: Uint8Array) => new TextDecoder().decode(b.subarray(0, b.indexOf(0)));
const cstr = (s: string) => new TextEncoder().encode(s + "\0");

async function startMemFixture() {
  const t = await spawnTarget(await fixture("inspect_mem"), [], { ready: /READY/ });
  const at = (name: string) =>
    BigInt(t.output().match(new RegExp(`^${name} (0x[0-9a-f]+)$`, "m"))![1]);
  return { t, heap: at("heap"), ro: at("ro"), none: at("none") };
}

Deno.test("memory: read returns what the fixture wrote; write changes it", async () => {
  const { t, heap, ro, none } = await startMemFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    assert.equal(text(await p.read(heap, 32)), "tardigrade-read-me");
    assert.equal(text(await p.read(ro, 32)), "read-only-page");
    // PROT_NONE: process_vm_readv faults, /proc/PID/mem reads through
    assert.equal(text(await p.read(none, 32)), "no-access-page");

    const buf = new Uint8Array(64);
    assert.equal(await p.readInto(heap, buf.subarray(8, 40)), 32);
    assert.equal(text(buf.subarray(8)), "tardigrade-read-me");

    await p.write(heap, cstr("written-by-sdk"));
    await p.write(ro, cstr("ro-written")); // read-only mapping: through /proc/PID/mem
    assert.equal(await t.check(), "PASS");
    assert.equal(text(await p.read(ro, 32)), "ro-written");
  });
});

Deno.test("memory: unmapped addresses fail clearly, readInto stops short", async () => {
  const { t, heap } = await startMemFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    await assert.rejects(p.read(0x1000n, 16), /EFAULT/);
    await assert.rejects(p.write(0x1000n, cstr("x")), /EFAULT/);
    const maps = await Array.fromAsync(p.mappings());
    // the last page of a mapping followed by a hole: a read across the end stops at the end
    const m = maps.find((m, i) => m.kind === "anonymous" && maps[i + 1]?.start !== m.end)!;
    const buf = new Uint8Array(8192);
    assert.equal(await p.readInto(m.end - 4096n, buf), 4096);
    assert.equal(text(await p.read(heap, 32)), "tardigrade-read-me");
  });
});
