/**
 * Containers in a user namespace of their own, and in a cgroup namespace of their own. User
 * namespaces made by `unshare --user --map-root-user` (one
 * range, setgroups denied) and by userns_launch.c (several ranges, setgroups allowed, as
 * newuidmap writes them): dumped with their maps and restored in a fresh user namespace that owns
 * the container's other namespaces, every process with the credentials it sees inside
 * (userns_init.c checks its own and its child's; the test compares /proc/PID/status read from
 * outside). A cgroup namespace made by `unshare --cgroup` in a group of the test's comes back
 * rooted at that group, made again: /proc/self/cgroup inside reads the same. What cannot be
 * carried is refused at dump, naming it, and the container runs on.
 */
import assert from "node:assert/strict";
import { checkpoint, type PsRow, restore, type RestoreResult } from "../mod.ts";
import {
  CGROUP_PIDS,
  CGROUP_UNIFIED,
  childrenOf,
  cli,
  exists,
  fixture,
  groupOf,
  isAlive,
  killAndReap,
  makeGroup,
  needs,
  notInstalled,
  removeGroup,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

/** The namespace of kind `kind` process `pid` lives in. */
const ns = (pid: number, kind: string) => Deno.readLinkSync(`/proc/${pid}/ns/${kind}`);

/** The credential lines of /proc/PID/status as the tool sees them (host ids). */
function credLines(pid: number): string {
  return Deno.readTextFileSync(`/proc/${pid}/status`).split("\n")
    .filter((l) => /^(Uid|Gid|Groups|Cap\w+):/.test(l)).join("\n");
}

/** The processes running `bin`. */
function running(bin: string): number[] {
  return [...Deno.readDirSync("/proc")].map((e) => Number(e.name)).filter((pid) => {
    try {
      return pid > 0 && isAlive(pid) && Deno.readLinkSync(`/proc/${pid}/exe`) === bin;
    } catch {
      return false;
    }
  });
}

/** A container running userns_init.c: the process that made it, and its init's host pid. */
interface Container {
  maker: Target;
  init: number;
  dir: string;
  /** Its restored init's host pid, once restored (killed by `stopContainer`). */
  restored?: number;
}

/**
 * Starts userns_init.c as the init of a container made by `command` (its program and the
 * arguments before the fixture's), in a directory everyone may enter: its processes are root
 * inside, which may be another uid outside, and a restore reopens its files as them.
 */
async function startContainer(command: string[]): Promise<Container> {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-userns-" });
  Deno.chmodSync(dir, 0o777);
  const bin = `${dir}/userns_init`;
  Deno.copyFileSync(await fixture("userns_init"), bin);
  Deno.chmodSync(bin, 0o755);
  const count = `${dir}/count`;
  Deno.writeTextFileSync(count, "", { mode: 0o666 });
  Deno.chmodSync(count, 0o666);
  const maker = await spawnTarget(command[0], [...command.slice(1), bin, count], {
    ready: /^(READY|SETUP FAILED).*$/m,
    append: true,
  });
  assert.match(maker.output(), /^READY /m, `container setup failed:\n${maker.output()}`);
  // Its output is reopened by the restored init, root inside.
  Deno.chmodSync(maker.outPath, 0o666);
  Deno.chmodSync(maker.outPath.replace(/\/[^/]*$/, ""), 0o711);
  const [init] = childrenOf(maker.pid);
  return { maker, init, dir };
}

async function stopContainer(c: Container): Promise<void> {
  if (c.restored) await killAndReap(c.restored);
  await killAndReap(c.init);
  await killAndReap(c.maker.pid);
  await Deno.remove(c.dir, { recursive: true }).catch(() => {});
}

/**
 * Dumps container `c`, restores it and checks it: a fresh namespace of `kind`, the same maps
 * (those of the tool's own user namespace unless `kind` is user), the init and its child with the same credentials from outside
 * and in (the fixture's check). Returns what `inspect` said of the image.
 */
async function roundTrip(
  c: Container,
  kind: "user" | "cgroup",
): Promise<{ restored: RestoreResult; shown: string }> {
  assert.equal(await c.maker.check(c.init), "PASS", c.maker.output());
  // ps shows the namespaces it lives in apart from the tool.
  const rows = JSON.parse((await cli("ps", "--json")).stdout) as PsRow[];
  assert.ok(rows.find((r) => r.pid === c.init)?.namespaces.includes(kind), `ps shows ${kind}`);
  const [child] = childrenOf(c.init);
  const before = [credLines(c.init), credLines(child)];
  const maps = ["uid_map", "gid_map", "setgroups"].map((f) =>
    Deno.readTextFileSync(`/proc/${c.init}/${f}`)
  );
  await checkpoint(c.init, `${c.dir}/image`);
  await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
  await killAndReap(c.maker.pid);
  const shown = (await cli("inspect", `${c.dir}/image`)).stdout;

  // A restore that fails late leaves nothing: no process, so no namespace it made.
  const stopped = {
    restoreStage: (stage: string) => {
      if (stage === "resume") throw new Error("stopped at resume");
    },
  };
  await assert.rejects(() => restore(`${c.dir}/image`, { policy: stopped }), /stopped at resume/);
  assert.deepEqual(running(`${c.dir}/userns_init`), [], "a process of the failed restore is left");

  const restored = await restore(`${c.dir}/image`);
  const init = c.restored = restored.pid;
  const [restoredChild] = childrenOf(init);
  assert.notEqual(ns(init, kind), ns(Deno.pid, kind), `a ${kind} namespace of its own`);
  assert.equal(ns(restoredChild, kind), ns(init, kind));
  assert.deepEqual(
    ["uid_map", "gid_map", "setgroups"].map((f) => Deno.readTextFileSync(`/proc/${init}/${f}`)),
    maps,
  );
  assert.deepEqual([credLines(init), credLines(restoredChild)], before, "ids seen from outside");
  // The fixture checks its maps, its own and its child's credentials inside, and the count.
  assert.equal(await c.maker.check(init), "PASS", c.maker.output());
  assert.equal(await c.maker.check(init), "PASS", "and it runs on");
  return { restored, shown };
}

const missing = notInstalled("unshare", "cc");

Deno.test(
  needs("user namespace: unshare --map-root-user comes back with its map and credentials", missing),
  async () => {
    const c = await startContainer([
      "unshare",
      "--user",
      "--map-root-user",
      "--pid",
      "--fork",
      "--mount-proc",
    ]);
    try {
      const trip = await roundTrip(c, "user");
      assert.match(
        trip.shown,
        /container namespaces: pid, mnt \+proc on \/proc, user uids 0:0:1 gids 0:0:1 \(setgroups deny\)/,
      );
    } finally {
      await stopContainer(c);
    }
  },
);

Deno.test(
  needs("user namespace: several ranges (0→100000, 1000→200000), ids changed inside", missing),
  async () => {
    const launch = await fixture("userns_launch");
    const c = await startContainer([
      launch,
      "0 100000 1000,1000 200000 1000",
      "0 100000 2000,2000 300000 2000",
    ]);
    try {
      // Root inside is 100000 outside; the child is 1000 inside, 200000 outside.
      assert.match(credLines(c.init), /^Uid:\t100000\t/m);
      assert.match(credLines(childrenOf(c.init)[0]), /^Uid:\t200000\t200001\t200002\t/m);
      const trip = await roundTrip(c, "user");
      assert.match(
        trip.shown,
        /user uids 0:100000:1000,1000:200000:1000 gids 0:100000:2000,2000:300000:2000 \(setgroups allow\)/,
      );
    } finally {
      await stopContainer(c);
    }
  },
);

Deno.test(
  needs(
    "user namespace: --external user leaves one held outside out, joined at restore",
    notInstalled("unshare", "nsenter", "cc"),
  ),
  async () => {
    const c = await startContainer([
      "unshare",
      "--user",
      "--map-root-user",
      "--pid",
      "--fork",
      "--mount-proc",
    ]);
    const holder = await spawnTarget("nsenter", [
      `--user=/proc/${c.init}/ns/user`,
      "--preserve-credentials",
      "sleep",
      "1000",
    ]);
    try {
      await waitUntil(() => comm(holder.pid) === "sleep", 5000, "the holder to sleep");
      await assert.rejects(
        () => checkpoint(c.init, `${c.dir}/image`),
        /also held by process \d+ \(sleep\).*--external user leaves it out/,
      );
      await checkpoint(c.init, `${c.dir}/image`, { external: ["user"] });
      await waitUntil(() => !isAlive(c.init), 5000, "the dumped container to end");
      await killAndReap(c.maker.pid);
      const shown = await cli("inspect", `${c.dir}/image`);
      assert.match(shown.stdout, /user joined at restore \(--external user\)/);
      // Not handed in: refused, naming what to hand in.
      await assert.rejects(
        () => restore(`${c.dir}/image`),
        /hand in the user namespace it joins/,
      );
      const r = await new Deno.Command("sh", {
        args: [
          "-c",
          `exec '${Deno.execPath()}' run -A main.ts restore '${c.dir}/image' --json ` +
          `--inherit-fd 'fd[3]:user' 3</proc/${holder.pid}/ns/user`,
        ],
        cwd: new URL("../", import.meta.url).pathname,
        stdin: "null",
        stdout: "piped",
        stderr: "piped",
      }).output();
      assert.ok(r.success, new TextDecoder().decode(r.stderr));
      const restored = c.restored = JSON.parse(new TextDecoder().decode(r.stdout)).pid as number;
      assert.equal(ns(restored, "user"), ns(holder.pid, "user"), "the one handed in");
      assert.notEqual(ns(restored, "pid"), ns(Deno.pid, "pid"));
      assert.equal(await c.maker.check(restored), "PASS", c.maker.output());
    } finally {
      await killAndReap(holder.pid);
      await stopContainer(c);
    }
  },
);

/** Dumping `pid` is refused with `reason`, and it runs on (still checking itself when `c`). */
async function assertRefused(pid: number, dir: string, reason: RegExp): Promise<void> {
  await assert.rejects(() => checkpoint(pid, `${dir}/image`), reason);
  assert.ok(isAlive(pid), "the refused process runs on");
}

Deno.test(
  needs(
    "user namespace: what cannot be carried is refused, naming it",
    notInstalled(
      "unshare",
      "nsenter",
      "setpriv",
      "cc",
    ),
  ),
  async (t) => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-userns-" });
    const started: Target[] = [];
    /** Starts `program`; the process running sleep it leads to (itself or its child). */
    const sleeper = async (program: string, args: string[]) => {
      const target = await spawnTarget(program, args);
      started.push(target);
      const sleeping = () =>
        [target.pid, ...childrenOf(target.pid)].find((p) => comm(p) === "sleep");
      await waitUntil(() => sleeping() !== undefined, 5000, `${program} to start sleep`);
      return sleeping()!;
    };
    try {
      await t.step("a user namespace without a pid namespace of its own", async () => {
        const s = await sleeper("unshare", ["--user", "--map-root-user", "sleep", "1000"]);
        await assertRefused(s, dir, /carried with the container's pid namespace/);
      });
      await t.step("a user namespace nested in another", async () => {
        const s = await sleeper("unshare", [
          "--user",
          "--map-root-user",
          "unshare",
          "--user",
          "--map-root-user",
          "--pid",
          "--fork",
          "sleep",
          "1000",
        ]);
        await assertRefused(s, dir, /nested user namespaces are not dumped/);
      });
      await t.step("a group its user namespace does not map", async () => {
        const s = await sleeper("setpriv", [
          "--groups",
          "5",
          "unshare",
          "--user",
          "--map-root-user",
          "--pid",
          "--fork",
          "sleep",
          "1000",
        ]);
        await assertRefused(s, dir, /has gid 5, which its user namespace/);
      });
      await t.step("a user namespace a process outside the dump lives in", async () => {
        const init = await sleeper("unshare", [
          "--user",
          "--map-root-user",
          "--pid",
          "--fork",
          "sleep",
          "1000",
        ]);
        const holder = await sleeper("nsenter", [
          `--user=/proc/${init}/ns/user`,
          "--preserve-credentials",
          "sleep",
          "1000",
        ]);
        await assertRefused(
          init,
          dir,
          new RegExp(`user namespace of container ${init} is also held by process ${holder}`),
        );
      });
    } finally {
      for (const s of started.reverse()) {
        for (const c of childrenOf(s.pid)) await killAndReap(c);
        await killAndReap(s.pid);
      }
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);

/** The name of process `pid`, "" when gone. */
function comm(pid: number): string {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/comm`).trim();
  } catch {
    return "";
  }
}

const cgroupsMissing = notInstalled("unshare", "nsenter", "cc") ??
  (exists(`${CGROUP_PIDS}/cgroup.procs`) && exists(`${CGROUP_UNIFIED}/cgroup.procs`)
    ? undefined
    : "no v1 pids hierarchy and v2 at /sys/fs/cgroup/unified");

/** What process `pid` sees in its /proc/self/cgroup (read from inside its cgroup namespace). */
async function cgroupsSeen(pid: number): Promise<string> {
  const out = await new Deno.Command("nsenter", {
    args: [`--target=${pid}`, "--cgroup", "cat", `/proc/${pid}/cgroup`],
    stdout: "piped",
  }).output();
  assert.ok(out.success, `nsenter --cgroup into ${pid}`);
  return new TextDecoder().decode(out.stdout);
}

Deno.test(
  needs(
    "cgroup namespace: rooted at its groups (v1 pids, v2), back rooted there, reads the same",
    cgroupsMissing,
  ),
  async () => {
    const name = `tardigrade-cgns-${Deno.pid}-${Date.now()}`;
    const groups = [
      makeGroup(CGROUP_PIDS, name, { "pids.max": "64" }),
      makeGroup(CGROUP_UNIFIED, name),
    ];
    const join = groups.map((g) => `echo $$ > ${g}/cgroup.procs`).join("; ");
    const c = await startContainer([
      "sh",
      "-c",
      `${join}; exec unshare --cgroup --pid --fork --mount-proc "$0" "$1"`,
    ]);
    try {
      const seen = await cgroupsSeen(c.init);
      assert.match(seen, /^\d+:pids:\/$/m, "the pids group is the root inside");
      assert.match(seen, /^0::\/$/m, "the v2 group is the root inside");
      const trip = await roundTrip(c, "cgroup");
      const restored = trip.restored;
      assert.match(trip.shown, /container namespaces: pid, mnt \+proc on \/proc, cgroup/);
      for (const pid of [restored.pid, ...childrenOf(restored.pid)]) {
        assert.notEqual(ns(pid, "cgroup"), ns(Deno.pid, "cgroup"), "a cgroup namespace of its own");
        assert.equal(groupOf(pid, "pids"), `/${name}`);
        assert.equal(groupOf(pid, ""), `/${name}`);
      }
      assert.equal(await cgroupsSeen(restored.pid), seen);
    } finally {
      await stopContainer(c);
      for (const g of groups) await removeGroup(g).catch(() => {});
    }
  },
);

Deno.test(
  needs("cgroup namespace: an init below the root of its namespace is refused", cgroupsMissing),
  async () => {
    const name = `tardigrade-cgns-${Deno.pid}-${Date.now()}`;
    const group = makeGroup(CGROUP_UNIFIED, name);
    const sub = `${group}/sub`;
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-userns-" });
    // Made in the group, then moved into a group below it: it sees /sub.
    const t = await spawnTarget("sh", [
      "-c",
      `echo $$ > ${group}/cgroup.procs; exec unshare --cgroup --pid --fork --mount-proc ` +
      `sh -c 'mkdir ${sub}; echo $$ > ${sub}/cgroup.procs; exec sleep 1000'`,
    ]);
    try {
      await waitUntil(
        () => childrenOf(t.pid).some((p) => comm(p) === "sleep"),
        5000,
        "the container's sleep",
      );
      const init = childrenOf(t.pid)[0];
      await assertRefused(
        init,
        dir,
        /is not at the root of its cgroup namespace \(in hierarchy cgroup2 it is in group \/sub/,
      );
    } finally {
      for (const p of childrenOf(t.pid)) await killAndReap(p);
      await killAndReap(t.pid);
      await removeGroup(sub).catch(() => {});
      await removeGroup(group).catch(() => {});
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    }
  },
);
