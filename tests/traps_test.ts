/**
 * No silent traps: special pids get their own messages, a second dump of a process being dumped
 * is refused at once naming the first dumper, and an image whose page data was not verified says
 * so. (Policies: tests/policy_test.ts.)
 */
import assert from "node:assert/strict";
import { checkpoint, DumpError, restore } from "../mod.ts";
import { cli, fixture, isAlive, spawnTarget } from "./helpers.ts";

/** The first kernel thread this machine shows (kthreadd is pid 2 on Linux). */
function kernelThread(): number | undefined {
  for (const pid of [2, 3, 4]) {
    try {
      const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      const flags = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[6]);
      if (flags & 0x00200000) return pid;
    } catch { /* not there */ }
  }
  return undefined;
}
const kthread = kernelThread();

Deno.test({
  name: "traps: a kernel thread is named as one by dump and maps (exit 1)",
  ignore: kthread === undefined,
  async fn() {
    const dump = await cli("dump", String(kthread), "/tmp/tardigrade-never-written");
    assert.equal(dump.code, 1);
    assert.match(dump.stderr, new RegExp(`process ${kthread} \\(\\S+\\) is a kernel thread`));
    const maps = await cli("maps", String(kthread));
    assert.equal(maps.code, 1, "maps of a kernel thread listed nothing and said ok");
    assert.match(maps.stderr, /is a kernel thread: it has no mappings/);
  },
});

Deno.test("traps: a process the kernel will not let us trace says why (pid 1 here)", async () => {
  const r = await cli("dump", "1", "/tmp/tardigrade-never-written", "--leave-running");
  assert.equal(r.code, 1);
  // Either it cannot be traced (capabilities the tool lacks, on these machines) or, where it
  // can, it lives in other namespaces than the tool: never a bare "access denied".
  assert.match(r.stderr, /refused to let it be traced|namespaces/);
});

Deno.test("traps: a second dump of a process being dumped is refused at once", async () => {
  const t = await spawnTarget(await fixture("r_memory"), [], { ready: /^READY /m });
  const base = await Deno.makeTempDir({ prefix: "tardigrade-traps-" });
  try {
    let resume!: () => void;
    const paused = new Promise<void>((r) => resume = r);
    let frozen!: () => void;
    const isFrozen = new Promise<void>((r) => frozen = r);
    // The first dump waits, frozen, inside its policy's first mapping answer.
    let asked = false;
    const first = checkpoint(t.pid, `${base}/first`, {
      leaveRunning: true,
      policy: {
        mapping: async () => {
          if (!asked) {
            asked = true;
            frozen();
            await paused;
          }
          return "dump" as const;
        },
      },
    });
    await isFrozen;
    const started = Date.now();
    await assert.rejects(checkpoint(t.pid, `${base}/second`), (err: Error) => {
      assert.ok(err instanceof DumpError, `${err.name}: ${err.message}`);
      assert.match(
        err.message,
        new RegExp(`being dumped already \\(by tardigrade, pid ${Deno.pid}\\)`),
      );
      return true;
    });
    assert.ok(Date.now() - started < 1000, "the second dump waited");
    resume();
    const r = await first;
    assert.equal(r.pid, t.pid);
    assert.ok(isAlive(t.pid));
    assert.equal(await t.check(), "PASS");
    // Once the first is over, a dump goes through again.
    await checkpoint(t.pid, `${base}/third`, { leaveRunning: true });
    await t.kill();
    await restore(`${base}/third`);
    assert.equal(await t.check(), "PASS");
  } finally {
    await t.kill();
    await Deno.remove(base, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});

Deno.test("traps: inspect says when page data was not verified", async () => {
  const t = await spawnTarget(await fixture("r_memory"), [], { ready: /^READY /m });
  const base = await Deno.makeTempDir({ prefix: "tardigrade-traps-" });
  try {
    await checkpoint(t.pid, `${base}/img`, { leaveRunning: true });
    const plain = await cli("inspect", `${base}/img`);
    assert.equal(plain.code, 0);
    assert.match(plain.stdout, /page data not verified: .*inspect --verify/);
    const json = JSON.parse((await cli("inspect", `${base}/img`, "--json")).stdout);
    assert.equal(json.verified, false);
  } finally {
    await t.kill();
    await Deno.remove(base, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});
