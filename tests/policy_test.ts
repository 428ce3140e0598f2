/**
 * Policies are checked before they cost the target anything: an answer that is not one of the
 * documented ones, a reopen path that is not there, memory the process uses skipped without
 * `evenIfUsed`, a policy file that does not load or is not a policy. Each is refused naming the
 * hook, the object and the value; the target runs on as before and no image is left.
 */
import assert from "node:assert/strict";
import { checkpoint, loadPolicy, type Policy, PolicyError } from "../mod.ts";
import { cli, fixture, isAlive, spawnTarget, type Target } from "./helpers.ts";

async function start(): Promise<Target> {
  const t = await spawnTarget(await fixture("r_memory"), [], { ready: /^READY /m });
  assert.equal(await t.check(), "PASS");
  return t;
}

/** Not traced by anyone (TracerPid 0) and not stopped. */
function untouched(pid: number): void {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  assert.match(status, /^TracerPid:\s+0$/m, "still traced");
  assert.doesNotMatch(status, /^State:\s+[tT]/m, "left stopped");
}

/** A dump with `policy` is refused with `re`; the target is as before and no image was left. */
async function refusedWith(policy: unknown, re: RegExp): Promise<void> {
  const t = await start();
  const base = await Deno.makeTempDir({ prefix: "tardigrade-policy-" });
  try {
    await assert.rejects(
      checkpoint(t.pid, `${base}/img`, { policy: policy as Policy }),
      (err: Error) => {
        assert.ok(err instanceof PolicyError, `${err.name}: ${err.message}`);
        assert.match(err.message, re);
        return true;
      },
    );
    assert.ok(isAlive(t.pid));
    untouched(t.pid);
    assert.equal(await t.check(), "PASS");
    assert.deepEqual([...Deno.readDirSync(base)], [], "an image (or part of one) was left");
  } finally {
    await t.kill();
    await Deno.remove(base, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
}

for (const answer of ["sk1p", "Dump", true, undefined, { skip: true }]) {
  Deno.test(`policy: mapping answer ${JSON.stringify(answer)} is refused, naming it`, async () => {
    const bad = JSON.stringify(answer) ?? "undefined";
    await refusedWith(
      { mapping: (m: { kind: string }) => m.kind === "anonymous" ? answer : "dump" },
      new RegExp(`mapping hook answered ${escape(bad)} for mapping 0x[0-9a-f]+-0x[0-9a-f]+ `),
    );
  });
}

Deno.test("policy: skipping the stack, the heap or the code needs evenIfUsed", async () => {
  for (const kind of ["stack", "heap"]) {
    await refusedWith(
      { mapping: (m: { kind: string }) => m.kind === kind ? "skip" : "dump" },
      new RegExp(`holds its ${kind}: .*\\{ skip: true, evenIfUsed: true \\}`),
    );
  }
  await refusedWith(
    { mapping: (m: { prot: { exec: boolean } }) => m.prot.exec ? "skip" : "dump" },
    /holds (its code|the code thread \d+ runs)/,
  );
});

Deno.test("policy: an fd answer that is not one, or a reopen path that is not there", async () => {
  await refusedWith({ fd: () => "keep" }, /fd hook answered "keep" for fd \d+ of process \d+/);
  await refusedWith(
    { fd: (fd: { fd: number }) => fd.fd === 1 ? { reopen: "/nonexistent/log" } : "dump" },
    /fd hook answered \{"reopen":"\/nonexistent\/log"\} for fd 1 .*\/nonexistent\/log cannot be reopened/,
  );
});

Deno.test("policy: an object that is not a policy is refused before the freeze", async () => {
  await refusedWith({ mappings: () => "dump" }, /"mappings" is not a policy hook/);
  await refusedWith({ fd: "skip" }, /hook "fd" is a string, not a function/);
  await refusedWith("skip", /a policy is an object of hooks/);
});

Deno.test("policy: files that do not load, have no default export or export no policy", async () => {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-policy-" });
  try {
    const cases: [string, RegExp][] = [
      [`throw new Error("boom");`, /cannot be loaded: .*boom/],
      [`export const policy = { mapping: () => "dump" };`, /no default export/],
      [`export default 42;`, /a policy is an object of hooks, not number/],
      [
        `export default { mapping: () => "dump", fds: () => "skip" };`,
        /"fds" is not a policy hook/,
      ],
    ];
    for (const [i, [source, re]] of cases.entries()) {
      const file = `${dir}/p${i}.ts`;
      Deno.writeTextFileSync(file, source);
      await assert.rejects(loadPolicy(file), (err: Error) => {
        assert.ok(err instanceof PolicyError, `${err.name}: ${err.message}`);
        assert.match(err.message, re);
        return true;
      });
    }
    // The CLI says the same in one line, exit 1, before it touches the process.
    const t = await start();
    try {
      const r = await cli("dump", String(t.pid), `${dir}/img`, "--policy", `${dir}/p3.ts`);
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, /^tardigrade: policy .*p3\.ts: "fds" is not a policy hook/m);
      untouched(t.pid);
      assert.equal(await t.check(), "PASS");
    } finally {
      await t.kill();
      await Deno.remove(t.outPath).catch(() => {});
    }
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
});

function escape(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
}
