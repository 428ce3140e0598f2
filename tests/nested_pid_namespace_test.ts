/**
 * Pid namespaces nested below the one a dump carries (nested_pidns.c): a plain tree whose top
 * process made one with clone(CLONE_NEWPID), or with unshare(CLONE_NEWPID) and forks (then also
 * one child inside whose parent is outside); a container made by `unshare --pid --fork
 * --mount-proc` whose init does the same; a copy beside its original (`pidNamespace`). After
 * the restore every process and thread has the same pid at every level (NSpid), the nested init
 * is pid 1 there and reaps, and each process counts on and checks its own ids. A nested namespace
 * with a mount namespace of its own and its /proc (`mountproc`, and the real `unshare --pid
 * --fork --mount-proc`) comes back with the same mounts, every process inside seeing them, its
 * /proc listing its namespace's processes only. Shapes not made yet are refused at dump, naming
 * them, and the processes run on.
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

/**
 * Lets every process of the fixture count once more (every 10 ms) before it is asked: one frozen
 * within 10 ms of the check before the dump, asked at once after the restore, would not have.
 */
const aRound = () => new Promise((r) => setTimeout(r, 50));

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
      await aRound();
      assert.equal(await t.check(), "PASS", t.output());
      await aRound();
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
        await aRound();
        assert.equal(await u.check(back.pid), "PASS", u.output());
        await aRound();
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
    await aRound();
    assert.equal(await t.check(copy.pid), "PASS", t.output());
    assert.equal(await t.check(), "PASS", "the original runs on");
  } finally {
    if (copy?.namespaceInit) await killAndReap(copy.namespaceInit);
    for (const p of before.keys()) await killAndReap(p);
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});

/** The mounts process `pid` sees, as a user compares them: all but their ids and devices. */
function mountShape(pid: number): string[] {
  return Deno.readTextFileSync(`/proc/${pid}/mountinfo`).trim().split("\n").map((l) => {
    const f = l.split(" ");
    const dash = f.indexOf("-");
    // Point, options, propagation (its peer group ids left out), type, source, superblock options.
    const propagation = f.slice(6, dash).map((o) => o.replace(/:\d+$/, "")).join(",");
    return [f[4], f[5], propagation, ...f.slice(dash + 1)].join(" ");
  });
}

/** The pids the /proc that process `pid` sees lists. */
function procLists(pid: number): number[] {
  return [...Deno.readDirSync(`/proc/${pid}/root/proc`)].map((e) => Number(e.name))
    .filter((n) => n > 0).sort((a, b) => a - b);
}

const readComm = (pid: number) => Deno.readTextFileSync(`/proc/${pid}/comm`).trim();

/** Every process of the tree below `root` (host pids), each once. */
const processesOf = (root: number): number[] => [root, ...childrenOf(root).flatMap(processesOf)];

/** The nested init of the tree below `root`: the process that is pid 1 inside and not `root`. */
const nestedInitOf = (root: number) =>
  processesOf(root).find((p) => p !== root && nspid(p).at(-1) === 1)!;

/**
 * What a user checks of a nested namespace with its own mount namespace below `root`: the
 * mounts each process in it sees (one shape for all), and what its /proc lists.
 */
function mountView(root: number): { shape: string[]; lists: number[] } {
  const init = nestedInitOf(root);
  const ns = Deno.readLinkSync(`/proc/${init}/ns/mnt`);
  const inside = processesOf(root).filter((p) => Deno.readLinkSync(`/proc/${p}/ns/mnt`) === ns);
  const shape = mountShape(init);
  for (const p of inside) assert.deepEqual(mountShape(p), shape, `process ${p} sees other mounts`);
  assert.notEqual(ns, Deno.readLinkSync(`/proc/${root}/ns/mnt`), "a mount namespace of its own");
  return { shape, lists: procLists(init) };
}

for (const mode of ["clone", "unshare"]) {
  Deno.test(
    `nested pid namespace (${mode}) with its own mount namespace and /proc comes back`,
    async () => {
      const bin = await fixture("nested_pidns");
      // A shell above it, as a user's: the maker of the mount namespace is not the dump's root.
      const t = await spawnTarget("sh", ["-c", `'${bin}' ${mode} mountproc & wait`], {
        ready: /^(READY|SETUP FAILED).*$/m,
        append: true,
      });
      const dir = await tmpImage();
      const before = treeIds(t.pid);
      try {
        assert.match(t.output(), /^READY /m, t.output());
        const top = childrenOf(t.pid)[0];
        assert.equal(await t.check(top), "PASS", t.output());
        const view = mountView(t.pid);
        assert.deepEqual(view.lists, mode === "unshare" ? [1, 2, 4, 5] : [1, 2, 4]);
        assert.ok(view.shape.filter((m) => m.startsWith("/proc ")).length >= 2, "a /proc on /proc");
        const processes = [...before.keys()].filter((id) => id === before.get(id)![0]);
        await reaping(processes, async () => {
          await checkpoint(t.pid, `${dir}/image`);
          for (const p of processes) await waitUntil(() => !isAlive(p), 5000, `${p} to end`);
        });
        const back = await restore(`${dir}/image`);
        assert.equal(back.pid, t.pid);
        assert.deepEqual(treeIds(t.pid), before);
        assert.deepEqual(mountView(t.pid), view);
        assert.equal(
          Deno.readLinkSync(`/proc/${top}/ns/pid_for_children`),
          Deno.readLinkSync(`/proc/${mode === "unshare" ? nestedInitOf(t.pid) : top}/ns/pid`),
          "the top makes its children where it did",
        );
        await aRound();
        assert.equal(await t.check(top), "PASS", t.output());
        await aRound();
        assert.equal(await t.check(top), "PASS", "it counts on, reading its /proc");
      } finally {
        for (const p of [...before.keys()].reverse()) await killAndReap(p);
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        await Deno.remove(t.outPath).catch(() => {});
      }
    },
  );
}

Deno.test(
  needs(
    "nested pid namespace with its own /proc inside a container comes back",
    notInstalled("unshare"),
  ),
  async () => {
    const bin = await fixture("nested_pidns");
    const u = await spawnTarget("unshare", [
      "--pid",
      "--fork",
      "--mount-proc",
      "sh",
      "-c",
      `'${bin}' unshare mountproc & wait`,
    ], { ready: /^(READY|SETUP FAILED).*$/m, append: true });
    const dir = await tmpImage();
    const [init] = childrenOf(u.pid);
    try {
      assert.match(u.output(), /^READY /m, u.output());
      const top = () => childrenOf(init)[0];
      assert.equal(await u.check(top()), "PASS", u.output());
      const before = treeIds(init);
      const view = mountView(init);
      await checkpoint(init, `${dir}/image`);
      await waitUntil(() => !isAlive(init), 5000, "the dumped container to end");
      await killAndReap(u.pid);
      const back = await restore(`${dir}/image`);
      try {
        assert.deepEqual(fromLevel(treeIds(back.pid), 1), fromLevel(before, 1));
        assert.deepEqual(mountView(back.pid), view);
        assert.deepEqual(view.lists, [1, 2, 4, 5]);
        const restoredTop = childrenOf(back.pid)[0];
        await aRound();
        assert.equal(await u.check(restoredTop), "PASS", u.output());
        await aRound();
        assert.equal(await u.check(restoredTop), "PASS", "it counts on");
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

Deno.test(
  needs(
    "unshare --pid --fork --mount-proc run from a dumped shell comes back",
    notInstalled("unshare"),
  ),
  async () => {
    const t = await spawnTarget("sh", [
      "-c",
      "unshare --pid --fork --mount-proc sh -c 'sleep 600 & wait' & echo READY; wait",
    ], { ready: /READY/ });
    const dir = await tmpImage();
    let tree: number[] = [];
    try {
      await waitUntil(
        () => processesOf(t.pid).filter((p) => readComm(p) === "sleep").length === 1,
        5000,
        "the nested namespace's sleep",
      );
      tree = processesOf(t.pid);
      const view = mountView(t.pid);
      assert.deepEqual(view.lists, [1, 2], "its /proc shows sh and sleep only");
      const sleeper = tree.find((p) => readComm(p) === "sleep")!;
      const before = treeIds(t.pid);
      await reaping(tree, async () => {
        await checkpoint(t.pid, `${dir}/image`);
        for (const p of tree) await waitUntil(() => !isAlive(p), 5000, `${p} to end`);
      });
      await restore(`${dir}/image`);
      assert.deepEqual(treeIds(t.pid), before);
      assert.deepEqual(mountView(t.pid), view);
      assert.deepEqual(
        Deno.readTextFileSync(`/proc/${sleeper}/root/proc/2/status`).match(/^NSpid:.*$/m)![0],
        "NSpid:\t2",
        "its /proc shows the sleep as pid 2",
      );
    } finally {
      for (const p of tree.reverse()) await killAndReap(p);
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

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
    await s.step(
      "a nested mount namespace whose mounts propagate (--propagation slave)",
      async () => {
        const t = await spawnTarget("sh", [
          "-c",
          "unshare --pid --fork --mount-proc --propagation slave sleep 600 & echo READY; wait",
        ], { ready: /READY/ });
        try {
          await waitUntil(
            () => processesOf(t.pid).some((p) => readComm(p) === "sleep"),
            5000,
            "the nested namespace's init",
          );
          await assertRefused(
            t,
            t.pid,
            /of the mount namespace of process \d+ \(unshare\) propagates \(master:\d+/,
          );
        } finally {
          for (const p of processesOf(t.pid).reverse()) await killAndReap(p);
          await t.kill();
        }
      },
    );
  },
);
