/**
 * Checkpoint on real processes (issue 4): the image agrees with /proc, `leaveRunning` leaves the
 * target exactly as it was, no failure harms the target or leaves an image behind, and the
 * example policies do what they promise through checkpoint and restore.
 */
import assert from "node:assert/strict";
import { KCMP, kcmp } from "../ffi/mod.ts";
import {
  checkpoint,
  DumpError,
  ImageError,
  ImageReader,
  loadPolicy,
  NoSuchProcess,
  type Policy,
  restore,
} from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import { fixture, removeAnnounced, spawnTarget, type Target, waitUntil } from "./helpers.ts";

const root = new URL("../", import.meta.url).pathname;
const O_CLOEXEC = 0o2000000;
const RLIM_INFINITY = 2n ** 64n - 1n;

// ---------------------------------------------------------------------------------------------
// What /proc says about a process

interface MapsLine {
  start: bigint;
  end: bigint;
  perms: string;
  offset: bigint;
  path: string;
}

function readMaps(pid: number): MapsLine[] {
  return Deno.readTextFileSync(`/proc/${pid}/maps`).trimEnd().split("\n").map((line) => {
    const m = line.match(/^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ \d+\s*(.*)$/);
    assert.ok(m, `maps line ${line}`);
    return {
      start: BigInt(`0x${m[1]}`),
      end: BigInt(`0x${m[2]}`),
      perms: m[3],
      offset: BigInt(`0x${m[4]}`),
      path: m[5],
    };
  });
}

function statusOf(path: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of Deno.readTextFileSync(path).split("\n")) {
    const i = line.indexOf(":");
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1).trim());
  }
  return out;
}

function tidsOf(pid: number): number[] {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name)).sort((a, b) =>
    a - b
  );
}

interface FdView {
  fd: number;
  target: string;
  flags: number;
  pos: bigint;
}

function fdsOf(pid: number): FdView[] {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].map((e) => Number(e.name)).sort((a, b) => a - b)
    .map((fd) => {
      const info = statusOf(`/proc/${pid}/fdinfo/${fd}`);
      return {
        fd,
        target: Deno.readLinkSync(`/proc/${pid}/fd/${fd}`),
        flags: parseInt(info.get("flags")!, 8),
        pos: BigInt(info.get("pos")!),
      };
    });
}

/** /proc/PID/limits as (soft, hard) in RLIMIT order. */
function limitsOf(pid: number): [bigint, bigint][] {
  const lines = Deno.readTextFileSync(`/proc/${pid}/limits`).trimEnd().split("\n").slice(1);
  const value = (s: string) => s === "unlimited" ? RLIM_INFINITY : BigInt(s);
  return lines.map((l) => {
    const [, soft, hard] = l.split(/\s{2,}/);
    return [value(soft), value(hard)];
  });
}

/** Signals of a /proc status mask (bit n-1 is signal n). */
function maskSignals(hex: string): number[] {
  const mask = BigInt(`0x${hex}`);
  const out: number[] = [];
  for (let s = 1; s <= 64; s++) if (mask & (1n << BigInt(s - 1))) out.push(s);
  return out;
}

const uniqueSorted = (xs: number[]) => [...new Set(xs)].sort((a, b) => a - b);

/** Everything a dump must not change, as /proc shows it. */
function snapshot(pid: number) {
  return {
    maps: Deno.readTextFileSync(`/proc/${pid}/maps`),
    tids: tidsOf(pid),
    // The output file's position moves with every check: left out.
    fds: fdsOf(pid).map((f) => f.fd <= 2 ? { ...f, pos: -1n } : f),
    sigmasks: tidsOf(pid).map((t) => statusOf(`/proc/${pid}/task/${t}/status`).get("SigBlk")),
  };
}

/** Asserts that no thread of `pid` is traced or in a tracing stop. */
function assertDetached(pid: number): void {
  for (const tid of tidsOf(pid)) {
    const st = statusOf(`/proc/${pid}/task/${tid}/status`);
    assert.equal(st.get("TracerPid"), "0", `thread ${tid} still traced`);
    assert.ok(!/^[tT]/.test(st.get("State")!), `thread ${tid} is ${st.get("State")}`);
  }
}

function tempBase(): string {
  return Deno.makeTempDirSync({ prefix: "tardigrade-ck-" });
}

/** Names in `base` that are the image `base/img` or a partial one of it. */
function leftovers(base: string, name = "img"): string[] {
  return [...Deno.readDirSync(base)].map((e) => e.name)
    .filter((n) => n === name || n.startsWith(`${name}.partial-`));
}

async function readImage(dir: string): Promise<ProcessEntry> {
  using image = await ImageReader.open(dir);
  return await image.readMeta<ProcessEntry>("process");
}

async function start(name: string, args: string[] = []): Promise<Target> {
  const t = await spawnTarget(await fixture(name), args, { ready: /^(READY|SETUP FAILED) /m });
  assert.match(t.output(), /^READY /m, `${name} setup failed:\n${t.output()}`);
  return t;
}

/** Kills the target and removes its output and announced temporary files. */
async function cleanup(t: Target, ...dirs: string[]): Promise<void> {
  await t.kill();
  await removeAnnounced(t);
  for (const d of dirs) await Deno.remove(d, { recursive: true }).catch(() => {});
  await Deno.remove(t.outPath).catch(() => {});
}

/** The target runs on as before: alive, detached, its check passes, its layout unchanged. */
async function assertUnharmed(t: Target, before?: ReturnType<typeof snapshot>): Promise<void> {
  assert.ok(t.alive(), `target ${t.pid} died; output:\n${t.output()}`);
  assertDetached(t.pid);
  assert.equal(await t.check(), "PASS", `check after; output:\n${t.output()}`);
  if (before) assert.deepEqual(snapshot(t.pid), before);
}

// ---------------------------------------------------------------------------------------------
// 1. The image agrees with /proc

for (
  const name of [
    "r_memory",
    "r_threads",
    "r_file_flags",
    "r_dup_shared_pos",
    "r_pipe",
    "r_signals",
    "r_mprotect",
    "r_shared_anon",
  ]
) {
  Deno.test(`checkpoint: the image of ${name} agrees with /proc`, async () => {
    const t = await start(name);
    const base = tempBase();
    try {
      assert.equal(await t.check(), "PASS");
      const pid = t.pid;
      const maps = readMaps(pid);
      const tids = tidsOf(pid);
      const fds = fdsOf(pid);
      const status = statusOf(`/proc/${pid}/status`);
      const threadStatus = new Map(
        tids.map((tid) => [tid, statusOf(`/proc/${pid}/task/${tid}/status`)]),
      );
      const threadComm = new Map(
        tids.map((tid) => [tid, Deno.readTextFileSync(`/proc/${pid}/task/${tid}/comm`).trimEnd()]),
      );
      const limits = limitsOf(pid);
      const cwd = Deno.readLinkSync(`/proc/${pid}/cwd`);
      const comm = Deno.readTextFileSync(`/proc/${pid}/comm`).trimEnd();
      // Pairs of fds that share one open file description.
      const sharing = new Map<string, boolean>();
      for (const a of fds) {
        for (const b of fds) {
          sharing.set(`${a.fd}:${b.fd}`, kcmp(pid, pid, KCMP.FILE, a.fd, b.fd) === 0);
        }
      }

      const result = await checkpoint(pid, `${base}/img`, { leaveRunning: true });
      assert.equal(result.killed, false);
      const p = await readImage(`${base}/img`);

      // Mappings: every line of maps but [vsyscall], the special ones in `special`.
      let special = 0;
      for (const m of maps) {
        const what = `${m.start.toString(16)}-${m.end.toString(16)} ${m.perms} ${m.path}`;
        if (m.path === "[vsyscall]") continue;
        if (m.path === "[vdso]" || m.path === "[vvar]" || m.path === "[vvar_vclock]") {
          const key = {
            "[vdso]": "vdso",
            "[vvar]": "vvar",
            "[vvar_vclock]": "vvarVclock",
          }[m.path] as "vdso" | "vvar" | "vvarVclock";
          assert.equal(p.special[key]?.start, m.start, what);
          assert.equal(p.special[key]?.end, m.end, what);
          special++;
          continue;
        }
        const e = p.mappings.find((x) => x.start === m.start);
        assert.ok(e, `${what} missing from the image`);
        assert.equal(e.end, m.end, what);
        const perms = (e.prot & 1 ? "r" : "-") + (e.prot & 2 ? "w" : "-") +
          (e.prot & 4 ? "x" : "-") +
          (e.shared ? "s" : "p");
        assert.equal(perms, m.perms, what);
        assert.equal(e.offset, m.offset, what);
        assert.equal(e.name ?? "", m.path, what);
      }
      assert.equal(
        p.mappings.length + special,
        maps.filter((m) => m.path !== "[vsyscall]").length,
        "the image has mappings /proc did not show",
      );

      // Threads: tids, names, masks, pending signals.
      assert.deepEqual(p.threads.map((x) => x.tid).sort((a, b) => a - b), tids);
      assert.equal(p.threads[0].tid, pid, "leader first");
      for (const th of p.threads) {
        const st = threadStatus.get(th.tid)!;
        assert.equal(th.sigmask, BigInt(`0x${st.get("SigBlk")}`), `SigBlk of ${th.tid}`);
        assert.deepEqual(
          uniqueSorted(th.pending.map((s) => s.signo)),
          maskSignals(st.get("SigPnd")!),
          `SigPnd of ${th.tid}`,
        );
        assert.equal(th.name, threadComm.get(th.tid));
      }
      assert.deepEqual(
        uniqueSorted(p.sharedPending.map((s) => s.signo)),
        maskSignals(status.get("ShdPnd")!),
        "ShdPnd",
      );

      // Descriptors: numbers, flags, positions, one file per open file description.
      assert.deepEqual(p.fds.map((f) => f.fd), fds.map((f) => f.fd));
      const files = new Map(p.files.map((f) => [f.id, f]));
      assert.equal(files.size, p.files.length, "file ids are unique");
      for (const f of fds) {
        const e = p.fds.find((x) => x.fd === f.fd)!;
        const file = files.get(e.file);
        assert.ok(file, `fd ${f.fd}: file ${e.file} missing`);
        assert.equal(e.closeOnExec, (f.flags & O_CLOEXEC) !== 0, `fd ${f.fd} close-on-exec`);
        assert.equal(file.flags & ~O_CLOEXEC, f.flags & ~O_CLOEXEC, `fd ${f.fd} flags`);
        if ("position" in file) assert.equal(file.position, f.pos, `fd ${f.fd} position`);
      }
      for (const a of p.fds) {
        for (const b of p.fds) {
          assert.equal(
            a.file === b.file,
            sharing.get(`${a.fd}:${b.fd}`),
            `fds ${a.fd}, ${b.fd} sharing`,
          );
        }
      }
      for (const f of p.files) assert.ok(p.fds.some((x) => x.file === f.id), `file ${f.id} unused`);

      // Process state.
      assert.equal(p.rlimits.length, limits.length);
      for (const r of p.rlimits) {
        assert.deepEqual([r.soft, r.hard], limits[r.resource], `rlimit ${r.resource}`);
      }
      assert.equal(p.cwd, cwd);
      assert.equal(p.umask, parseInt(status.get("Umask")!, 8));
      assert.equal(p.comm, comm);
      assert.equal(p.pid, pid);
      assert.equal(p.ppid, Number(status.get("PPid")));

      await assertUnharmed(t);
    } finally {
      await cleanup(t, base);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// 2. leaveRunning

Deno.test("checkpoint: leaveRunning leaves a large, busy process exactly as it was", async () => {
  const t = await start("ck_big", ["64"]);
  const base = tempBase();
  try {
    assert.equal(await t.check(), "PASS");
    assert.equal(await t.check(), "PASS");
    const before = snapshot(t.pid);
    const region = BigInt(t.output().match(/region=(0x[0-9a-f]+)/)![1]);
    for (let i = 0; i < 3; i++) {
      const dir = `${base}/img${i}`;
      const r = await checkpoint(t.pid, dir, { leaveRunning: true });
      assert.equal(r.killed, false);
      assert.equal(r.threads, 2);
      assert.ok(r.pageBytes >= 64 << 20, `only ${r.pageBytes} bytes of pages`);
      // No trace of the dumper: same maps (no scratch page), fds, threads and masks.
      await assertUnharmed(t, before);
      assert.equal(await t.check(), "PASS");
      const p = await readImage(dir);
      const m = p.mappings.find((x) => x.start <= region && region < x.end)!;
      assert.ok(m.pages.reduce((n, r) => n + r.length, 0) >= 64 << 20, "region pages dumped");
    }
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("checkpoint: pages a child shares copy-on-write stay shared, in the live tree and the image", async () => {
  const t = await start("r_cow_fork");
  const base = tempBase();
  try {
    const region = BigInt(t.output().match(/region=(0x[0-9a-f]+)/)![1]);
    const child = Number(t.output().match(/child=(\d+)/)![1]);
    await checkpoint(t.pid, `${base}/img`, { leaveRunning: true });
    // Its check compares the page frames of parent and child: reading them did not un-share them.
    assert.equal(await t.check(), "PASS");
    using image = await ImageReader.open(`${base}/img`);
    assert.equal(image.manifest.format, 3);
    const mine = await image.readMeta<ProcessEntry>("process");
    const its = await image.readMeta<ProcessEntry>(`process-${child}`);
    const at = (p: ProcessEntry) => p.mappings.find((m) => m.start <= region && region < m.end)!;
    const runBytes = (m: { pages: { length: number }[] }) =>
      m.pages.reduce((n, x) => n + x.length, 0);
    assert.ok(runBytes(at(mine)) >= 34 * 4096, "the parent's entry holds the region");
    // The child's holds only what it does not share: not the 32 shared pages.
    assert.deepEqual(at(its).sharedWithParent?.[0].start, region);
    assert.ok(runBytes(at(its)) <= 2 * 4096, `child stores ${runBytes(at(its))} bytes`);
  } finally {
    await cleanup(t, base);
  }
});

// ---------------------------------------------------------------------------------------------
// 3. Never harm the target

Deno.test("checkpoint: a dead pid is NoSuchProcess and leaves nothing behind", async () => {
  const t = await start("hello");
  const base = tempBase();
  try {
    const pid = t.pid;
    await t.kill();
    await assert.rejects(
      checkpoint(pid, `${base}/img`),
      (err: Error) =>
        err instanceof NoSuchProcess && new RegExp(`no such process ${pid}`).test(err.message),
    );
    assert.deepEqual(leftovers(base), []);
  } finally {
    await cleanup(t, base);
  }
});

/** Runs a checkpoint expected to fail and checks the target came through it unharmed. */
async function failingDump(
  name: string,
  opts: { policy?: Policy; leaveRunning?: boolean },
  expect: (err: Error) => boolean,
  args: string[] = [],
): Promise<void> {
  const t = await start(name, args);
  const base = tempBase();
  try {
    assert.equal(await t.check(), "PASS");
    const before = snapshot(t.pid);
    await assert.rejects(checkpoint(t.pid, `${base}/img`, { ...opts }), expect);
    assert.deepEqual(leftovers(base), []);
    await assertUnharmed(t, before);
  } finally {
    await cleanup(t, base);
  }
}

Deno.test("checkpoint: an fd it cannot dump is a DumpError naming the fd and its kind", async () => {
  // A UNIX connection to this test process, which the dump cannot take along.
  const dir = Deno.makeTempDirSync({ prefix: "tardigrade-ck-" });
  const listener = Deno.listen({ transport: "unix", path: `${dir}/listener.sock` });
  try {
    await failingDump(
      "unix_client",
      {},
      (err) =>
        err instanceof DumpError && /\bfd 3\b/.test(err.message) && /socket/.test(err.message),
      [`${dir}/listener.sock`],
    );
  } finally {
    listener.close();
    Deno.removeSync(dir, { recursive: true });
  }
});

Deno.test("checkpoint: a process in another user namespace only is refused, naming it", async () => {
  // unshare execs the fixture in a new user namespace: the pid is the fixture's. A user namespace
  // is carried with a pid namespace of the container's own, which this one lacks.
  const bin = await fixture("r_memory");
  const t = await spawnTarget("unshare", ["--user", bin], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  const base = tempBase();
  try {
    const before = snapshot(t.pid);
    await assert.rejects(
      checkpoint(t.pid, `${base}/img`),
      (err) =>
        err instanceof DumpError &&
        /a user namespace of its own but in tardigrade's pid namespace/.test(err.message),
    );
    assert.deepEqual(leftovers(base), []);
    await assertUnharmed(t, before);
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("checkpoint: a policy that skips sockets dumps r_socketpair", async () => {
  const t = await start("r_socketpair");
  const base = tempBase();
  try {
    const before = snapshot(t.pid);
    const r = await checkpoint(t.pid, `${base}/img`, {
      leaveRunning: true,
      policy: { fd: (fd) => fd.kind === "socket" ? "skip" : "dump" },
    });
    assert.equal(r.fds, 3);
    assert.deepEqual((await readImage(`${base}/img`)).fds.map((f) => f.fd), [0, 1, 2]);
    await assertUnharmed(t, before);
  } finally {
    await cleanup(t, base);
  }
});

for (const hook of ["beforeFreeze", "mapping", "fd", "afterDump"] as const) {
  Deno.test(`checkpoint: a policy whose ${hook} hook throws leaves the target as it was`, async () => {
    const policy: Policy = { [hook]: () => Promise.reject(new Error(`refused by ${hook}`)) };
    for (const leaveRunning of [false, true]) {
      await failingDump(
        "r_memory",
        { policy, leaveRunning },
        (err) => err.message === `refused by ${hook}`,
      );
    }
  });
}

Deno.test("checkpoint: a full file system fails the dump cleanly", async () => {
  const t = await start("ck_big", ["16"]);
  const base = tempBase();
  const mnt = `${base}/mnt`;
  Deno.mkdirSync(mnt);
  const mount = await new Deno.Command("mount", {
    args: ["-t", "tmpfs", "-o", "size=1m", "tmpfs", mnt],
  }).output();
  assert.ok(mount.success, new TextDecoder().decode(mount.stderr));
  try {
    assert.equal(await t.check(), "PASS");
    const before = snapshot(t.pid);
    for (const leaveRunning of [false, true]) {
      await assert.rejects(
        checkpoint(t.pid, `${mnt}/img`, { leaveRunning }),
        (err: Error) =>
          err instanceof ImageError && /No space left|ENOSPC|space/i.test(err.message),
      );
      assert.deepEqual(leftovers(mnt), []);
      await assertUnharmed(t, before);
    }
  } finally {
    await new Deno.Command("umount", { args: [mnt] }).output();
    await cleanup(t, base);
  }
});

Deno.test("checkpoint: a target that dies mid-dump fails the dump cleanly", async () => {
  for (const hook of ["mapping", "fd", "afterDump"] as const) {
    const t = await start("r_memory");
    const base = tempBase();
    try {
      let killed = false;
      const die = () => {
        if (!killed) Deno.kill(t.pid, "SIGKILL");
        killed = true;
      };
      const policy: Policy = hook === "mapping"
        ? { mapping: () => (die(), "dump") }
        : hook === "fd"
        ? { fd: () => (die(), "dump") }
        : { afterDump: () => die() };
      const started = Date.now();
      if (hook === "afterDump") {
        // Everything was read while it was frozen: the image is complete and good.
        const r = await checkpoint(t.pid, `${base}/img`, { policy });
        assert.equal((await readImage(r.dir)).pid, t.pid);
      } else {
        await assert.rejects(
          checkpoint(t.pid, `${base}/img`, { policy }),
          (err: Error) =>
            err instanceof NoSuchProcess && err.message.includes(`no such process ${t.pid}`) ||
            (console.error(hook, err), false),
          `killed in ${hook}`,
        );
        assert.deepEqual(leftovers(base), []);
      }
      assert.ok(Date.now() - started < 5000, "took too long");
      assert.ok(!t.alive());
    } finally {
      await cleanup(t, base);
    }
  }
});

/** Starts `tardigrade dump PID DIR` on a large target and returns once it is writing pages. */
async function dumperMidDump(pid: number, dir: string, base: string) {
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", `${root}main.ts`, "dump", String(pid), dir],
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const deadline = Date.now() + 20_000;
  for (;;) {
    const partial = [...Deno.readDirSync(base)].find((e) => e.name.startsWith("img.partial-"));
    let size = 0;
    if (partial) {
      try {
        size = Deno.statSync(`${base}/${partial.name}/pages-0.img`).size;
      } catch { /* not yet */ }
    }
    if (size >= 64 << 20) break;
    if (Date.now() > deadline) {
      child.kill("SIGKILL");
      throw new Error(
        `the dumper never got to writing pages: ${
          new TextDecoder().decode((await child.output()).stderr)
        }`,
      );
    }
    await new Promise((r) => setTimeout(r, 2));
  }
  return child;
}

for (const signal of ["SIGINT", "SIGTERM", "SIGKILL"] as const) {
  Deno.test(`checkpoint: ${signal} to the dumper mid-dump leaves the target running`, async () => {
    const t = await start("ck_big", ["1024"]);
    const base = tempBase();
    try {
      assert.equal(await t.check(), "PASS");
      const before = snapshot(t.pid);
      const child = await dumperMidDump(t.pid, `${base}/img`, base);
      child.kill(signal);
      const out = await child.output();
      const stderr = new TextDecoder().decode(out.stderr);
      assert.ok(!out.success, `the dump finished anyway: ${stderr}`);
      assert.ok(!leftovers(base).includes("img"), "an image was committed");
      if (signal !== "SIGKILL") {
        assert.equal(out.code, signal === "SIGINT" ? 130 : 143, stderr);
        assert.deepEqual(leftovers(base), [], "a partial image was left behind");
        await assertUnharmed(t, before);
      } else {
        // Nobody can clean up after SIGKILL: the partial image stays, the target runs on.
        assert.ok(t.alive(), `target died; output:\n${t.output()}`);
        assertDetached(t.pid);
        for (let i = 0; i < 3; i++) assert.equal(await t.check(), "PASS");
        // Same maps (the scratch page is gone before the long copy), fds, threads and masks.
        assert.deepEqual(snapshot(t.pid), before);
      }
    } finally {
      await cleanup(t, base);
    }
  });
}

// ---------------------------------------------------------------------------------------------
// 3b. Seccomp: the filters are suspended while we inject, or the dump is refused

/** Waits until `pid` is gone or a zombie. */
function waitDead(t: Target, pid = t.pid, timeoutMs = 5000): Promise<void> {
  return waitUntil(() => !t.alive(pid), timeoutMs, () => `${pid} to end; output:\n${t.output()}`);
}

Deno.test("checkpoint: a process under a KILL-by-default seccomp filter survives a leaveRunning dump", async () => {
  const t = await start("ck_seccomp");
  const base = tempBase();
  try {
    assert.equal(await t.check(), "PASS");
    const before = snapshot(t.pid);
    // mmap, prctl, rt_sigaction, getitimer … would each kill it were its filter not suspended.
    const r = await checkpoint(t.pid, `${base}/img`, { leaveRunning: true });
    assert.equal(r.killed, false);
    await assertUnharmed(t, before);
    // The filter is live again once we let go: a forbidden syscall still kills it.
    Deno.kill(t.pid, "SIGUSR2");
    await waitDead(t);
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("checkpoint: a process under a KILL-by-default seccomp filter comes back with it", async () => {
  const t = await start("ck_seccomp");
  const base = tempBase();
  try {
    assert.equal(await t.check(), "PASS");
    await checkpoint(t.pid, `${base}/img`);
    const p = await readImage(`${base}/img`);
    assert.equal(p.seccompFilters?.length, 1);
    assert.deepEqual(p.threads[0].seccomp, { mode: 2, filters: [0] });
    assert.equal(p.threads[0].noNewPrivs, true);
    // Everything the restore injects after the filter (munmap of its scratch page …) runs.
    const r = await restore(`${base}/img`);
    assert.equal(r.pid, t.pid);
    assert.equal(await t.check(), "PASS", t.output());
    assertDetached(t.pid);
    // The KILL default is in force again once the restore lets go.
    Deno.kill(t.pid, "SIGUSR2");
    await waitDead(t);
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("checkpoint: without CAP_SYS_ADMIN a process under seccomp is refused before any injection", async () => {
  const t = await start("ck_seccomp");
  const base = tempBase();
  try {
    assert.equal(await t.check(), "PASS");
    const before = snapshot(t.pid);
    // The dumper runs as root without CAP_SYS_ADMIN: it may trace, not suspend seccomp.
    const out = await new Deno.Command("setpriv", {
      args: [
        "--inh-caps=-sys_admin",
        "--bounding-set=-sys_admin",
        "--",
        Deno.execPath(),
        "run",
        "-A",
        `${root}main.ts`,
        "dump",
        String(t.pid),
        `${base}/img`,
      ],
      stdin: "null",
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(!out.success, `the dump went through: ${stderr}`);
    assert.match(stderr, /confined by seccomp \(a filter\).*CAP_SYS_ADMIN/s);
    assert.deepEqual(leftovers(base), []);
    await assertUnharmed(t, before);
  } finally {
    await cleanup(t, base);
  }
});

// ---------------------------------------------------------------------------------------------
// 4. The example policies through checkpoint and restore

const logDir = Deno.makeTempDirSync({ prefix: "tardigrade-ck-log-" });
Deno.env.set("TARDIGRADE_LOG", `${logDir}/moved.log`);
const policies = {
  skipCache: await loadPolicy(`${root}examples/policies/skip-cache.ts`),
  redact: await loadPolicy(`${root}examples/policies/redact.ts`),
  reopenLog: await loadPolicy(`${root}examples/policies/reopen-log.ts`),
};
Deno.env.delete("TARDIGRADE_LOG");
addEventListener("unload", () => Deno.removeSync(logDir, { recursive: true }));

/** Runs check and returns the STATE line it printed before PASS. */
async function policyCheck(t: Target): Promise<string> {
  const from = t.output().length;
  assert.equal(await t.check(), "PASS", t.output());
  return t.output().slice(from).match(/^STATE (.*)$/m)![1];
}

async function dumpAndRestore(t: Target, dir: string, policy: Policy): Promise<void> {
  await checkpoint(t.pid, dir, { policy });
  const r = await restore(dir);
  assert.equal(r.pid, t.pid);
}

function contains(hay: Uint8Array, needle: Uint8Array): boolean {
  for (let i = hay.indexOf(needle[0]); i >= 0; i = hay.indexOf(needle[0], i + 1)) {
    let j = 1;
    while (j < needle.length && hay[i + j] === needle[j]) j++;
    if (j === needle.length) return true;
  }
  return false;
}

Deno.test("policies: skip-cache leaves out the 64 MiB cache, which comes back empty", async () => {
  const t = await start("ck_policy");
  const base = tempBase();
  try {
    assert.equal(await policyCheck(t), "cache=intact secret=present");
    const cache = BigInt(t.output().match(/cache=(0x[0-9a-f]+)/)![1]);
    await dumpAndRestore(t, `${base}/img`, policies.skipCache);
    const p = await readImage(`${base}/img`);
    const m = p.mappings.find((x) => x.start === cache)!;
    assert.equal(m.end - m.start, 64n << 20n);
    assert.deepEqual(m.pages, []);
    assert.ok(p.mappings.find((x) => x.kind === "heap")!.pages.length > 0);
    assert.equal(await policyCheck(t), "cache=empty secret=present");
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("policies: redact keeps the private key out of the image", async () => {
  const t = await start("ck_policy");
  const base = tempBase();
  try {
    assert.equal(await policyCheck(t), "cache=intact secret=present");
    const secret = t.output().match(/secret=(0x[0-9a-f]+)/)![1].replace(/^0x/, "");
    // afterDump names what it left out, once per dump (two dumps, the same module).
    const said: string[] = [];
    const log = console.error;
    console.error = (...args: unknown[]) => said.push(args.join(" "));
    try {
      await checkpoint(t.pid, `${base}/first`, {
        policy: policies.redact,
        leaveRunning: true,
      });
      await dumpAndRestore(t, `${base}/img`, policies.redact);
    } finally {
      console.error = log;
    }
    assert.equal(said.length, 2, said.join("\n"));
    for (const line of said) {
      assert.match(line, new RegExp(`^redact: left out of \\S+: 0x${secret}-0x[0-9a-f]+$`));
    }
    const marker = new TextEncoder().encode("-----BEGIN PRIVATE KEY-----");
    for (const e of Deno.readDirSync(`${base}/img`)) {
      assert.ok(
        !contains(Deno.readFileSync(`${base}/img/${e.name}`), marker),
        `marker in ${e.name}`,
      );
    }
    assert.equal(await policyCheck(t), "cache=intact secret=zeroed");
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("policies: reopen-log moves the log to TARDIGRADE_LOG", async () => {
  const t = await start("ck_policy");
  const base = tempBase();
  const moved = `${logDir}/moved.log`;
  Deno.writeTextFileSync(moved, "moved\n");
  try {
    const log = t.output().match(/log=(\S+)/)![1];
    await policyCheck(t);
    assert.equal(Deno.readTextFileSync(log), `start\ncheck ${t.pid}\n`);
    await dumpAndRestore(t, `${base}/img`, policies.reopenLog);
    const p = await readImage(`${base}/img`);
    const file = p.files.find((f) => f.id === p.fds.find((x) => x.fd === 3)!.file)!;
    assert.equal(file.path, moved);
    assert.equal(await policyCheck(t), "cache=intact secret=present");
    assert.equal(Deno.readTextFileSync(log), `start\ncheck ${t.pid}\n`, "old log written to");
    assert.equal(Deno.readTextFileSync(moved), `moved\ncheck ${t.pid}\n`);
  } finally {
    await cleanup(t, base);
  }
});
