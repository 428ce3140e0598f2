/**
 * Lazy (post-copy) restore, on real processes: tests/fixtures/lazy_memory.c fills memory with a
 * pattern and checks it itself right after the restore returns, while most of its pages are
 * still missing and served by the page server: read by the process and by the kernel, by four
 * threads at once, across a fork, and after madvise(DONTNEED), mremap and munmap. A damaged
 * pages file must get the process killed with the reason in the log, never left hanging.
 */
import assert from "node:assert/strict";
import { checkpoint, ImageReader, restore, type RestoreResult } from "../mod.ts";
import type { ProcessEntry } from "../lib/image/schema.ts";
import { close, O, syscall } from "../ffi/mod.ts";
import {
  childrenOf,
  cli,
  fixture,
  isAlive,
  needs,
  removeAnnounced,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

/** Why lazy restore cannot work here: no userfaultfd that serves faults from kernel mode too. */
function noUserfaultfd(): string | undefined {
  try {
    close(Number(syscall("userfaultfd", O.CLOEXEC)));
    return undefined;
  } catch (err) {
    return `no userfaultfd: ${(err as Error).message}`;
  }
}
const missing = noUserfaultfd();

/** A lazy_memory fixture in `mode` with `mib` MiB, dumped (and killed) into a fresh image. */
async function dumped(
  mode: string,
  mib: number,
  checkFirst = true,
): Promise<{ t: Target; tmp: string; image: string; log: string; region: bigint }> {
  const bin = await fixture("lazy_memory");
  const t = await spawnTarget(bin, [mode, String(mib)], { ready: /^(READY|SETUP FAILED) /m });
  const tmp = await Deno.makeTempDir({ prefix: "tardigrade-lazy-" });
  const ready = t.output().match(/^READY .*region=0x([0-9a-f]+)/m);
  assert.ok(ready, `fixture setup failed:\n${t.output()}`);
  if (checkFirst) assert.equal(await t.check(), "PASS", `before the dump:\n${t.output()}`);
  await checkpoint(t.pid, `${tmp}/image`);
  return { t, tmp, image: `${tmp}/image`, log: `${tmp}/lazy.log`, region: BigInt(`0x${ready[1]}`) };
}

function logOf(path: string): string {
  try {
    return Deno.readTextFileSync(path);
  } catch {
    return "";
  }
}

/** Waits until the page server says it is done, and returns its log. */
async function serverDone(log: string): Promise<string> {
  await waitUntil(() => /done in|cannot serve/.test(logOf(log)), 60_000, () => logOf(log));
  return logOf(log);
}

/** The page servers this test process started that still run. */
function pageServers(): number[] {
  return childrenOf(Deno.pid).filter((pid) => {
    try {
      return Deno.readTextFileSync(`/proc/${pid}/cmdline`).includes("page_server_main");
    } catch {
      return false;
    }
  });
}

async function cleanUp(t: Target, tmp: string, server?: number): Promise<void> {
  await t.kill();
  if (server !== undefined && isAlive(server)) {
    try {
      Deno.kill(server, "SIGKILL");
    } catch { /* gone */ }
  }
  await removeAnnounced(t);
  await Deno.remove(tmp, { recursive: true }).catch(() => {});
  await Deno.remove(t.outPath).catch(() => {});
}

Deno.test(
  needs(
    "lazy: restore --lazy runs the process at once; its memory comes in as it reads it, also through the kernel",
    missing,
  ),
  async () => {
    const d = await dumped("plain", 64);
    let server: number | undefined;
    try {
      const out = await cli("restore", d.image, "--lazy", "--lazy-log", d.log, "--json");
      assert.equal(out.code, 0, out.stderr);
      const r = JSON.parse(out.stdout);
      server = r.lazy.server;
      assert.equal(r.pid, d.t.pid);
      assert.ok(r.lazy.bytes > 50 * 1048576, `served lazily: ${r.lazy.bytes} bytes`);
      assert.equal(await d.t.check(), "PASS", d.t.output());
      const log = await serverDone(d.log);
      assert.match(log, /done in .* 1 process\(es\)/);
      assert.equal(await d.t.check(), "PASS", d.t.output());
      const usage = await cli("restore", d.image, "--lazy-log", d.log);
      assert.match(usage.stderr, /--lazy-log goes with --lazy/);
      assert.notEqual(usage.code, 0);
    } finally {
      await cleanUp(d.t, d.tmp, server);
    }
  },
);

Deno.test(needs("lazy: four threads fault on missing pages at once", missing), async () => {
  const d = await dumped("threads", 64);
  let r: RestoreResult | undefined;
  try {
    r = await restore(d.image, { lazy: true, lazyLog: d.log });
    assert.equal(r.threads, 5);
    assert.equal(await d.t.check(), "PASS", d.t.output());
    await serverDone(d.log);
    assert.equal(await d.t.check(), "PASS", d.t.output());
  } finally {
    await cleanUp(d.t, d.tmp, r?.lazy?.server);
  }
});

Deno.test(
  needs("lazy: a fork while pages are missing gives the child the image's pages too", missing),
  async () => {
    const d = await dumped("fork", 256);
    let r: RestoreResult | undefined;
    try {
      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      const from = d.t.output().length;
      assert.equal(await d.t.check(), "PASS", d.t.output());
      const missing = Number(d.t.output().slice(from).match(/^MISSING (\d+)$/m)?.[1]);
      assert.ok(missing > 0, `no page was missing at the fork:\n${d.t.output()}`);
      const log = await serverDone(d.log);
      assert.match(log, /done in .* 2 process\(es\)/);
      await waitUntil(() => !pageServers().includes(r!.lazy!.server), 10_000, "the server to end");
      assert.equal(await d.t.check(), "PASS", d.t.output());
    } finally {
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);

Deno.test(
  needs("lazy: madvise(DONTNEED), mremap and munmap of missing pages", missing),
  async () => {
    // Checked only once restored: the first check discards, moves and unmaps.
    const d = await dumped("remap", 128, false);
    let r: RestoreResult | undefined;
    try {
      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      assert.equal(await d.t.check(), "PASS", d.t.output());
      await serverDone(d.log);
      assert.equal(await d.t.check(), "PASS", d.t.output());
    } finally {
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);

Deno.test(
  needs(
    "lazy: a damaged pages file gets the process killed with the reason logged, not left hanging",
    missing,
  ),
  async () => {
    const d = await dumped("plain", 64);
    let r: RestoreResult | undefined;
    try {
      // Damage the image's bytes of a page in the middle of the region.
      const target = d.region + 32n * 1048576n;
      using reader = await ImageReader.open(d.image);
      const entry = await reader.readMeta<ProcessEntry>("process");
      const run = entry.mappings.flatMap((m) => m.pages).find((p) =>
        p.start <= target && target < p.start + BigInt(p.length)
      );
      assert.ok(run, "no run holds the middle of the region");
      const extent = entry.extents[run.extent];
      const at = extent.offset + run.offset + Number(target - run.start);
      const file = await Deno.open(`${d.image}/${extent.file}`, { write: true });
      await file.seek(at, Deno.SeekMode.Start);
      await file.write(new Uint8Array(64).fill(0xbd));
      file.close();

      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      Deno.kill(d.t.pid, "SIGUSR1"); // it reads its memory: the damaged page among it
      await waitUntil(() => !isAlive(d.t.pid), 60_000, () => `pid ${d.t.pid} to be killed`);
      const log = await serverDone(d.log);
      assert.match(log, /checksum mismatch/);
      assert.match(log, new RegExp(`killed ${d.t.pid}`));
      // And the process's own stderr (its output file here) says so.
      assert.match(d.t.output(), /tardigrade: lazy restore: .*checksum mismatch.*: killed/);
      assert.doesNotMatch(d.t.output().split("READY")[1] ?? "", /FAIL/);
    } finally {
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);

Deno.test(
  needs(
    "lazy: a pages file cut short while pages are missing gets the process killed, not left hanging",
    missing,
  ),
  async () => {
    const d = await dumped("plain", 256, false);
    let r: RestoreResult | undefined;
    try {
      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      const server = r.lazy!.server;
      Deno.kill(server, "SIGSTOP"); // held while the image goes: most of the region is still missing
      const files = [...Deno.readDirSync(d.image)].filter((e) => /^pages-/.test(e.name));
      for (const f of files) {
        const path = `${d.image}/${f.name}`;
        await Deno.truncate(path, Math.floor(Deno.statSync(path).size / 4));
      }
      Deno.kill(server, "SIGCONT");
      await waitUntil(() => !isAlive(d.t.pid), 60_000, () => `pid ${d.t.pid} to be killed`);
      const log = await serverDone(d.log);
      assert.match(log, /truncated/);
      assert.match(log, new RegExp(`killed ${d.t.pid}`));
      assert.match(d.t.output(), /tardigrade: lazy restore: .*truncated.*: killed/);
    } finally {
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);

Deno.test(
  needs("lazy: an incremental image serves the pages it takes from its parent", missing),
  async () => {
    const bin = await fixture("lazy_memory");
    const t = await spawnTarget(bin, ["plain", "32"], { ready: /^(READY|SETUP FAILED) /m });
    const tmp = await Deno.makeTempDir({ prefix: "tardigrade-lazy-" });
    let r: RestoreResult | undefined;
    try {
      await checkpoint(t.pid, `${tmp}/full`, { leaveRunning: true });
      await checkpoint(t.pid, `${tmp}/incr`, { parent: `${tmp}/full` });
      r = await restore(`${tmp}/incr`, { lazy: true, lazyLog: `${tmp}/lazy.log` });
      assert.ok(r.lazy!.bytes > 30 * 1048576, `served lazily: ${r.lazy!.bytes} bytes`);
      assert.equal(await t.check(), "PASS", t.output());
      assert.match(await serverDone(`${tmp}/lazy.log`), /done in/);
    } finally {
      await cleanUp(t, tmp, r?.lazy?.server);
    }
  },
);

Deno.test(
  needs("lazy: the page server ends when the process exits before its pages are in", missing),
  async () => {
    const d = await dumped("plain", 256, false);
    let r: RestoreResult | undefined;
    try {
      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      await d.t.kill();
      const log = await serverDone(d.log);
      assert.match(log, /done in .* MiB dropped or not needed/);
      const server = r.lazy!.server;
      await waitUntil(() => !isAlive(server), 30_000, () => `page server ${server} to end`);
    } finally {
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);

/** Fixtures of the restore suite (tests/fixtures/r_*.c) that check themselves restored lazily. */
const suiteFixtures = [
  "r_memory",
  "r_threads",
  "r_heap_grow",
  "r_stack_grow",
  "r_mprotect",
  "r_madvise",
  "r_vma_flags",
  "r_private_file_map",
  "r_shared_anon",
  "r_guard_pages",
  "r_mseal",
  "r_rseq",
  "r_nanosleep",
  "r_sigaltstack",
  "r_fpu",
  "r_other_uid",
  "r_seccomp",
  "r_cow_fork", // a tree: pages shared copy-on-write stay one page
  "r_tree", // a tree sharing a pipe and memory
];

for (const name of suiteFixtures) {
  Deno.test(needs(`lazy: ${name} restored lazily checks itself`, missing), async () => {
    const bin = await fixture(name);
    const t = await spawnTarget(bin, [], { ready: /^(READY|SETUP FAILED) /m });
    const tmp = await Deno.makeTempDir({ prefix: "tardigrade-lazy-" });
    const children = childrenOf(t.pid);
    let r: RestoreResult | undefined;
    try {
      assert.match(t.output(), /^READY /m, `fixture setup failed:\n${t.output()}`);
      assert.equal(await t.check(), "PASS", `before the dump:\n${t.output()}`);
      await checkpoint(t.pid, `${tmp}/image`);
      r = await restore(`${tmp}/image`, { lazy: true, lazyLog: `${tmp}/lazy.log` });
      assert.equal(await t.check(), "PASS", `restored lazily:\n${t.output()}`);
      assert.match(await serverDone(`${tmp}/lazy.log`), /done in/);
      assert.equal(await t.check(), "PASS", `every page in:\n${t.output()}`);
    } finally {
      for (const c of children) {
        try {
          Deno.kill(c, "SIGKILL");
        } catch { /* gone */ }
      }
      await cleanUp(t, tmp, r?.lazy?.server);
    }
  });
}

Deno.test(
  needs(
    "lazy: a parent and its child restored lazily, one page server serving both, each checks its memory",
    missing,
  ),
  async () => {
    const d = await dumped("tree", 64);
    let r: RestoreResult | undefined;
    try {
      r = await restore(d.image, { lazy: true, lazyLog: d.log });
      assert.equal(r.processes.length, 2);
      const child = r.processes[1];
      // Both had pages missing: the parent the half it wrote after the fork, the child its own
      // mapping (the half they share was in the parent before the child was forked).
      assert.ok(r.lazy!.bytes >= 60 * 1048576, `served lazily: ${r.lazy!.bytes} bytes`);
      assert.equal(await d.t.check(), "PASS", d.t.output());
      const log = await serverDone(d.log);
      assert.match(log, new RegExp(`serving [\\d.]+ MiB of process\\(es\\) ${d.t.pid}, ${child} `));
      assert.match(log, /done in .* 2 process\(es\)/);
      await waitUntil(() => !pageServers().includes(r!.lazy!.server), 10_000, "the server to end");
      assert.equal(await d.t.check(), "PASS", d.t.output());
    } finally {
      for (const c of r?.processes.slice(1) ?? []) {
        try {
          Deno.kill(c, "SIGKILL");
        } catch { /* gone */ }
      }
      await cleanUp(d.t, d.tmp, r?.lazy?.server);
    }
  },
);
