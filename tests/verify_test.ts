/**
 * The restore checks itself (lib/restore/verify.ts): a restored process is read back from the
 * kernel before it runs and compared with its image. A difference made on purpose between the
 * making and the comparison (through the `verify` restore stage) fails the restore, naming the
 * process, the field and both values, and leaves nothing behind; allowed, it is reported instead.
 * The comparison of an image with its live processes (`verifyRestored`, `inspect --compare`)
 * finds nothing after a plain restore.
 */
import assert from "node:assert/strict";
import {
  addressOf,
  close,
  F,
  MADV,
  MAP,
  O,
  pidfdGetfd,
  pidfdOpen,
  PROT,
  RLIMIT,
  SIG,
  syscall,
} from "../ffi/mod.ts";
import { listMappings } from "../lib/inspect/mappings.ts";
import { freeze } from "../lib/ptrace/freeze.ts";
import { checkpoint, type Difference, restore, RestoreError, verifyRestored } from "../mod.ts";
import { cli, fixture, isAlive, killAndReap, spawnTarget, type Target } from "./helpers.ts";

/** Lowers the soft RLIMIT_NOFILE of `pid` from outside (prlimit of another process). */
function lowerOpenFiles(pid: number, soft: bigint): void {
  const now = new BigUint64Array(2);
  syscall("prlimit64", pid, RLIMIT.NOFILE, 0, addressOf(now));
  const want = new BigUint64Array([soft, now[1]]);
  syscall("prlimit64", pid, RLIMIT.NOFILE, addressOf(want), 0);
}

async function dumped(): Promise<{ t: Target; dir: string; image: string }> {
  const t = await spawnTarget(await fixture("r_umask"), [], { ready: /^READY /m });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-verify-" });
  await checkpoint(t.pid, `${dir}/image`);
  await killAndReap(t.pid);
  return { t, dir, image: `${dir}/image` };
}

async function cleanup(t: Target, dir: string): Promise<void> {
  await t.kill();
  await Deno.remove(dir, { recursive: true }).catch(() => {});
  await Deno.remove(t.outPath).catch(() => {});
}

/** A policy that changes the restored process's NOFILE limit just before the comparison. */
function tamper(pid: number) {
  return {
    restoreStage(stage: string) {
      if (stage === "verify") lowerOpenFiles(pid, 17n);
    },
  };
}

Deno.test("verify: a difference made before the comparison fails the restore, naming it", async () => {
  const { t, dir, image } = await dumped();
  try {
    await assert.rejects(
      restore(image, { policy: tamper(t.pid) }),
      (err: Error) => {
        assert.ok(err instanceof RestoreError, String(err));
        assert.match(err.message, new RegExp(`process ${t.pid}, process: rlimit NOFILE`));
        assert.match(err.message, /kernel \[17, /); // as the tamper set it
        assert.match(err.message, /--allow-differences/);
        return true;
      },
    );
    assert.ok(!isAlive(t.pid), "the refused restore left the process behind");
    // The image is as good as before: a plain restore works and the process checks itself.
    const r = await restore(image);
    assert.equal(r.pid, t.pid);
    assert.deepEqual(r.differences, []);
    assert.equal(await t.check(), "PASS");
  } finally {
    await cleanup(t, dir);
  }
});

Deno.test("verify: an allowed difference is restored and reported", async () => {
  const { t, dir, image } = await dumped();
  try {
    const seen: Difference[] = [];
    const r = await restore(image, {
      policy: { ...tamper(t.pid), allowDifference: (d) => (seen.push(d), true) },
    });
    assert.equal(r.pid, t.pid);
    assert.equal(seen.length, 1);
    assert.equal(r.differences.length, 1);
    assert.equal(r.differences[0].field, "rlimit NOFILE (soft, hard)");
    assert.equal(await t.check(), "PASS");
  } finally {
    await cleanup(t, dir);
  }
});

Deno.test("verify: a restored process matches its image (SDK and inspect --compare)", async () => {
  const { t, dir, image } = await dumped();
  try {
    await restore(image);
    assert.deepEqual(await verifyRestored(image), []);
    const out = await cli("inspect", image, "--compare", "--json");
    assert.equal(out.code, 0, out.stderr);
    assert.deepEqual(JSON.parse(out.stdout).differences, []);
    // Changed afterwards: the comparison says what, and the verb exits 1.
    lowerOpenFiles(t.pid, 19n);
    const again = await cli("inspect", image, "--compare");
    assert.equal(again.code, 1);
    assert.match(again.stdout, /rlimit NOFILE \(soft, hard\): image \[.*\], kernel \[19, /);
    assert.equal(await t.check(), "PASS", "the comparison left the process as it was");
  } finally {
    await cleanup(t, dir);
  }
});

Deno.test("verify: a mapping added or with other VmFlags than its image's is named", async () => {
  const { t, dir, image } = await dumped();
  try {
    await restore(image);
    // A private writable mapping of the program's: its first page is marked MADV_DONTDUMP.
    const target = listMappings(t.pid).find((m) =>
      m.kind === "anonymous" && m.prot.write && !m.shared
    )!;
    assert.ok(target, "the fixture has no private anonymous writable mapping");
    let added: bigint;
    {
      await using f = await freeze(t.pid);
      added = f.injector.call(
        "mmap",
        0,
        4096,
        PROT.READ,
        MAP.PRIVATE | MAP.ANONYMOUS,
        -1,
        0,
      );
      f.injector.call("madvise", target.start, 4096, MADV.DONTDUMP);
    }
    const hex = (x: bigint) => `0x${x.toString(16)}`;
    const diffs = await verifyRestored(image);
    const at = (d: Difference) => `${d.object}: ${d.field}`;
    assert.ok(
      diffs.some((d) =>
        d.object.startsWith(`mapping ${hex(added)}-${hex(added + 4096n)}`) &&
        d.field === "exists" && d.image === "false"
      ),
      diffs.map(at).join("\n"),
    );
    assert.ok(
      diffs.some((d) =>
        d.object.startsWith(`mapping ${hex(target.start)}-`) && d.field.startsWith("VmFlags") &&
        d.kernel === JSON.stringify("dd")
      ),
      diffs.map(at).join("\n"),
    );
    {
      // Undone: the comparison finds nothing again, and the program runs on intact.
      await using f = await freeze(t.pid);
      f.injector.call("munmap", added, 4096);
      f.injector.call("madvise", target.start, 4096, MADV.DODUMP);
    }
    assert.deepEqual(await verifyRestored(image), []);
    assert.equal(await t.check(), "PASS");
  } finally {
    await cleanup(t, dir);
  }
});

Deno.test("verify: a descriptor's open file changed before the comparison is named", async () => {
  const { t, dir, image } = await dumped();
  try {
    // Its stdin (/dev/null, read from a copy by the comparison) made non-blocking and given an
    // I/O signal, through a copy of it: the open file's state, as the process would see it.
    const policy = {
      restoreStage(stage: string) {
        if (stage !== "verify") return;
        const pidfd = pidfdOpen(t.pid);
        const copy = pidfdGetfd(pidfd, 0);
        syscall("fcntl", copy, F.SETFL, O.NONBLOCK);
        syscall("fcntl", copy, F.SETSIG, SIG.SIGUSR2);
        close(copy);
        close(pidfd);
      },
    };
    await assert.rejects(restore(image, { policy }), (err: Error) => {
      assert.ok(err instanceof RestoreError, String(err));
      assert.match(err.message, /fd 0: flags: image "O_RDONLY", kernel "O_RDONLY\|O_NONBLOCK"/);
      assert.match(
        err.message,
        new RegExp(`fd 0: signal \\(F_GETSIG\\): image \\(none\\), kernel ${SIG.SIGUSR2}`),
      );
      return true;
    });
    assert.ok(!isAlive(t.pid), "the refused restore left the process behind");
  } finally {
    await cleanup(t, dir);
  }
});
