import assert from "node:assert/strict";
import { ImageError, ImageReader, ImageWriter, TOOL_VERSION } from "../mod.ts";
import { BASE_FORMAT_VERSION, FORMAT_VERSION, type PageExtent } from "../image.ts";
import { decodePayload, frame, unframe } from "../lib/image/frame.ts";
import { crc32 } from "node:zlib";
import { alignedBytes, cachedPages, close, libzCrc32, O, open } from "../ffi/mod.ts";
import { checksum, combineChecksums } from "../lib/image/checksum.ts";
import { fixture, needs, spawnTarget, waitUntil } from "./helpers.ts";
import { checkpoint } from "../mod.ts";
import type { PageRun, ProcessEntry } from "../lib/image/schema.ts";
import { validateProcessEntry } from "../lib/image/validate.ts";

/** A fresh scratch directory, removed with everything in it at the end of the `using` block. */
function scratch(): { path: string } & Disposable {
  const path = Deno.makeTempDirSync({ prefix: "tardigrade-image-" });
  return { path, [Symbol.dispose]: () => Deno.removeSync(path, { recursive: true }) };
}

function list(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** Fills `buf` with a pattern that differs for every `seed`, so misplaced bytes show. */
function pattern(buf: Uint8Array, seed: number): Uint8Array {
  const words = new Uint32Array(buf.buffer, buf.byteOffset, buf.byteLength >>> 2);
  for (let i = 0; i < words.length; i++) words[i] = Math.imul(i + 1, 2654435761) ^ seed;
  return buf;
}

function flipByte(path: string, offset: number): void {
  using f = Deno.openSync(path, { read: true, write: true });
  const b = new Uint8Array(1);
  f.seekSync(offset, Deno.SeekMode.Start);
  f.readSync(b);
  b[0] ^= 0x40;
  f.seekSync(offset, Deno.SeekMode.Start);
  f.writeSync(b);
}

async function rejectsWith(p: Promise<unknown>, re: RegExp): Promise<void> {
  await assert.rejects(p, (err: Error) => {
    assert.ok(err instanceof ImageError, `expected ImageError, got ${err}`);
    assert.match(err.message, re);
    return true;
  });
}

function throwsWith(f: () => unknown, re: RegExp): void {
  assert.throws(f, (err: Error) => {
    assert.ok(err instanceof ImageError, `expected ImageError, got ${err}`);
    assert.match(err.message, re);
    return true;
  });
}

const MiB = 1 << 20;

/** Writes a small image with metadata and three extents over two page files. */
async function writeSample(dir: string): Promise<PageExtent[]> {
  await using w = await ImageWriter.create(dir, { rollSize: 2 * MiB });
  await w.writeMeta("core", { pid: 42, start: 0x7fff_0000_1000n, name: "sample" });
  const buf = new Uint8Array(MiB);
  const sink = w.pages();
  const extents = [1, 2, 3].map((seed) => sink.append(pattern(buf, seed)));
  await w.commit();
  return extents;
}

Deno.test("metadata round-trips bigint, bytes, nested values, null and undefined", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  const value = {
    pid: 1234,
    addr: 0x7f12_3456_7000n,
    max: 0xffff_ffff_ffff_ffffn,
    negative: -5n,
    bytes: new Uint8Array([0, 1, 2, 254, 255]),
    nested: [{ regs: [1n, 2n, { fs: new Uint8Array(16).fill(7) }] }, [], {}],
    none: null,
    missing: undefined,
    text: "héllo",
    float: 0.5,
  };
  const w = await ImageWriter.create(dir);
  await w.writeMeta("core", value);
  await w.writeMeta("threads.cbor", [{ tid: 1 }, { tid: 2 }]);
  const written = await w.commit();
  // Without a parent an image is written as format 1, readable by tools that know only it.
  assert.equal(written.format, BASE_FORMAT_VERSION);

  using image = await ImageReader.open(dir, { verify: true });
  assert.deepEqual(await image.readMeta("core"), value);
  assert.deepEqual(await image.readMeta("threads"), [{ tid: 1 }, { tid: 2 }]);
  assert.deepEqual(image.metaNames(), ["core", "threads"]);
  assert.ok(image.hasMeta("core.cbor") && !image.hasMeta("mm"));
  await rejectsWith(image.readMeta("mm"), /^mm\.cbor: no such metadata/);

  const m = image.manifest;
  assert.equal(m.format, 1);
  assert.equal(m.toolVersion, TOOL_VERSION);
  assert.equal(m.kernel, Deno.osRelease());
  assert.equal(m.arch, "x86_64");
  assert.equal(m.checksum, "crc32");
  assert.ok(Math.abs(Date.parse(m.createdAt) - Date.now()) < 60_000);
  assert.deepEqual(m.files.map((f) => f.name), ["core.cbor", "threads.cbor"]);
  for (const f of m.files) assert.equal(f.size, Deno.statSync(`${dir}/${f.name}`).size);
});

Deno.test("page extents round-trip from a reused buffer and roll to a second file", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  const sizes = [3 * MiB, MiB + 4096, 4096, 2 * MiB, 0, 5 * MiB];
  const buf = new Uint8Array(8 * MiB); // reused for every append, as a dumper does
  const extents: PageExtent[] = [];
  {
    await using w = await ImageWriter.create(dir, { rollSize: 4 * MiB });
    const sink = w.pages();
    assert.equal(w.pages(), sink);
    for (const [i, size] of sizes.entries()) {
      extents.push(sink.append(pattern(buf.subarray(0, size), i)));
    }
    assert.equal(sink.bytesWritten, sizes.reduce((a, b) => a + b));
    await w.commit();
  }
  // 3 MiB + 1 MiB+4 KiB passes 4 MiB: the second extent opens pages-1; the 5 MiB one is alone.
  assert.deepEqual(extents.map((e) => [e.file, e.offset]), [
    ["pages-0.img", 0],
    ["pages-1.img", 0],
    ["pages-1.img", MiB + 4096],
    ["pages-1.img", MiB + 8192],
    ["pages-1.img", 3 * MiB + 8192],
    ["pages-2.img", 0],
  ]);
  using image = await ImageReader.open(dir, { verify: true });
  const into = new Uint8Array(8 * MiB);
  const expected = new Uint8Array(8 * MiB);
  for (const [i, e] of extents.entries()) {
    const got = image.readExtent(e, into);
    assert.equal(got.buffer, into.buffer);
    assert.equal(got.length, sizes[i]);
    assert.deepEqual(got, pattern(expected.subarray(0, sizes[i]), i));
  }
  assert.deepEqual(image.readExtent(extents[2]), pattern(new Uint8Array(4096), 2));
  throwsWith(() => image.readExtent({ ...extents[0], file: "core.cbor" }), /not a page file/);
  throwsWith(
    () => image.readExtent({ ...extents[0], offset: 2 * MiB }),
    /^pages-0\.img: extent at offset 2097152 .* runs past the end/,
  );
});

Deno.test("page data bypasses the page cache where aligned, and reads back whole either way", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  const buf = alignedBytes(8 * MiB);
  // [start in buf, length]: whole pages of an aligned buffer (O_DIRECT), a length that ends
  // mid-page, whole pages at the unaligned offset it leaves, whole pages from an unaligned address.
  const pieces: [number, number, "now" | "later"][] = [
    [0, 2 * MiB, "later"],
    [2 * MiB, 5000, "now"],
    [4 * MiB, MiB, "later"],
    [6 * MiB + 16, 8192, "now"],
  ];
  const extents: PageExtent[] = [];
  {
    await using w = await ImageWriter.create(dir);
    const sink = w.pages();
    for (const [i, [at, length, when]] of pieces.entries()) {
      const bytes = pattern(buf.subarray(at, at + length), i);
      if (when === "now") extents.push(sink.append(bytes));
      else {
        const { extent, written } = sink.appendLater!(bytes);
        extents.push(extent);
        await written;
      }
    }
    await w.commit();
  }
  const fd = open(`${dir}/pages-0.img`, O.RDONLY);
  try {
    // The aligned first extent went to the disk, not through the cache (where cachestat tells).
    const cached = cachedPages(fd, 0, 2 * MiB);
    if (cached !== undefined) assert.equal(cached, 0);
  } finally {
    close(fd);
  }
  using image = await ImageReader.open(dir, { verify: true }); // whole-file CRCs from extents'
  const expected = (i: number) => pattern(new Uint8Array(pieces[i][1]), i);
  const aligned = alignedBytes(2 * MiB);
  for (const [i, e] of extents.entries()) {
    // From the disk into an aligned buffer (O_DIRECT), into an unaligned one, and at once.
    assert.deepEqual(await image.readExtentAsync(e, aligned), expected(i), `extent ${i} direct`);
    image.verifyExtent(e, aligned.subarray(0, e.length));
    const unaligned = new Uint8Array(2 * MiB + 8).subarray(8);
    assert.deepEqual(await image.readExtentAsync(e, unaligned), expected(i), `extent ${i}`);
    assert.deepEqual(image.readExtent(e), expected(i), `extent ${i} read at once`);
  }
});

/** Why the page cache cannot be asked about a file here (no cachestat), or undefined. */
function noCachestat(): string | undefined {
  const fd = open(new URL(import.meta.url).pathname, O.RDONLY);
  try {
    return cachedPages(fd, 0, 1) === undefined ? "this kernel has no cachestat" : undefined;
  } finally {
    close(fd);
  }
}

Deno.test({
  ...needs("prefetch brings page data the dump wrote past the page cache into it", noCachestat()),
  fn: async () => {
    using tmp = scratch();
    const dir = `${tmp.path}/img`;
    const length = 4 * MiB;
    {
      await using w = await ImageWriter.create(dir);
      w.pages().append(pattern(alignedBytes(length), 3)); // whole pages: written O_DIRECT
      await w.commit();
    }
    const fd = open(`${dir}/pages-0.img`, O.RDONLY);
    try {
      const cached = () => cachedPages(fd, 0, length);
      assert.equal(cached(), 0);
      using image = await ImageReader.open(dir);
      image.prefetch();
      await waitUntil(() => cached() === length / 4096, 30_000, "the page file in the page cache");
    } finally {
      close(fd);
    }
  },
});

Deno.test("checksums are CRC-32 and combine like the bytes they cover", () => {
  assert.equal(checksum(new TextEncoder().encode("123456789")), 0xcbf43926);
  const bytes = pattern(new Uint8Array(3 * MiB + 12), 9);
  for (const cut of [0, 1, 4096, MiB, bytes.length - 1, bytes.length]) {
    const [a, b] = [bytes.subarray(0, cut), bytes.subarray(cut)];
    assert.equal(combineChecksums(checksum(a), checksum(b), b.length), checksum(bytes));
  }
  // Small inputs go to libz, large ones to node:zlib: the same CRC, also continued across both.
  const large = pattern(new Uint8Array(9 * MiB + 5), 4);
  for (const [at, end, previous] of [[0, 9, 0], [1, MiB, 0xcbf43926], [MiB, large.length, 7]]) {
    const part = large.subarray(at, end);
    assert.equal(libzCrc32(part, previous), crc32(part, previous));
  }
  assert.equal(checksum(large.subarray(MiB), checksum(large.subarray(0, MiB))), checksum(large));
});

Deno.test("files are mode 0600 and the partial directory 0700", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await using w = await ImageWriter.create(dir, { rollSize: MiB });
  assert.equal(Deno.statSync(w.partialDir).mode! & 0o777, 0o700);
  await w.writeMeta("core", { secret: new Uint8Array(32) });
  w.pages().append(new Uint8Array(MiB));
  w.pages().append(new Uint8Array(MiB));
  await w.commit();
  assert.equal(Deno.statSync(dir).mode! & 0o777, 0o700);
  assert.deepEqual(list(dir), ["core.cbor", "manifest.cbor", "pages-0.img", "pages-1.img"]);
  for (const name of list(dir)) assert.equal(Deno.statSync(`${dir}/${name}`).mode! & 0o777, 0o600);
});

Deno.test("a flipped byte in a page file is refused, naming the file and offset", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  const extents = await writeSample(dir);
  // The second extent: pages-0.img at offset 1 MiB (the third is alone in pages-1.img).
  assert.deepEqual([extents[1].file, extents[1].offset], ["pages-0.img", MiB]);
  flipByte(`${dir}/pages-0.img`, MiB + 100);
  await rejectsWith(
    ImageReader.open(dir, { verify: true }),
    /^pages-0\.img: checksum mismatch/,
  );
  using image = await ImageReader.open(dir); // sizes are right: opens without verify
  assert.equal(image.readExtent(extents[0]).length, MiB); // the untouched extent still reads
  throwsWith(
    () => image.readExtent(extents[1]),
    /^pages-0\.img: checksum mismatch in bytes 1048576-2097151 \(1048576 bytes of page data\)/,
  );
  assert.equal(image.readExtent(extents[1], undefined, { verify: false }).length, MiB);
});

Deno.test("a flipped byte in a metadata file is refused, naming the file", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await writeSample(dir);
  flipByte(`${dir}/core.cbor`, 30);
  await rejectsWith(ImageReader.open(dir, { verify: true }), /^core\.cbor: checksum mismatch/);
  using image = await ImageReader.open(dir);
  await rejectsWith(image.readMeta("core"), /^core\.cbor: checksum mismatch/);
});

Deno.test("a flipped byte in the manifest is refused", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await writeSample(dir);
  flipByte(`${dir}/manifest.cbor`, 40);
  await rejectsWith(
    ImageReader.open(dir),
    /^manifest\.cbor: checksum mismatch in bytes 24-\d+ \(its payload\)/,
  );
});

Deno.test("truncated files are refused", async (t) => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await writeSample(dir);
  const pages = `${dir}/pages-1.img`;
  const manifest = `${dir}/manifest.cbor`;
  const manifestBytes = Deno.readFileSync(manifest);
  await t.step("page file", async () => {
    Deno.truncateSync(pages, 10_000);
    await rejectsWith(ImageReader.open(dir), /^pages-1\.img: truncated \(10000 of 1048576 bytes/);
  });
  await t.step("missing page file", async () => {
    Deno.removeSync(pages);
    await rejectsWith(ImageReader.open(dir), /^pages-1\.img: missing from the image/);
  });
  await t.step("manifest", async () => {
    Deno.writeFileSync(manifest, manifestBytes.subarray(0, manifestBytes.length - 7));
    await rejectsWith(ImageReader.open(dir), /^manifest\.cbor: truncated/);
    Deno.writeFileSync(manifest, manifestBytes.subarray(0, 10));
    await rejectsWith(ImageReader.open(dir), /^manifest\.cbor: truncated/);
  });
  await t.step("metadata", async () => {
    const sub = `${tmp.path}/img2`;
    await writeSample(sub);
    Deno.truncateSync(`${sub}/core.cbor`, 20);
    await rejectsWith(ImageReader.open(sub), /^core\.cbor: truncated \(20 of/);
  });
});

Deno.test("a newer format version is refused with the reason", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await writeSample(dir);
  const path = `${dir}/manifest.cbor`;
  const bytes = Deno.readFileSync(path);
  new DataView(bytes.buffer).setUint32(8, FORMAT_VERSION + 1, true);
  Deno.writeFileSync(path, bytes);
  await rejectsWith(
    ImageReader.open(dir),
    new RegExp(
      `^manifest\\.cbor: format version ${
        FORMAT_VERSION + 1
      } is newer than this tool's ${FORMAT_VERSION}`,
    ),
  );
});

Deno.test("an image of another architecture is refused unless asked not to", async () => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await writeSample(dir);
  const path = `${dir}/manifest.cbor`;
  const manifest = decodePayload("m", unframe("m", Deno.readFileSync(path)).payload) as Record<
    string,
    unknown
  >;
  Deno.writeFileSync(path, frame({ ...manifest, arch: "aarch64" }));
  await rejectsWith(ImageReader.open(dir), /^image is for aarch64, this machine is x86_64$/);
  using image = await ImageReader.open(dir, { checkArch: false, verify: true });
  assert.equal(image.manifest.arch, "aarch64");
});

Deno.test("a directory without a manifest is not an image", async () => {
  using tmp = scratch();
  await rejectsWith(ImageReader.open(tmp.path), /^not an image: no manifest\.cbor in /);
  await rejectsWith(ImageReader.open(`${tmp.path}/nope`), /^not an image: no directory /);
});

Deno.test("commit is atomic and abort leaves nothing", async (t) => {
  using tmp = scratch();
  const dir = `${tmp.path}/img`;
  await t.step("nothing at DIR before commit, no partial after", async () => {
    const w = await ImageWriter.create(dir);
    await w.writeMeta("core", { a: 1 });
    w.pages().append(new Uint8Array(4096));
    assert.deepEqual(list(tmp.path), [w.partialDir.slice(tmp.path.length + 1)]);
    assert.match(w.partialDir, /\/img\.partial-[0-9a-f]+$/);
    await w.commit();
    assert.ok(w.committed);
    assert.deepEqual(list(tmp.path), ["img"]);
    await rejectsWith(w.writeMeta("more", 1), /already committed/);
    await w.abort(); // after commit: keeps the image
    assert.deepEqual(list(tmp.path), ["img"]);
    Deno.removeSync(dir, { recursive: true });
  });
  await t.step("abort removes everything, twice is fine", async () => {
    const w = await ImageWriter.create(dir);
    await w.writeMeta("core", { a: 1 });
    const sink = w.pages();
    sink.append(new Uint8Array(4096));
    await w.abort();
    await w.abort();
    assert.deepEqual(list(tmp.path), []);
    throwsWith(() => sink.append(new Uint8Array(1)), /closed/);
    await rejectsWith(w.commit(), /already aborted/);
  });
  await t.step("await using aborts unless committed", async () => {
    {
      await using w = await ImageWriter.create(dir);
      await w.writeMeta("core", { a: 1 });
    }
    assert.deepEqual(list(tmp.path), []);
  });
  await t.step("an existing empty directory is replaced", async () => {
    Deno.mkdirSync(dir);
    await writeSample(dir);
    assert.deepEqual(list(tmp.path), ["img"]);
    assert.ok(list(dir).includes("manifest.cbor"));
  });
  await t.step("an existing non-empty directory is refused", async () => {
    await rejectsWith(ImageWriter.create(dir), /img exists and is not empty/);
    Deno.writeTextFileSync(`${tmp.path}/file`, "x");
    await rejectsWith(ImageWriter.create(`${tmp.path}/file`), /exists and is not a directory/);
    assert.deepEqual(list(tmp.path), ["file", "img"]);
  });
  await t.step("a directory filled before commit fails the commit and leaves nothing", async () => {
    const other = `${tmp.path}/late`;
    const w = await ImageWriter.create(other);
    await w.writeMeta("core", { a: 1 });
    Deno.mkdirSync(other);
    Deno.writeTextFileSync(`${other}/intruder`, "x");
    await rejectsWith(w.commit(), /^commit: cannot rename to .*late/);
    assert.deepEqual(list(other), ["intruder"]);
    assert.ok(!list(tmp.path).some((n) => n.includes("partial")));
    await w.abort(); // after a failed commit
  });
  await t.step("bad metadata names are refused", async () => {
    await using w = await ImageWriter.create(`${tmp.path}/names`);
    await rejectsWith(w.writeMeta("../escape", 1), /not a valid metadata name/);
    await rejectsWith(w.writeMeta("manifest", 1), /reserved/);
    await w.writeMeta("core", 1);
    await rejectsWith(w.writeMeta("core.cbor", 2), /core\.cbor: written twice/);
  });
});

Deno.test({
  ...needs(
    "a full filesystem gives a clear error and leaves nothing behind",
    Deno.uid() === 0 ? undefined : "not root (it mounts a tiny tmpfs)",
  ),
  async fn() {
    using tmp = scratch();
    const mnt = `${tmp.path}/tiny`;
    Deno.mkdirSync(mnt);
    const mount = (args: string[]) =>
      new Deno.Command(args[0], { args: args.slice(1) }).outputSync();
    assert.ok(mount(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt]).success);
    try {
      // Page data past the size of the filesystem.
      const w = await ImageWriter.create(`${mnt}/img`);
      await w.writeMeta("core", { a: 1n });
      const sink = w.pages();
      const buf = new Uint8Array(256 * 1024);
      let error: unknown;
      try {
        for (let i = 0; i < 8; i++) sink.append(buf);
      } catch (err) {
        error = err;
      }
      assert.ok(error instanceof ImageError, `expected ImageError, got ${error}`);
      assert.match(error.message, /^pages-0\.img: write of .* ENOSPC \(no space left on device\)/);
      assert.match(error.message, /discarded/);
      assert.deepEqual(list(mnt), []);
      await w.abort(); // still safe
      await rejectsWith(w.commit(), /already aborted/);

      // Metadata that no longer fits.
      const w2 = await ImageWriter.create(`${mnt}/img`);
      w2.pages().append(new Uint8Array(1000 * 1024));
      await rejectsWith(
        w2.writeMeta("big", new Uint8Array(200 * 1024)),
        /^big\.cbor: write failed: No space left on device/,
      );
      assert.deepEqual(list(mnt), []);
    } finally {
      assert.ok(mount(["umount", mnt]).success);
    }
  },
});

Deno.test("validate: a malformed mapping entry is refused naming it, as before the fast check", async () => {
  const t = await spawnTarget(await fixture("r_umask"), [], { ready: /^READY /m });
  using dir = scratch();
  try {
    await checkpoint(t.pid, `${dir.path}/img`, { leaveRunning: true });
  } finally {
    await t.kill();
  }
  using image = await ImageReader.open(`${dir.path}/img`);
  const root = await image.readMeta<ProcessEntry>("process");
  validateProcessEntry("process.cbor", root); // as dumped: well-formed
  const last = root.mappings.length - 1;
  const withMapping = (i: number, change: (m: Record<string, unknown>) => void) => {
    const mappings = structuredClone(root.mappings) as unknown as Record<string, unknown>[];
    change(mappings[i]);
    return () => validateProcessEntry("process.cbor", { ...root, mappings });
  };
  assert.throws(withMapping(last, (m) => m.prot = 9), /mappings\[\d+\]\.prot is number 9, not a/);
  assert.throws(withMapping(0, (m) => m.color = 1), /mappings\[0\]\."color" is not a field/);
  assert.throws(
    withMapping(0, (m) => m.end = m.start),
    /mappings\[0\]: end 0x[0-9a-f]+ is not past/,
  );
  assert.throws(withMapping(0, (m) => m.source = { type: "file" }), /mappings\[0\]\.source\.path/);
  assert.throws(
    withMapping(0, (m) => m.source = { type: "shmem", object: 99 }),
    /no memory object/,
  );
  const paged = root.mappings.findIndex((m) => m.pages.length > 0);
  assert.throws(
    withMapping(paged, (m) => (m.pages as PageRun[])[0].offset = 2 ** 40),
    /run past the end of extent/,
  );
  assert.throws(
    withMapping(paged, (m) => (m.pages as PageRun[])[0].start = (m.end as bigint) + 4096n),
    /are outside 0x/,
  );
  assert.throws(withMapping(paged, (m) => (m.pages as PageRun[])[0].extent = 999), /extent is/);
});
