/**
 * Picks the image checksum by measurement: every candidate over the same 64 MiB buffer, then the
 * real dump path (`PageSink.append` from a reused buffer) and restore path (`readExtent`).
 *
 *   deno run -A bench/checksum.ts
 */
import { createHash } from "node:crypto";
import { crc32 } from "node:zlib";
import { ImageReader, ImageWriter, type PageExtent } from "../lib/image/mod.ts";

const SIZE = 64 << 20;
const REPS = 8;
const buf = new Uint8Array(SIZE);
for (let i = 0; i < SIZE; i += 65536) crypto.getRandomValues(buf.subarray(i, i + 65536));

function rate(bytes: number, ms: number): string {
  return `${(bytes / (ms / 1000) / 1e9).toFixed(2)} GB/s`;
}

/** Runs `f` once to warm up, then `reps` times; prints the throughput. */
function measure(name: string, f: () => unknown, reps = REPS): void {
  f();
  const t = performance.now();
  for (let i = 0; i < reps; i++) f();
  console.log(`${name.padEnd(34)} ${rate(SIZE * reps, performance.now() - t)}`);
}

function tryDlopen<S extends Deno.ForeignLibraryInterface>(path: string, symbols: S) {
  try {
    return Deno.dlopen(path, symbols).symbols;
  } catch {
    console.log(`${path.padEnd(34)} not installed`);
    return undefined;
  }
}

/** CRC-32C, slicing-by-8 over Uint32 words: the best a pure-JS CRC does. */
function makeCrc32c(): (b: Uint8Array) => number {
  const t = new Uint32Array(256 * 8);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0x82f63b78 ^ (c >>> 1) : c >>> 1;
    t[n] = c;
  }
  for (let n = 0; n < 256; n++) {
    for (let k = 1; k < 8; k++) {
      t[k * 256 + n] = (t[(k - 1) * 256 + n] >>> 8) ^ t[t[(k - 1) * 256 + n] & 0xff];
    }
  }
  return (b) => {
    const w = new Uint32Array(b.buffer, b.byteOffset, b.byteLength >>> 2);
    let c = ~0;
    for (let i = 0; i < w.length; i += 2) {
      const a = w[i] ^ c, d = w[i + 1];
      c = t[1792 + (a & 0xff)] ^ t[1536 + ((a >>> 8) & 0xff)] ^ t[1280 + ((a >>> 16) & 0xff)] ^
        t[1024 + (a >>> 24)] ^ t[768 + (d & 0xff)] ^ t[512 + ((d >>> 8) & 0xff)] ^
        t[256 + ((d >>> 16) & 0xff)] ^ t[d >>> 24];
    }
    return ~c >>> 0;
  };
}

console.log("## checksum candidates (64 MiB buffer)");
const copy = new Uint8Array(SIZE);
measure("memcpy (baseline)", () => copy.set(buf));
measure("node:zlib crc32  <- chosen", () => crc32(buf));
const libz = tryDlopen("libz.so.1", {
  crc32: { parameters: ["u64", "buffer", "u32"], result: "u64" },
});
if (libz) measure("FFI libz.so.1 crc32", () => libz.crc32(0n, buf, SIZE));
const xxh = tryDlopen("libxxhash.so.0", {
  XXH3_64bits: { parameters: ["buffer", "usize"], result: "u64" },
  XXH64: { parameters: ["buffer", "usize", "u64"], result: "u64" },
});
if (xxh) {
  measure("FFI libxxhash XXH3_64bits", () => xxh.XXH3_64bits(buf, BigInt(SIZE)));
  measure("FFI libxxhash XXH64", () => xxh.XXH64(buf, BigInt(SIZE), 0n));
}
for (const alg of ["md5", "sha1", "sha256"]) {
  measure(`node:crypto ${alg}`, () => createHash(alg).update(buf).digest(), 2);
}
const crc32c = makeCrc32c();
measure("JS crc32c slicing-by-8", () => crc32c(buf), 2);
{
  await crypto.subtle.digest("SHA-256", buf);
  const t = performance.now();
  for (let i = 0; i < 2; i++) await crypto.subtle.digest("SHA-256", buf);
  console.log(`${"crypto.subtle SHA-256".padEnd(34)} ${rate(SIZE * 2, performance.now() - t)}`);
}

console.log("\n## image path (1 GiB through a reused 64 MiB buffer, page cache, no fsync)");
// First touch of fresh memory is slow on these VMs: a warm-up pass makes the page cache reuse
// memory the guest already touched, so the timings compare code, not the hypervisor.
const total = 1024 ** 3;
const tmp = await Deno.makeTempDir({ prefix: "tardigrade-bench-" });

/** Plain `writeSync` of `total` bytes to a new file: the floor the sink is measured against. */
function rawWrite(path: string): number {
  using f = Deno.openSync(path, { write: true, createNew: true });
  const t = performance.now();
  for (let done = 0; done < total; done += SIZE) {
    for (let o = 0; o < SIZE;) o += f.writeSync(buf.subarray(o));
  }
  return performance.now() - t;
}

try {
  rawWrite(`${tmp}/warm-up`);
  await Deno.remove(`${tmp}/warm-up`);
  for (let round = 1; round <= 2; round++) {
    const raw = rawWrite(`${tmp}/raw`);
    await Deno.remove(`${tmp}/raw`);
    console.log(`${`plain writeSync (round ${round})`.padEnd(34)} ${rate(total, raw)}`);

    const extents: PageExtent[] = [];
    const w = await ImageWriter.create(`${tmp}/img`, { sync: false });
    const sink = w.pages();
    let t = performance.now();
    for (let done = 0; done < total; done += SIZE) extents.push(sink.append(buf));
    console.log(
      `${`PageSink.append (round ${round})`.padEnd(34)} ${rate(total, performance.now() - t)}`,
    );
    await w.commit();

    using image = await ImageReader.open(`${tmp}/img`);
    t = performance.now();
    for (const e of extents) image.readExtent(e, copy);
    console.log(`${"readExtent (verified)".padEnd(34)} ${rate(total, performance.now() - t)}`);
    t = performance.now();
    for (const e of extents) image.readExtent(e, copy, { verify: false });
    console.log(`${"readExtent (no verify)".padEnd(34)} ${rate(total, performance.now() - t)}`);
    t = performance.now();
    await image.verify();
    console.log(
      `${"ImageReader.verify (whole image)".padEnd(34)} ${rate(total, performance.now() - t)}`,
    );
    image.close();
    await Deno.remove(`${tmp}/img`, { recursive: true });
  }
} finally {
  await Deno.remove(tmp, { recursive: true });
}
