import assert from "node:assert/strict";
import { Process, processes, RLIM_INFINITY } from "../mod.ts";
import { fixture, needs, notInstalled, spawnTarget, waitUntil, withTarget } from "./helpers.ts";

async function startProcFixture() {
  const bin = await fixture("inspect_proc");
  const t = await spawnTarget(bin, ["one", "two words"], {
    ready: /READY \d+ child \d+/,
    env: { INSPECT_MARK: "tardigrade" },
  });
  const child = Number((await t.waitFor(/READY \d+ child (\d+)/))[1]);
  return { t, bin, child };
}

Deno.test("process: identity, credentials, limits and signals", async () => {
  const { t, bin, child } = await startProcFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    assert.equal(p.pid, t.pid);
    assert.equal(await p.comm(), "inspect_proc");
    assert.deepEqual(await p.cmdline(), [bin, "one", "two words"]);
    assert.ok((await p.environ()).includes("INSPECT_MARK=tardigrade"));
    assert.equal(await p.exe(), bin);
    assert.equal(await p.cwd(), "/tmp");
    assert.equal(await p.root(), "/");
    // Asleep once it waits for checks, a moment after it printed READY.
    let state = "";
    await waitUntil(async () => (state = await p.state()) === "S", 2000, () => `S, not ${state}`);
    assert.equal(await p.umask(), 0o027);
    const uid = Deno.uid()!;
    assert.deepEqual(await p.uids(), { real: uid, effective: uid, saved: uid, fs: uid });
    assert.equal((await p.gids()).effective, Deno.gid());
    assert.ok(Array.isArray(await p.groups()));
    const caps = await p.capabilities();
    assert.equal(typeof caps.effective, "bigint");
    assert.equal(caps.bounding & 1n, 1n); // CAP_CHOWN in the bounding set

    const sig = await p.signals();
    assert.equal(sig.blocked, 1n << 11n); // SIGUSR2
    assert.equal(sig.ignored & (1n << 12n), 1n << 12n); // SIGPIPE
    assert.equal(sig.caught & (1n << 9n), 1n << 9n); // SIGUSR1 handler

    const limits = await p.rlimits();
    assert.deepEqual(limits.NOFILE, { soft: 1000n, hard: 2000n });
    assert.equal(limits.CPU.soft, RLIM_INFINITY);
    assert.equal(Object.keys(limits).length, 16);

    const ns = await p.namespaces();
    const mine = Deno.readLinkSync("/proc/self/ns/mnt").match(/\[(\d+)\]/)![1];
    assert.equal(ns.mnt, BigInt(mine));
    assert.ok(ns.net > 0n && ns.pid > 0n);

    assert.equal(await p.personality(), 0);
    const auxv = new Map(await p.auxv());
    assert.equal(auxv.get(6n), 4096n); // AT_PAGESZ

    const stat = await p.stat();
    assert.equal(stat.pid, t.pid);
    assert.equal(stat.comm, "inspect_proc");
    assert.equal(stat.numThreads, 3);
    assert.equal(stat.starttime, p.startTime);
    assert.ok(stat.startCode > 0n && stat.endCode > stat.startCode);
    assert.ok(stat.startBrk > 0n && stat.argStart < stat.argEnd && stat.envStart < stat.envEnd);
    assert.ok(stat.startStack > stat.envEnd - (1n << 30n));
    assert.equal(await p.ppid(), stat.ppid);

    const threads = await Array.fromAsync(p.threads());
    assert.deepEqual(threads.map((th) => th.name), ["inspect_proc", "worker-a", "worker-b"]);
    assert.equal(threads[0].tid, t.pid);

    assert.deepEqual((await p.children()).map((c) => c.pid), [child]);
    assert.equal(await p.isRunning(), true);
  });
});

Deno.test("process: a dead pid is NoSuchProcess, also for a handle opened before", async () => {
  const { t } = await startProcFixture();
  const p = await Process.open(t.pid);
  await t.kill();
  await assert.rejects(Process.open(t.pid), { name: "NoSuchProcess" });
  await assert.rejects(p.cmdline(), { name: "NoSuchProcess" });
  await assert.rejects(Array.fromAsync(p.mappings()), { name: "NoSuchProcess" });
  await assert.rejects(Array.fromAsync(p.fds()), { name: "NoSuchProcess" });
  await assert.rejects(p.read(0x400000n, 8), { name: "NoSuchProcess" });
  assert.equal(await p.isRunning(), false);
});

Deno.test("processes: lists this process, skips one that exits meanwhile", async () => {
  const { t } = await startProcFixture();
  let sawSelf = false, sawTarget = false;
  try {
    for await (const p of processes()) {
      if (p.pid === Deno.pid) sawSelf = true;
      if (p.pid === t.pid) sawTarget = true;
      // the target exits while the iteration is under way: it must not break it
      if (p.pid === 1) await t.kill();
    }
  } finally {
    await t.kill();
  }
  assert.ok(sawSelf);
  assert.equal(sawTarget, false);
});

Deno.test(
  needs(
    "access: pid 1's memory and threads as an unprivileged user are AccessDenied",
    notInstalled("setpriv"),
  ),
  async () => {
    const script = new URL("./inspect_access_probe.ts", import.meta.url).pathname;
    const out = await new Deno.Command("setpriv", {
      args: [
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        Deno.execPath(),
        "run",
        "-A",
        // outside the project: no config, no npm packages to resolve as another user
        "--no-config",
        "--no-lock",
        "--node-modules-dir=none",
        script,
      ],
      cwd: "/tmp",
      env: { DENO_DIR: Deno.makeTempDirSync(), HOME: "/tmp" },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout);
    assert.match(text, /^read: AccessDenied$/m, text + new TextDecoder().decode(out.stderr));
    assert.match(text, /^environ: AccessDenied$/m);
    assert.match(text, /^comm: \S+$/m); // comm of pid 1 is readable by anyone
    // A freeze names the reason: not root.
    assert.match(text, /^freeze: AccessDenied: .* runs as uid 65534: tracing it needs root/m);
  },
);

/** Whether `pid` is a kernel thread (PF_KTHREAD in the flags of its stat). */
function isKernelThread(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[6]) & 0x00200000) !== 0;
  } catch {
    return false;
  }
}

// The lowest-numbered one: kthreadd (pid 2) where there is one, which does not come and go.
const kthread = [...Deno.readDirSync("/proc")].map((e) => Number(e.name)).filter((pid) => pid > 0)
  .sort((a, b) => a - b).find(isKernelThread);

Deno.test(
  needs(
    "process: a kernel thread has no address space, listings are empty",
    kthread === undefined ? "no kernel thread visible here (a container?)" : undefined,
  ),
  async () => {
    assert.ok(isKernelThread(kthread!), `kernel thread ${kthread} is gone`);
    const p = await Process.open(kthread!);
    assert.deepEqual(await Array.fromAsync(p.mappings()), []);
    assert.deepEqual(await Array.fromAsync(p.mappings({ via: "ioctl" })), []);
    assert.deepEqual(await Array.fromAsync(p.pages()), []);
    assert.deepEqual(await p.cmdline(), []);
    assert.equal(await p.exe(), "");
    await assert.rejects(p.read(0x400000n, 8), { name: "NoAddressSpace" });
  },
);
