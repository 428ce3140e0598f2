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
