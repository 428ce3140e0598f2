/**
 * cgroups beyond a process's membership and its groups' limits: threads in other groups than
 * their process (v1 `tasks`, v2 threaded groups). The groups are the test's own (made under the
 * v1 pids hierarchy and v2 at /sys/fs/cgroup/unified, removed after); the dump kills the tree,
 * the groups are removed, and the restore makes them again. The fixture checks itself.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  CGROUP_PIDS as PIDS,
  CGROUP_UNIFIED as UNIFIED,
  exists,
  fixture,
  groupOf,
  killAndReap,
  makeGroup,
  needs,
  removeGroup,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const hierarchiesMissing = exists(`${PIDS}/cgroup.procs`) && exists(`${UNIFIED}/cgroup.procs`)
  ? undefined
  : "no v1 pids hierarchy and v2 at /sys/fs/cgroup/unified";

/** A name for the test's groups, unique to this run. */
const groupName = () => `tardigrade-test-${Deno.pid}-${Date.now()}`;

/** Starts fixture `bin` with `args` in the groups `dirs` (their cgroup.procs). */
function startIn(dirs: string[], bin: string, args: string[]): Promise<Target> {
  const join = dirs.map((d) => `echo $$ > '${d}/cgroup.procs'`).join("; ");
  const quoted = args.map((a) => `'${a}'`).join(" ");
  return spawnTarget("sh", ["-c", `${join}; exec '${bin}' ${quoted}`], { ready: /^READY /m });
}

/** The group of thread `tid` of `pid` in `hierarchy`. */
const threadGroup = (pid: number, tid: number, hierarchy: string) =>
  Deno.readTextFileSync(`/proc/${pid}/task/${tid}/cgroup`).split("\n")
    .map((l) => l.split(":")).find((f) => f[1] === hierarchy)?.[2];

Deno.test(
  needs(
    "cgroups: threads in other groups than their process (v1 tasks, v2 threaded)",
    hierarchiesMissing,
  ),
  async () => {
    const name = groupName();
    const pids = makeGroup(PIDS, name);
    const pidsThread = makeGroup(pids, "thread", { "pids.max": "40" });
    const unified = makeGroup(UNIFIED, name);
    const unifiedThread = makeGroup(unified, "thread", { "cgroup.type": "threaded" });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    const t = await startIn([pids, unified], await fixture("cgroup_threads"), [
      `${pidsThread}/tasks`,
      `${unifiedThread}/cgroup.threads`,
    ]);
    try {
      const tids = [...Deno.readDirSync(`/proc/${t.pid}/task`)].map((e) => Number(e.name))
        .filter((tid) => tid !== t.pid).sort((a, b) => a - b);
      await checkpoint(t.pid, `${dir}/image`);
      await killAndReap(t.pid);
      for (const g of [unifiedThread, unified, pidsThread, pids]) await removeGroup(g);
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, t.pid);
      assert.equal(await t.check(), "PASS", t.output());
      assert.equal(groupOf(t.pid, "pids"), `/${name}`);
      assert.equal(groupOf(t.pid, ""), `/${name}`);
      assert.deepEqual(
        tids.map((tid) => [threadGroup(t.pid, tid, "pids"), threadGroup(t.pid, tid, "")]),
        [[`/${name}/thread`, `/${name}`], [`/${name}`, `/${name}/thread`]],
      );
      // Made again with its limit, and threaded.
      assert.equal(Deno.readTextFileSync(`${pidsThread}/pids.max`).trim(), "40");
      assert.equal(Deno.readTextFileSync(`${unifiedThread}/cgroup.type`).trim(), "threaded");
    } finally {
      await t.kill();
      for (const g of [unifiedThread, unified, pidsThread, pids]) await removeGroup(g);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

const FREEZER = "/sys/fs/cgroup/freezer";

/** Freezes (or thaws) the test's group `dir`, v1 or v2, and waits until it is so. */
async function setFrozen(dir: string, frozen: boolean): Promise<void> {
  const v1 = exists(`${dir}/freezer.state`);
  if (v1) Deno.writeTextFileSync(`${dir}/freezer.state`, frozen ? "FROZEN" : "THAWED");
  else Deno.writeTextFileSync(`${dir}/cgroup.freeze`, frozen ? "1" : "0");
  await waitUntil(() => isFrozen(dir) === frozen, 10_000, `cgroup ${dir} frozen: ${frozen}`);
}

/** Whether every task of group `dir` is frozen. */
function isFrozen(dir: string): boolean {
  return exists(`${dir}/freezer.state`)
    ? Deno.readTextFileSync(`${dir}/freezer.state`).trim() === "FROZEN"
    : /^frozen 1$/m.test(Deno.readTextFileSync(`${dir}/cgroup.events`));
}

/** The CPU time process `pid` has used, in ticks: a frozen process uses none. */
function cpuTicks(pid: number): number {
  const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return Number(f[11]) + Number(f[12]);
}

/** Asserts `pid` sits frozen in group `dir`: listed there, the group FROZEN, no CPU time used. */
async function assertFrozenIn(dir: string, pid: number): Promise<void> {
  assert.ok(Deno.readTextFileSync(`${dir}/cgroup.procs`).split("\n").includes(String(pid)));
  assert.ok(isFrozen(dir), `cgroup ${dir} is frozen`);
  const before = cpuTicks(pid);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(cpuTicks(pid), before, "a frozen process runs nothing");
}

Deno.test(
  needs(
    "cgroups: a tree in a frozen v1 freezer group is dumped (left frozen) and comes back frozen",
    exists(`${FREEZER}/freezer.state`) || exists(`${FREEZER}/cgroup.procs`)
      ? undefined
      : "no v1 freezer hierarchy at /sys/fs/cgroup/freezer",
  ),
  async () => {
    const group = makeGroup(FREEZER, groupName());
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    const t = await startIn([group], await fixture("r_memory"), []);
    try {
      await setFrozen(group, true);
      // Left running: seized while frozen, thawed for the dump, frozen again before let go.
      await checkpoint(t.pid, `${dir}/left`, { leaveRunning: true });
      await assertFrozenIn(group, t.pid);
      // Ended: the group stays frozen, empty; the restore thaws it to take the tree, freezes it.
      await checkpoint(t.pid, `${dir}/image`);
      await waitUntil(() => !t.alive(), 10_000, `process ${t.pid} to end`);
      assert.ok(isFrozen(group), "the group is left frozen, as it was");
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, t.pid);
      await assertFrozenIn(group, t.pid);
      await setFrozen(group, false);
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      if (exists(group)) await setFrozen(group, false);
      await t.kill();
      await removeGroup(group);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "cgroups: a tree in a frozen v2 group comes back frozen in the group made again",
    hierarchiesMissing,
  ),
  async () => {
    const group = makeGroup(UNIFIED, groupName());
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    const t = await startIn([group], await fixture("r_memory"), []);
    try {
      await setFrozen(group, true);
      await checkpoint(t.pid, `${dir}/image`);
      await killAndReap(t.pid);
      await removeGroup(group);
      await restore(`${dir}/image`);
      await assertFrozenIn(group, t.pid);
      assert.equal(Deno.readTextFileSync(`${group}/cgroup.freeze`).trim(), "1");
      await setFrozen(group, false);
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      if (exists(group)) await setFrozen(group, false);
      await t.kill();
      await removeGroup(group);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

const CPU = "/sys/fs/cgroup/cpu", MEMORY = "/sys/fs/cgroup/memory";

/** What group `dir` holds in each of `files`. */
const settingsOf = (dir: string, files: string[]) =>
  Object.fromEntries(files.map((f) => [f, Deno.readTextFileSync(`${dir}/${f}`).trim()]));

Deno.test(
  needs(
    "cgroups: other controller settings (cpu quota, memory soft limit, swappiness) made again, checked",
    exists(`${CPU}/cpu.cfs_quota_us`) && exists(`${MEMORY}/memory.swappiness`)
      ? undefined
      : "no v1 cpu and memory hierarchies with cfs quotas and swappiness",
  ),
  async () => {
    const name = groupName();
    const cpuSet = { "cpu.cfs_period_us": "50000", "cpu.cfs_quota_us": "20000" };
    const memorySet = {
      "memory.limit_in_bytes": String(512 << 20),
      "memory.soft_limit_in_bytes": String(64 << 20),
      "memory.swappiness": "7",
    };
    const cpu = makeGroup(CPU, name, cpuSet);
    const memory = makeGroup(MEMORY, name, memorySet);
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    const t = await startIn([cpu, memory], await fixture("r_memory"), []);
    try {
      await checkpoint(t.pid, `${dir}/image`);
      await killAndReap(t.pid);
      // Present with another quota: refused, naming the file; nothing made.
      Deno.writeTextFileSync(`${cpu}/cpu.cfs_quota_us`, "30000");
      await assert.rejects(restore(`${dir}/image`), /cpu\.cfs_quota_us is 30000 now, not 20000/);
      assert.ok(!exists(`/proc/${t.pid}`));
      // Gone: made again with every setting.
      for (const g of [cpu, memory]) await removeGroup(g);
      await restore(`${dir}/image`);
      assert.equal(groupOf(t.pid, "cpu"), `/${name}`);
      assert.deepEqual(settingsOf(cpu, Object.keys(cpuSet)), cpuSet);
      assert.deepEqual(settingsOf(memory, Object.keys(memorySet)), memorySet);
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      for (const g of [cpu, memory]) await removeGroup(g);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

Deno.test(
  needs("cgroups: a group whose parents are gone too is made again with them", hierarchiesMissing),
  async () => {
    const name = groupName();
    const top = makeGroup(PIDS, name, { "pids.max": "30" });
    const middle = makeGroup(top, "middle");
    const leaf = makeGroup(middle, "leaf", { "pids.max": "20" });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-cgroup-" });
    const t = await startIn([leaf], await fixture("r_memory"), []);
    try {
      await checkpoint(t.pid, `${dir}/image`);
      await killAndReap(t.pid);
      // A parent present with another limit: refused, naming it.
      Deno.writeTextFileSync(`${top}/pids.max`, "31");
      await assert.rejects(
        restore(`${dir}/image`),
        new RegExp(`below cgroup /${name} of pids, whose pids.max is 31 now, not 30`),
      );
      for (const g of [leaf, middle, top]) await removeGroup(g);
      await restore(`${dir}/image`);
      assert.equal(groupOf(t.pid, "pids"), `/${name}/middle/leaf`);
      assert.equal(Deno.readTextFileSync(`${top}/pids.max`).trim(), "30");
      assert.equal(Deno.readTextFileSync(`${middle}/pids.max`).trim(), "max");
      assert.equal(Deno.readTextFileSync(`${leaf}/pids.max`).trim(), "20");
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      for (const g of [leaf, middle, top]) await removeGroup(g);
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
