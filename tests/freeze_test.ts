import assert from "node:assert/strict";
import { freeze, FreezeTimeout, NoSuchProcess } from "../mod.ts";
import { fixture, killAndReap, spawnTarget, waitUntil, withTarget } from "./helpers.ts";

function threadStates(pid: number): string[] {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => {
    const stat = Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0];
  });
}

Deno.test("freeze: every thread of a 5-thread process stops and runs on after dispose", async () => {
  const bin = await fixture("threads4");
  await withTarget(await spawnTarget(bin, [], { ready: /READY/ }), async (t) => {
    assert.equal(await t.check(), "PASS");
    {
      await using frozen = await freeze(t.pid);
      assert.equal(frozen.threads.length, 5);
      assert.equal(frozen.threads[0].tid, t.pid);
      assert.deepEqual(threadStates(t.pid), ["t", "t", "t", "t", "t"]);
      // Injected syscalls run inside the target.
      assert.equal(frozen.injector.call("getpid"), BigInt(t.pid));
      assert.equal(frozen.injector.call("gettid"), BigInt(t.pid));
      const scratch = frozen.injector.scratch();
      assert.ok(Deno.readTextFileSync(`/proc/${t.pid}/maps`).includes(scratch.toString(16)));
    }
    assert.ok(threadStates(t.pid).every((s) => s !== "t"));
    assert.equal(await t.check(), "PASS");
    assert.equal(await t.check(), "PASS");
    assert.equal(t.output().includes("FAIL"), false);
  });
});

Deno.test("freeze: a body that throws still resumes the process", async () => {
  const bin = await fixture("threads4");
  await withTarget(await spawnTarget(bin, [], { ready: /READY/ }), async (t) => {
    const mapsBefore = Deno.readTextFileSync(`/proc/${t.pid}/maps`);
    await assert.rejects(async () => {
      await using frozen = await freeze(t.pid);
      frozen.injector.scratch();
      throw new Error("policy exploded");
    }, /policy exploded/);
    assert.ok(threadStates(t.pid).every((s) => s !== "t"));
    assert.equal(await t.check(), "PASS");
    assert.equal(Deno.readTextFileSync(`/proc/${t.pid}/maps`), mapsBefore);
  });
});

Deno.test("freeze: the tool getting SIGTERM or SIGKILL mid-freeze leaves the target running", async () => {
  const bin = await fixture("threads4");
  for (const signal of ["SIGTERM", "SIGINT", "SIGKILL"] as const) {
    await withTarget(await spawnTarget(bin, [], { ready: /READY/ }), async (t) => {
      const script = `
        import { freeze } from "${new URL("../mod.ts", import.meta.url)}";
        const f = await freeze(${t.pid});
        f.injector.scratch();
        console.log("FROZEN");
        await new Promise((r) => setTimeout(r, 60000));`;
      const child = new Deno.Command(Deno.execPath(), {
        args: ["eval", script],
        stdout: "piped",
        stderr: "inherit",
      }).spawn();
      const reader = child.stdout.getReader();
      const { value } = await reader.read();
      assert.match(new TextDecoder().decode(value), /FROZEN/);
      assert.deepEqual(new Set(threadStates(t.pid)), new Set(["t"]));
      child.kill(signal);
      const status = await child.status;
      reader.releaseLock();
      await child.stdout.cancel();
      assert.equal(status.success, false);
      assert.equal(await t.check(), "PASS", `after ${signal}`);
      assert.ok(threadStates(t.pid).every((s) => s !== "t"));
    });
  }
});

Deno.test("freeze: a dead pid is NoSuchProcess", async () => {
  const bin = await fixture("hello");
  const t = await spawnTarget(bin, [], { ready: /READY/ });
  await killAndReap(t.pid);
  await assert.rejects(() => freeze(t.pid), NoSuchProcess);
});

Deno.test("freeze: a thread that cannot stop (a vfork parent) fails in time, and runs on untraced", async () => {
  const bin = await fixture("vfork_wait");
  await withTarget(await spawnTarget(bin, ["1500"], { ready: /IN VFORK/ }), async (t) => {
    const started = performance.now();
    await assert.rejects(
      () => freeze(t.pid, { timeoutMs: 300 }),
      (err) => err instanceof FreezeTimeout && err.tid === t.pid && /vfork/.test(err.message),
    );
    assert.ok(performance.now() - started < 1200, "the freeze gave up after its time limit");
    // Its child exits; the parent stops for the interrupt it was sent, and is let go at once,
    // while this process (its tracer) still runs.
    await waitUntil(() => t.output().includes("BACK"), 5000, "the vfork to end");
    const tracer = () =>
      Deno.readTextFileSync(`/proc/${t.pid}/status`).match(/TracerPid:\s+(\d+)/)![1];
    await waitUntil(() => tracer() === "0", 2000, "the late stopper to be let go");
    assert.equal(await t.check(), "PASS");
  });
});
