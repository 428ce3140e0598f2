/**
 * Pid namespaces nested below the one a dump carries (nested_pidns.c): a plain tree whose top
 * process made one with clone(CLONE_NEWPID), or with unshare(CLONE_NEWPID) and forks (then also
 * one child inside whose parent is outside); a container made by `unshare --pid --fork
 * --mount-proc` whose init does the same; a copy beside its original (`pidNamespace`). After
 * the restore every process and thread has the same pid at every level (NSpid), the nested init
 * is pid 1 there and reaps, and each process counts on and checks its own ids. Shapes not made
 * yet are refused at dump, naming them, and the processes run on.
 */
import assert from "node:assert/strict";
import { checkpoint, restore, type RestoreResult } from "../mod.ts";
import {
  childrenOf,
  fixture,
  isAlive,
  killAndReap,
  needs,
  notInstalled,
  reaping,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

/** NSpid of a task: its id in each pid namespace, the host's first. */
function nspid(pid: number, tid = pid): number[] {
  const status = Deno.readTextFileSync(`/proc/${pid}/task/${tid}/status`);
  return status.match(/^NSpid:\s*(.*)$/m)![1].trim().split(/\s+/).map(Number);
}

/** Every task of the tree below `root` (host pids), with its NSpid. */
function treeIds(root: number): Map<number, number[]> {
  const ids = new Map<number, number[]>();
  const walk = (pid: number) => {
    for (const e of Deno.readDirSync(`/proc/${pid}/task`)) {
      ids.set(Number(e.name), nspid(pid, Number(e.name)));
    }
    for (const c of childrenOf(pid)) walk(c);
  };
  walk(root);
  return ids;
}

/** The ids of `ids` from level `from` down (0: the host's), by their id at that level. */
function fromLevel(ids: Map<number, number[]>, from: number): string[] {
  return [...ids.values()].map((l) => l.slice(from).join(" ")).sort();
}

const startNested = async (mode: string, unshare = false) => {
  const bin = await fixture("nested_pidns");
  const t = unshare
    ? await spawnTarget("unshare", ["--pid", "--fork", "--mount-proc", bin, mode], {
      ready: /^(READY|SETUP FAILED).*$/m,
      append: true,
    })
    : await spawnTarget(bin, [mode], { ready: /^(READY|SETUP FAILED).*$/m, append: true });
  assert.match(t.output(), /^READY /m, `fixture setup failed:\n${t.output()}`);
  return t;
};

const tmpImage = () => Deno.makeTempDir({ prefix: "tardigrade-nestpid-" });

for (const mode of ["clone", "unshare"]) {
  Deno.test(`nested pid namespace (${mode}) in a plain tree comes back at every level`, async () => {
    const t = await startNested(mode);
    const dir = await tmpImage();
    const before = treeIds(t.pid);
    let back: RestoreResult | undefined;
    try {
      assert.equal(await t.check(), "PASS", t.output());
      const processes = [...before.keys()].filter((id) => isAlive(id) && id === before.get(id)![0]);
      await reaping(processes, async () => {
        const dumped = await checkpoint(t.pid, `${dir}/image`);
        assert.equal(dumped.processes.length, mode === "unshare" ? 5 : 4, "top, init, 2 (+1)");
        for (const p of dumped.processes) {
          await waitUntil(() => !isAlive(p), 5000, `dumped process ${p} to end`);
        }
      });
      back = await restore(`${dir}/image`);
      assert.equal(back.pid, t.pid);
      // Every task has its pid at the host's level and inside the nested namespace.
      assert.deepEqual(treeIds(t.pid), before);
      assert.equal(await t.check(), "PASS", t.output());
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(await t.check(), "PASS", "it counts on");
    } finally {
      for (const p of before.keys()) await killAndReap(p);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  });
}

Deno.test(
  needs(
    "nested pid namespace inside a container comes back at every level",
    notInstalled("unshare"),
  ),
  async () => {
    const u = await startNested("unshare", true);
    const dir = await tmpImage();
    const [init] = childrenOf(u.pid);
    try {
      assert.equal(await u.check(init), "PASS", u.output());
      const before = treeIds(init);
      assert.deepEqual(before.get(init), [init, 1], "the container's init");
      const dumped = await checkpoint(init, `${dir}/image`);
      assert.equal(dumped.processes.length, 5);
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await killAndReap(u.pid);
      const back = await restore(`${dir}/image`);
      try {
        const after = treeIds(back.pid);
        // The host's pids are new; the container's and the nested ones are the same.
        assert.deepEqual(fromLevel(after, 1), fromLevel(before, 1));
        assert.equal(after.size, before.size);
        const nested = [...after.values()].filter((l) => l.length === 3);
        assert.equal(nested.length, 5, "init, a child with its thread, a child, one more");
        assert.equal(await u.check(back.pid), "PASS", u.output());
        await new Promise((r) => setTimeout(r, 50));
        assert.equal(await u.check(back.pid), "PASS", "it counts on");
      } finally {
        await killAndReap(back.pid);
      }
    } finally {
      await killAndReap(init);
      await killAndReap(u.pid);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(u.outPath).catch(() => {});
    }
  },
);

Deno.test("nested pid namespace: a copy beside its running original", async () => {
  const t = await startNested("unshare");
  const dir = await tmpImage();
  const before = treeIds(t.pid);
  let copy: RestoreResult | undefined;
  try {
    await checkpoint(t.pid, `${dir}/image`, { leaveRunning: true });
    copy = await restore(`${dir}/image`, { pidNamespace: true });
    const after = treeIds(copy.pid);
    // Inside the copy's namespace, every level is the original's.
    assert.deepEqual(fromLevel(after, 1), fromLevel(before, 0));
    assert.equal(await t.check(copy.pid), "PASS", t.output());
    assert.equal(await t.check(), "PASS", "the original runs on");
  } finally {
    if (copy?.namespaceInit) await killAndReap(copy.namespaceInit);
    for (const p of before.keys()) await killAndReap(p);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});

/** Refused at dump with `why`, the processes running on, untraced. */
async function assertRefused(t: Target, pid: number, why: RegExp): Promise<void> {
  const dir = await tmpImage();
  try {
    await assert.rejects(() => checkpoint(pid, `${dir}/image`), why);
    const status = Deno.readTextFileSync(`/proc/${pid}/status`);
    assert.match(status, /^TracerPid:\s+0$/m, "left traced");
    assert.doesNotMatch(status, /^State:\s+[tT] /m, "left stopped");
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    void t;
  }
}

Deno.test(
  needs("nested pid namespace: shapes not made yet are refused", notInstalled("unshare")),
  async (s) => {
    await s.step("a namespace made for children that have none yet (unshare --pid)", async () => {
      const t = await spawnTarget("unshare", ["--pid", "sleep", "600"]);
      try {
        await waitUntil(
          () => Deno.readTextFileSync(`/proc/${t.pid}/comm`).trim() === "sleep",
          5000,
          "unshare to exec sleep",
        );
        await assertRefused(
          t,
          t.pid,
          new RegExp(
            `process ${t.pid} \\(sleep\\) made pid namespace (pid:\\[\\d+\\] )?for its children ` +
              `\\(unshare --pid\\) whose init has ended or was never forked`,
          ),
        );
      } finally {
        await t.kill();
      }
    });
    await s.step("a nested namespace with its own /proc (unshare --mount-proc)", async () => {
      const t = await spawnTarget("sh", [
        "-c",
        "unshare --pid --fork --mount-proc sleep 600 & echo READY; wait",
      ], { ready: /READY/ });
      try {
        let maker = 0;
        await waitUntil(
          () => {
            maker = childrenOf(t.pid)[0] ?? 0;
            return maker > 0 && childrenOf(maker).length > 0;
          },
          5000,
          "the nested namespace's init",
        );
        await assertRefused(
          t,
          t.pid,
          /\(or made\) a nested pid namespace with a mount namespace of its own \(unshare --mount-proc/,
        );
      } finally {
        for (const p of [...childrenOf(childrenOf(t.pid)[0] ?? 0), ...childrenOf(t.pid)]) {
          await killAndReap(p);
        }
        await t.kill();
      }
    });
  },
);
