import assert from "node:assert/strict";
import { close, pread } from "../ffi/mod.ts";
import { type Mapping, Process } from "../mod.ts";
import { listMappings } from "../lib/inspect/mappings.ts";
import { vmaStates } from "../lib/memory/advice.ts";
import { parseSmapsText, readSmaps } from "../lib/memory/smaps.ts";
import { fixture, spawnTarget, type Target, withTarget } from "./helpers.ts";

/** Parses /proc/PID/maps independently of the SDK: whitespace-split columns. */
function mapsLines(pid: number) {
  return Deno.readTextFileSync(`/proc/${pid}/maps`).trimEnd().split("\n").map((line) => {
    const [, start, end, perms, offset, dev, inode, path] =
      /^(\S+)-(\S+) (\S+) (\S+) (\S+) (\d+) *(.*)$/.exec(line)!;
    return {
      start: BigInt(`0x${start}`),
      end: BigInt(`0x${end}`),
      perms,
      offset: BigInt(`0x${offset}`),
      dev,
      inode: BigInt(inode),
      path: path === "" ? null : path,
    };
  });
}

function view(m: Mapping) {
  return {
    start: m.start,
    end: m.end,
    perms: m.perms,
    offset: m.offset,
    dev: m.device,
    inode: m.inode,
    path: m.path,
  };
}

// Files the fixtures map or hold stay until the module is done.
const tempDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of tempDirs) Deno.removeSync(dir, { recursive: true });
});

async function startMapsFixture(): Promise<{ t: Target; child: number; at: Map<string, bigint> }> {
  const dir = Deno.makeTempDirSync({ prefix: "inspect-maps-" });
  tempDirs.push(dir);
  const t = await spawnTarget(await fixture("inspect_maps"), [`${dir}/file`, `${dir}/gone`], {
    ready: /READY \d+ child (\d+)/,
  });
  const child = Number((await t.waitFor(/READY \d+ child (\d+)/))[1]);
  const at = new Map<string, bigint>();
  for (const m of t.output().matchAll(/^(\w+) 0x([0-9a-f]+)$/gm)) at.set(m[1], BigInt(`0x${m[2]}`));
  return { t, child, at };
}

async function all(p: Process, via?: "ioctl" | "text"): Promise<Mapping[]> {
  const out: Mapping[] = [];
  for await (const m of p.mappings({ via })) out.push(m);
  return out;
}

Deno.test("mappings: every kind, equal to /proc/PID/maps", async () => {
  const { t, child, at } = await startMapsFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    const maps = await all(p);
    assert.deepEqual(maps.map(view), mapsLines(t.pid));
    assert.deepEqual((await all(p, "ioctl")).map(view), mapsLines(t.pid));

    const covering = (addr: bigint) => maps.find((m) => m.start <= addr && addr < m.end)!;
    const kindAt = (name: string) => covering(at.get(name)!).kind;
    assert.equal(kindAt("file"), "file");
    assert.equal(covering(at.get("file")!).offset, 4096n);
    assert.equal(kindAt("deleted"), "deleted-file");
    assert.equal(kindAt("anon"), "anonymous");
    assert.equal(kindAt("shared"), "shared-anonymous");
    assert.equal(kindAt("memfd"), "memfd");
    assert.equal(kindAt("sysv"), "shared-anonymous");
    assert.equal(kindAt("heap"), "heap");
    assert.equal(kindAt("stack"), "stack");
    assert.ok(covering(at.get("shared")!).shared);
    assert.match(covering(at.get("memfd")!).path!, /^\/memfd:tardigrade-memfd \(deleted\)$/);

    // mprotect split one region into three VMAs
    const prot = at.get("prot")!;
    assert.deepEqual(
      [0n, 4096n, 8192n].map((o) => covering(prot + o)).map((m) => [m.perms, m.size]),
      [["rw-p", 4096], ["r--p", 4096], ["r-xp", 4096]],
    );
    assert.deepEqual(covering(prot + 8192n).prot, { read: true, write: false, exec: true });

    const kinds = new Set(maps.map((m) => m.kind));
    for (const k of ["vdso", "vvar", "vvar_vclock", "vsyscall"]) {
      assert.ok(kinds.has(k as never), k);
    }

    // the forked child shares the same shared-anonymous object: same inode
    const childMaps = listMappings(child);
    const inChild = childMaps.find((m) => m.start === covering(at.get("shared")!).start)!;
    assert.equal(inChild.inode, covering(at.get("shared")!).inode);
    assert.equal(inChild.kind, "shared-anonymous");
  });
});

Deno.test("mappings: open() gives the exact file, also a deleted one", async () => {
  const { t, at } = await startMapsFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    const maps = await all(p);
    const covering = (addr: bigint) => maps.find((m) => m.start <= addr && addr < m.end)!;
    for (const name of ["file", "deleted", "memfd", "shared"]) {
      const fd = covering(at.get(name)!).open();
      try {
        const st = Deno.statSync(`/proc/self/fd/${fd}`);
        assert.equal(BigInt(st.ino!), covering(at.get(name)!).inode, name);
        assert.ok(pread(fd, new Uint8Array(16), 0) >= 0);
      } finally {
        close(fd);
      }
    }
    assert.throws(() => covering(at.get("anon")!).open(), { name: "Unsupported" });
  });
});

Deno.test("mappings: build ids of ELF files", async () => {
  const p = await Process.open(Deno.pid);
  const libc = [];
  for await (const m of p.mappings({ buildId: true })) {
    if (m.path?.includes("libc.so")) libc.push(m);
  }
  assert.ok(libc.length > 0);
  assert.match(libc[0].buildId ?? "", /^[0-9a-f]{40}$/);
});

Deno.test("mappings: findMapping answers point lookups, also for [vsyscall]", async () => {
  const { t, at } = await startMapsFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    const maps = await all(p);
    for (const name of ["file", "anon", "heap", "memfd"]) {
      const addr = at.get(name)!;
      const expected = maps.find((m) => m.start <= addr && addr < m.end)!;
      assert.deepEqual(view((await p.findMapping(addr))!), view(expected), name);
    }
    assert.equal((await p.findMapping(0xffffffffff600010n))?.kind, "vsyscall");
    assert.equal(await p.findMapping(0x1000n), null);
    const ioctlList = await all(p, "ioctl");
    assert.deepEqual(ioctlList.map(view), maps.map(view));
  });
});

/** What a listing says of a mapping, as plain fields. */
const fields = (
  m: Mapping,
) => [m.start, m.end, m.perms, m.offset, m.major, m.minor, m.inode, m.path];

Deno.test("mappings: VmFlags and page size of every mapping, equal to smaps", async () => {
  // A process with advice and locks of its own (r_madvise), sleeping: its smaps stays as it is.
  const t = await spawnTarget(await fixture("r_madvise"), [], { ready: /^READY /m });
  await withTarget(t, async () => {
    const states = vmaStates(t.pid);
    const text = Deno.readTextFileSync(`/proc/${t.pid}/smaps`);
    // Independently of the SDK: split into entries at each `start-end ` first line.
    const entries = text.trimEnd().split(/\n(?=[0-9a-f]+-[0-9a-f]+ )/);
    assert.ok(text.includes(" wf") && text.includes(" lf"), "the fixture's own flags");
    for (const entry of entries) {
      const start = BigInt(`0x${entry.slice(0, entry.indexOf("-"))}`);
      const end = BigInt(`0x${entry.slice(entry.indexOf("-") + 1, entry.indexOf(" "))}`);
      const flags = /^VmFlags:(.*)$/m.exec(entry)![1].trim().split(/\s+/);
      const kib = Number(/^KernelPageSize:\s+(\d+) kB$/m.exec(entry)![1]);
      assert.deepEqual(
        states.get(start),
        { flags, pageSize: kib * 1024, end },
        entry.split("\n")[0],
      );
    }
    assert.equal(states.size, entries.length);
    // The restore's reading of the same text (verify.ts): listing, flags and page sizes at once.
    const listing = parseSmapsText(t.pid, text);
    const maps = listMappings(t.pid);
    assert.deepEqual(listing.mappings.map(fields), maps.map(fields));
    // Read in pieces, parsed as they come: the same.
    const read = await readSmaps(t.pid);
    assert.deepEqual(read.mappings.map(fields), maps.map(fields));
    assert.deepEqual(read.flags, listing.flags);
    assert.deepEqual(read.pageSizes, listing.pageSizes);
    listing.mappings.forEach((m, i) => {
      const state = states.get(m.start)!;
      assert.deepEqual(listing.flags[i], state.flags, `${m.start.toString(16)}`);
      assert.equal(listing.pageSizes[i], state.pageSize);
    });
  });
});
