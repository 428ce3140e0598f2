/**
 * Restore refuses and cleans up (issue 5): a damaged image, a pid in use, a file changed since the
 * dump, a policy that stops the restore midway, an interruption and a stub that dies are refused
 * with the reason, and leave nothing behind: no process with the dumped pid, no `cat` stub, no
 * zombie, no ghost file. A restore that was stopped can be run again and succeeds.
 */
import assert from "node:assert/strict";
import { checkpoint, interruptFrozen, restore } from "../mod.ts";
import { FORMAT_VERSION } from "../image.ts";
import { frame, unframe } from "../lib/image/frame.ts";
import { checksum } from "../lib/image/checksum.ts";
import type { ImageManifest } from "../lib/image/manifest.ts";
import { decode } from "cbor-x";
import {
  fixture,
  isAlive,
  isRestoreStub,
  killAndReap,
  ourStubCount,
  parentOf,
  spawnTarget,
  type Target,
} from "./helpers.ts";

/** Zombie children of this test process (it is a child subreaper: orphans come here). */
function ourZombies(): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const rest = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
      if (rest[0] === "Z" && Number(rest[1]) === Deno.pid) out.push(Number(e.name));
    } catch { /* gone */ }
  }
  return out;
}

/** Whether anything at all (even a zombie) has `pid`. */
function pidExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Paths a fixture announced as its own temporary files (`tmp=PATH` on its READY line). */
function tempPaths(t: Target): string[] {
  const ready = t.output().match(/^READY .*$/m)?.[0] ?? "";
  return [...ready.matchAll(/\btmp=(\S+)/g)].map((m) => m[1]);
}

function readyField(t: Target, name: string): string {
  const v = t.output().match(new RegExp(`\\b${name}=(\\S+)`))?.[1];
  if (!v) throw new Error(`no ${name}= on the READY line:\n${t.output()}`);
  return v;
}

/** A fixture, dumped (and so ended) into a fresh image. */
interface Dumped {
  t: Target;
  root: string;
  image: string;
}

async function dumpFixture(
  name: string,
  opts: { bin?: string } = {},
): Promise<Dumped> {
  const bin = opts.bin ?? await fixture(name);
  const t = await spawnTarget(bin, [], { ready: /^(READY|SETUP FAILED)/m });
  assert.match(t.output(), /^READY/m, `fixture ${name} setup failed:\n${t.output()}`);
  const root = await Deno.makeTempDir({ prefix: "tardigrade-errors-" });
  const image = `${root}/image`;
  await checkpoint(t.pid, image);
  await killAndReap(t.pid); // the zombie, if init has not reaped it yet
  return { t, root, image };
}

async function cleanup(d: Dumped, extra: number[] = []): Promise<void> {
  await d.t.kill();
  for (const pid of extra) await killAndReap(pid);
  for (const path of tempPaths(d.t)) await Deno.remove(path, { recursive: true }).catch(() => {});
  await Deno.remove(d.root, { recursive: true }).catch(() => {});
  await Deno.remove(d.t.outPath).catch(() => {});
}

/**
 * Runs a restore that must fail with `re`, and checks it left nothing behind: no process with
 * `pid` (unless `keepPid`: a live process that was there before), no new stub, no zombie.
 */
async function refused(
  run: () => Promise<unknown>,
  re: RegExp,
  pid: number,
  opts: { keepPid?: boolean } = {},
): Promise<Error> {
  const stubsBefore = ourStubCount();
  const zombiesBefore = new Set(ourZombies());
  let err: Error | undefined;
  try {
    await run();
  } catch (e) {
    err = e as Error;
  }
  assert.ok(err, `restore succeeded, expected ${re}`);
  assert.match(err.message, re);
  if (!opts.keepPid) assert.ok(!pidExists(pid), `pid ${pid} exists after a refused restore`);
  assert.equal(ourStubCount(), stubsBefore, "a stub was left behind");
  const zombies = ourZombies().filter((z) => !zombiesBefore.has(z));
  assert.deepEqual(zombies, [], "zombies were left behind");
  return err;
}

/** Restores `d` without any policy and checks the process passes its own check. */
async function restoresFine(d: Dumped): Promise<void> {
  const r = await restore(d.image);
  assert.equal(r.pid, d.t.pid);
  assert.equal(await d.t.check(), "PASS", `check after restore; output:\n${d.t.output()}`);
}

// ---------------------------------------------------------------------------------------------
// Damaged images

async function flipByte(path: string, at: (size: number) => number): Promise<void> {
  const bytes = await Deno.readFile(path);
  bytes[at(bytes.length)] ^= 0x5a;
  await Deno.writeFile(path, bytes);
}

Deno.test("restore refuses a damaged image and makes nothing", async (ctx) => {
  const d = await dumpFixture("r_memory");
  try {
    const pid = d.t.pid;
    const copy = async (name: string) => {
      const dir = `${d.root}/${name}`;
      const cp = await new Deno.Command("cp", { args: ["-a", d.image, dir] }).output();
      assert.ok(cp.success);
      return dir;
    };
    await ctx.step("a flipped byte in a page file: checksum error naming the file", async () => {
      const dir = await copy("flipped-page");
      await flipByte(`${dir}/pages-0.img`, (n) => n >> 1);
      await refused(() => restore(dir), /pages-0\.img: checksum mismatch/, pid);
    });
    await ctx.step("a truncated process.cbor", async () => {
      const dir = await copy("truncated-meta");
      const size = (await Deno.stat(`${dir}/process.cbor`)).size;
      await Deno.truncate(`${dir}/process.cbor`, size - 17);
      await refused(() => restore(dir), /process\.cbor: truncated/, pid);
    });
    await ctx.step("a process.cbor damaged but the right size", async () => {
      const dir = await copy("flipped-meta");
      await flipByte(`${dir}/process.cbor`, (n) => n - 5);
      await refused(() => restore(dir), /process\.cbor: checksum mismatch/, pid);
    });
    await ctx.step("a corrupt manifest", async () => {
      const dir = await copy("corrupt-manifest");
      await flipByte(`${dir}/manifest.cbor`, (n) => n - 3);
      await refused(() => restore(dir), /manifest\.cbor: checksum mismatch/, pid);
      await Deno.writeFile(`${dir}/manifest.cbor`, new TextEncoder().encode("not an image"));
      await refused(() => restore(dir), /manifest\.cbor: truncated/, pid);
      await Deno.remove(`${dir}/manifest.cbor`);
      await refused(() => restore(dir), /not an image: no manifest\.cbor/, pid);
    });
    await ctx.step("a page file missing", async () => {
      const dir = await copy("missing-pages");
      await Deno.remove(`${dir}/pages-0.img`);
      await refused(() => restore(dir), /pages-0\.img: missing from the image/, pid);
    });
    await ctx.step("a newer format version", async () => {
      const dir = await copy("newer");
      const bytes = await Deno.readFile(`${dir}/manifest.cbor`);
      const manifest = decode(bytes.subarray(24)) as Record<string, unknown>;
      const newer = FORMAT_VERSION + 1;
      await Deno.writeFile(
        `${dir}/manifest.cbor`,
        frame({ ...manifest, format: newer }, newer),
      );
      await refused(
        () => restore(dir),
        new RegExp(`manifest\\.cbor: format version ${newer} is newer than this tool's`),
        pid,
      );
    });
    /** A copy whose process.cbor `change` edits, re-framed with checksums that agree. */
    const forged = async (name: string, change: (entry: Record<string, unknown>) => void) => {
      const dir = await copy(name);
      const { version, payload } = unframe(
        "process.cbor",
        await Deno.readFile(`${dir}/process.cbor`),
      );
      const entry = decode(payload) as Record<string, unknown>;
      change(entry);
      const bytes = frame(entry, version);
      await Deno.writeFile(`${dir}/process.cbor`, bytes);
      const m = unframe("manifest.cbor", await Deno.readFile(`${dir}/manifest.cbor`));
      const manifest = decode(m.payload) as ImageManifest;
      const file = manifest.files.find((f) => f.name === "process.cbor")!;
      file.size = bytes.length;
      file.checksum = checksum(bytes);
      await Deno.writeFile(`${dir}/manifest.cbor`, frame(manifest, m.version));
      return dir;
    };
    const rename = (o: Record<string, unknown>, from: string, to: string) => {
      o[to] = o[from];
      delete o[from];
    };
    await ctx.step("a field renamed, checksums made to agree: refused naming it", async () => {
      let dir = await forged("renamed-field", (e) => {
        rename(e.special as Record<string, unknown>, "vvar", "vvarClock");
      });
      await refused(
        () => restore(dir),
        /process\.cbor: malformed process entry \(special\."vvarClock" is not a field of special\)/,
        pid,
      );
      // An open file's own fields too, checked by its kind's handler.
      dir = await forged("renamed-file-field", (e) => {
        rename((e.files as Record<string, unknown>[])[0], "path", "pth");
      });
      await refused(
        () => restore(dir),
        /process\.cbor: malformed process entry \(files\[0\]\."pth" is not a field of files\[0\]\)/,
        pid,
      );
      dir = await forged("missing-file-field", (e) => {
        delete (e.files as Record<string, unknown>[])[0].path;
      });
      await refused(
        () => restore(dir),
        /process\.cbor: malformed process entry \(files\[0\]\.path is missing, not text\)/,
        pid,
      );
    });
    await ctx.step("the undamaged image still restores", () => restoresFine(d));
  } finally {
    await cleanup(d);
  }
});

// ---------------------------------------------------------------------------------------------
// The pid in use

Deno.test("restore refuses a pid in use before making anything", async () => {
  const d = await dumpFixture("r_memory");
  try {
    await restoresFine(d);
    const err = await refused(
      () => restore(d.image),
      new RegExp(`^pid ${d.t.pid} is in use \\(.*--pid-namespace restores a copy beside it\\)$`),
      d.t.pid,
      { keepPid: true },
    );
    assert.equal(err.name, "RestoreError");
    // The first one is untouched.
    assert.ok(isAlive(d.t.pid));
    assert.equal(await d.t.check(), "PASS");
  } finally {
    await cleanup(d);
  }
});

// ---------------------------------------------------------------------------------------------
// Files changed since the dump

Deno.test("restore refuses a mapped file removed since the dump, naming it", async () => {
  const d = await dumpFixture("r_private_file_map");
  try {
    const file = readyField(d.t, "file");
    // Moved away rather than deleted, so that putting it back gives the very same file (the
    // fixture checks the inode), not a copy that may or may not reuse the inode number.
    await Deno.rename(file, `${file}.away`);
    await refused(
      () => restore(d.image),
      new RegExp(`cannot restore: ${file} no longer exists`),
      d.t.pid,
    );
    // Put it back as it was: the restore goes through.
    await Deno.rename(`${file}.away`, file);
    await restoresFine(d);
  } finally {
    await cleanup(d);
  }
});

Deno.test("restore refuses an open file changed since the dump, naming it", async () => {
  const d = await dumpFixture("r_file_flags");
  try {
    const file = `${readyField(d.t, "tmp")}/file`;
    await Deno.writeTextFile(file, "more", { append: true });
    await refused(
      () => restore(d.image),
      new RegExp(`cannot restore: ${file} changed since the dump`),
      d.t.pid,
    );
  } finally {
    await cleanup(d);
  }
});

Deno.test("restore refuses a program binary changed since the dump, naming it", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-bin-" });
  const bin = `${dir}/hello-copy`;
  await Deno.copyFile(await fixture("hello"), bin);
  const d = await dumpFixture("hello", { bin });
  try {
    // Same size, other bytes: caught by the mtime.
    await flipByte(bin, (n) => n - 1);
    await refused(
      () => restore(d.image),
      new RegExp(`cannot restore: ${bin} changed since the dump`),
      d.t.pid,
    );
    await Deno.writeFile(bin, new Uint8Array(10), { append: true });
    await refused(
      () => restore(d.image),
      new RegExp(`cannot restore: ${bin} changed since the dump \\(size`),
      d.t.pid,
    );
  } finally {
    await cleanup(d);
    await Deno.remove(dir, { recursive: true });
  }
});

// ---------------------------------------------------------------------------------------------
// A policy that stops the restore midway

class Stop extends Error {}

/** Files (and ghost siblings `NAME.tardigrade-*`) in the directories of `paths`. */
function siblings(paths: string[]): string[] {
  const out: string[] = [];
  for (const p of paths) {
    const dir = p.slice(0, p.lastIndexOf("/"));
    try {
      for (const e of Deno.readDirSync(dir)) out.push(`${dir}/${e.name}`);
    } catch { /* no directory */ }
  }
  return out.sort();
}

for (const name of ["r_deleted_map", "r_threads", "r_memfd", "r_cow_fork"]) {
  Deno.test(`restore of ${name} stopped at each stage leaves nothing behind`, async (ctx) => {
    const d = await dumpFixture(name);
    try {
      // r_deleted_map: the deleted file must not come back (nor a ghost beside it).
      const deleted = name === "r_deleted_map" ? [readyField(d.t, "file")] : [];
      const before = siblings(deleted);
      for (const stage of ["memory", "files", "process", "threads", "resume"]) {
        await ctx.step(`stopped at "${stage}"`, async () => {
          const seen: string[] = [];
          const policy = {
            restoreStage(s: string) {
              seen.push(s);
              if (s === stage) throw new Stop(`policy stops at ${s}`);
            },
          };
          const err = await refused(
            () => restore(d.image, { policy }),
            new RegExp(`^policy stops at ${stage}$`),
            d.t.pid,
          );
          assert.ok(err instanceof Stop, "the policy's own error is thrown");
          assert.equal(seen.at(-1), stage);
          assert.deepEqual(siblings(deleted), before, "ghost files left behind");
          for (const f of deleted) assert.ok(!pidExists(d.t.pid) && !exists(f));
        });
      }
      await ctx.step("a second restore of the same image succeeds", () => restoresFine(d));
    } finally {
      await cleanup(d);
    }
  });
}

Deno.test("restore interrupted (the REPL's Ctrl-C) stops at its next stage, leaves nothing", async () => {
  const d = await dumpFixture("r_threads");
  try {
    const seen: string[] = [];
    // interruptFrozen() is what Ctrl-C calls in the REPL; here it comes while memory is made.
    const policy = {
      restoreStage(s: string) {
        seen.push(s);
        if (s === "memory") interruptFrozen();
      },
    };
    await refused(
      () => restore(d.image, { policy }),
      new RegExp(`^interrupted before the files stage of process ${d.t.pid}$`),
      d.t.pid,
    );
    assert.equal(seen.at(-1), "memory");
    await restoresFine(d);
  } finally {
    await cleanup(d);
  }
});

function exists(path: string): boolean {
  try {
    Deno.lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

// ---------------------------------------------------------------------------------------------
// A stub that dies

/**
 * The restore's stub (`cat`, started by a shell of this process and then adopted by it),
 * waited for: a restoreStage hook runs synchronously, while the shell that starts the stub runs on
 * its own. Returns its pid and whether the restore had seized it already.
 */
function awaitStub(): { pid: number; seized: boolean } {
  const deadline = Date.now() + 10_000;
  for (;;) {
    for (const e of Deno.readDirSync("/proc")) {
      const pid = Number(e.name);
      if (!(pid > 0)) continue;
      try {
        if (!isRestoreStub(pid)) continue;
      } catch {
        continue;
      }
      const ppid = parentOf(pid);
      if (ppid !== Deno.pid && parentOf(ppid) !== Deno.pid) continue; // another test run's
      const tracer = Deno.readTextFileSync(`/proc/${pid}/status`).match(/^TracerPid:\s+(\d+)/m);
      return { pid, seized: Number(tracer?.[1]) === Deno.pid };
    }
    if (Date.now() > deadline) throw new Error("the restore never started its stub");
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 2);
  }
}

Deno.test("restore with a dead stub fails cleanly and leaves no zombie", async (ctx) => {
  const d = await dumpFixture("r_threads");
  try {
    await ctx.step("stub killed before it forks", async () => {
      // Killed once it is seized, before it makes the process.
      const policy = {
        restoreStage(stage: string) {
          if (stage !== "stub") return;
          const stub = awaitStub();
          assert.ok(stub.seized, "the stub is seized at the stub stage");
          Deno.kill(stub.pid, "SIGKILL");
        },
      };
      await refused(
        () => restore(d.image, { policy }),
        /stub|ESRCH|EPERM|no such process/i,
        d.t.pid,
      );
    });
    await ctx.step("the restored process killed right after the fork", async () => {
      // Made (with the dumped pid), not yet given its memory.
      const policy = {
        restoreStage(stage: string, p: { pid: number }) {
          if (stage === "memory") Deno.kill(p.pid, "SIGKILL");
        },
      };
      await refused(() => restore(d.image, { policy }), /./, d.t.pid);
    });
    await ctx.step("then a restore succeeds", () => restoresFine(d));
  } finally {
    await cleanup(d);
  }
});
