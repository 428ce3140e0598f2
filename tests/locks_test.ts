/**
 * File locks: the fdinfo `lock:` lines parse into the image's lock records, and a lock that
 * someone else holds when the restore runs makes it fail with a RestoreError naming the file and
 * the lock, leaving nothing behind: before anything is made (the check sees the holder) and when
 * the lock is taken after the check (the restored process cannot take it, the restore undoes
 * itself). Once the holder lets go, the same image restores and passes its check.
 */
import assert from "node:assert/strict";
import { checkpoint, restore, RestoreError } from "../mod.ts";
import { addressOf, close, O, open, syscall } from "../ffi/mod.ts";
import { flockStruct, parseLocks } from "../lib/files/locks.ts";
import { fixture, killAndReap, ourStubCount, spawnTarget } from "./helpers.ts";

Deno.test("parseLocks reads FLOCK, POSIX and OFD lock lines and leases", () => {
  const text = [
    "pos:\t0",
    "flags:\t0100002",
    "mnt_id:\t31",
    "ino:\t5678",
    "lock:\t1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF",
    "lock:\t2: POSIX  ADVISORY  READ 1234 fd:01:5678 100 149",
    "lock:\t3: OFDLCK ADVISORY  WRITE -1 fd:01:5678 10 EOF",
    "lock:\t4: LEASE  ACTIVE    READ 1234 fd:01:5678 0 EOF",
    "",
  ].join("\n");
  assert.deepEqual(parseLocks(text), [
    { type: "FLOCK", access: "WRITE", start: 0n, end: null },
    { type: "POSIX", access: "READ", start: 100n, end: 149n },
    { type: "OFDLCK", access: "WRITE", start: 10n, end: null },
    { type: "LEASE", access: "READ", start: 0n, end: null },
  ]);
  assert.deepEqual(parseLocks("pos:\t0\nflags:\t02\n"), []);
  // A lease being broken cannot be taken again as it was.
  assert.throws(
    () => parseLocks("lock:\t1: LEASE  BREAKING  READ 1234 fd:01:5678 0 EOF\n", "fd 3 of 7"),
    /fd 3 of 7: cannot dump the lock "1: LEASE/,
  );
  const s = new DataView(
    flockStruct({ type: "POSIX", access: "WRITE", start: 10n, end: 19n })
      .buffer,
  );
  assert.deepEqual(
    [s.getInt16(0, true), s.getInt16(2, true), s.getBigInt64(8, true), s.getBigInt64(16, true)],
    [1, 0, 10n, 10n],
  );
});

/** Whether anything at all (even a zombie) has `pid`. */
function pidExists(pid: number): boolean {
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

const F_OFD_SETLK = 37;
const LOCK_EX = 2;
const LOCK_NB = 4;

/** Holds a flock on `path` through an open file of this test process until closed. */
function holdFlock(path: string): number {
  const fd = open(path, O.RDWR);
  syscall("flock", fd, LOCK_EX | LOCK_NB);
  return fd;
}

/** Holds an OFD write lock on bytes 15-16 of `path` (inside the fixture's 10-19 lock). */
function holdOfdLock(path: string): number {
  const fd = open(path, O.RDWR);
  const l = flockStruct({ type: "OFDLCK", access: "WRITE", start: 15n, end: 16n });
  syscall("fcntl", fd, F_OFD_SETLK, addressOf(l));
  return fd;
}

Deno.test("a lock held by another at restore time is a clear RestoreError", async (ctx) => {
  const t = await spawnTarget(await fixture("r_flock"), [], { ready: /^(READY|SETUP FAILED)/m });
  const dir = t.output().match(/\btmp=(\S+)/)?.[1];
  const root = await Deno.makeTempDir({ prefix: "tardigrade-locks-" });
  try {
    assert.match(t.output(), /^READY/m, t.output());
    const path = `${dir}/locked`;
    const image = `${root}/image`;
    await checkpoint(t.pid, image);
    await killAndReap(t.pid);

    const refused = async (hold: () => number, re: RegExp, stage?: string) => {
      const stubs = ourStubCount();
      let held = -1;
      if (!stage) held = hold();
      const policy = {
        restoreStage(s: string) {
          if (s === stage) held = hold();
        },
      };
      try {
        const err = await restore(image, { policy }).then(() => null, (e) => e);
        assert.ok(err instanceof RestoreError, `expected a RestoreError, got ${err}`);
        assert.match(err.message, re);
        assert.ok(held >= 0, "the lock was taken");
      } finally {
        if (held >= 0) close(held);
      }
      assert.ok(!pidExists(t.pid), `pid ${t.pid} exists after a refused restore`);
      assert.equal(ourStubCount(), stubs, "a stub was left behind");
    };

    await ctx.step("a flock held before the restore: refused by the check", () =>
      refused(
        () => holdFlock(path),
        new RegExp(`^cannot restore: ${path}: cannot take a FLOCK WRITE lock again: .*flock`),
      ));
    await ctx.step("an OFD lock over a POSIX range: refused by the check", () =>
      refused(
        () => holdOfdLock(path),
        new RegExp(
          `^cannot restore: ${path}: cannot take a POSIX WRITE lock on bytes 10-19 again: ` +
            "another open file holds a conflicting write lock",
        ),
      ));
    await ctx.step(
      "a flock taken after the check: the restore fails and undoes itself",
      () =>
        refused(
          () => holdFlock(path),
          new RegExp(`^cannot restore: ${path}: cannot take a FLOCK WRITE lock again: it is held`),
          "files",
        ),
    );
    await ctx.step("a POSIX range taken after the check: fails and undoes itself", () =>
      refused(
        () => holdOfdLock(path),
        new RegExp(`^cannot restore: ${path}: cannot take a POSIX WRITE lock on bytes 10-19`),
        "files",
      ));
    await ctx.step("once the locks are free the image restores", async () => {
      const r = await restore(image);
      assert.equal(r.pid, t.pid);
      assert.equal(await t.check(), "PASS", t.output());
    });
  } finally {
    await t.kill();
    if (dir) await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(root, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});
