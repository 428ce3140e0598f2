/**
 * Restore into a new pid namespace (`restore(dir, { pidNamespace: true })`): a process dumped with
 * `leaveRunning` is restored beside its running original, even twice, each copy with its dumped
 * pid and tids inside a namespace of its own and its own /proc; a failed restore leaves nothing.
 *
 * The copies write to the original's output file (opened with O_APPEND, so nothing is written
 * over): their checks are asked one at a time, each answer the next PASS/FAIL line.
 */
import assert from "node:assert/strict";
import { checkpoint, type Policy, restore, type RestoreResult } from "../mod.ts";
import {
  cli,
  fixture,
  isAlive,
  isRestoreStub,
  killAndReap,
  needs,
  notInstalled,
  removeAnnounced,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

/** A field of /proc/…/status. */
function statusField(path: string, name: string): string {
  const status = Deno.readTextFileSync(path);
  return status.match(new RegExp(`^${name}:\\s*(.*)$`, "m"))?.[1].trim() ?? "";
}

/** NSpid of a process or thread (`/proc/PID[/task/TID]`): its pid in each namespace, host first. */
function nspid(dir: string): number[] {
  return statusField(`${dir}/status`, "NSpid").split(/\s+/).map(Number);
}

function ppid(pid: number): number {
  return Number(statusField(`/proc/${pid}/status`, "PPid"));
}

/** Field 22 of /proc/…/stat: when the process started, which tells two processes apart. */
function startTime(stat: string): string {
  return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19];
}

function tids(pid: number): number[] {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => Number(e.name)).sort();
}

/** Ends a copy: killing its namespace's init kills every process in it. */
async function endCopy(copy: RestoreResult): Promise<void> {
  if (copy.namespaceInit) await killAndReap(copy.namespaceInit);
  for (const pid of copy.processes) await killAndReap(pid);
}

/** A namespace's init as the restore leaves it: pid 1 inside, not traced, no descriptor. */
function assertInitReleased(copy: RestoreResult): void {
  const init = copy.namespaceInit!;
  assert.equal(ppid(copy.pid), init, "the restored root is the child of the namespace's init");
  assert.equal(nspid(`/proc/${init}`).at(-1), 1);
  assert.equal(statusField(`/proc/${init}/status`, "TracerPid"), "0", "the init is still traced");
  assert.deepEqual([...Deno.readDirSync(`/proc/${init}/fd`)], [], "the init holds descriptors");
}

async function withDumped(
  start: () => Promise<Target>,
  body: (t: Target, image: string) => Promise<void>,
  policy?: Policy,
): Promise<void> {
  const t = await start();
  const root = await Deno.makeTempDir({ prefix: "tardigrade-pidns-" });
  try {
    assert.match(t.output(), /^READY /m, `fixture setup failed:\n${t.output()}`);
    await checkpoint(t.pid, `${root}/image`, { leaveRunning: true, policy });
    assert.ok(Deno.statSync(`/proc/${t.pid}`), "the original runs on");
    await body(t, `${root}/image`);
  } finally {
    await t.kill();
    await removeAnnounced(t);
    await Deno.remove(root, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
}

const startFixture = (name: string) => async () =>
  spawnTarget(await fixture(name), [], { ready: /^(READY|SETUP FAILED) /m, append: true });

for (const name of ["r_pids", "r_memory"]) {
  Deno.test(`pid namespace: ${name} restored twice beside its running original`, async () => {
    await withDumped(startFixture(name), async (t, image) => {
      const copies: RestoreResult[] = [];
      try {
        for (let i = 0; i < 2; i++) copies.push(await restore(image, { pidNamespace: true }));
        assert.equal(await t.check(), "PASS", `the original; output:\n${t.output()}`);
        for (const copy of copies) {
          assert.notEqual(copy.pid, t.pid);
          assert.equal(copy.namespacePid, t.pid);
          assert.deepEqual(nspid(`/proc/${copy.pid}`), [copy.pid, t.pid]);
          // Every thread has its dumped tid inside (r_pids also asks gettid() of each).
          assert.deepEqual([...copy.pidMap.keys()].sort(), tids(t.pid));
          for (const [tid, host] of copy.pidMap) {
            assert.deepEqual(nspid(`/proc/${copy.pid}/task/${host}`), [host, tid]);
          }
          assertInitReleased(copy);
          assert.equal(await t.check(copy.pid), "PASS", `copy ${copy.pid}; output:\n${t.output()}`);
        }
        assert.equal(await t.check(), "PASS", `the original after its copies ran`);
        // The init goes once the tree it guards is gone: it reaps the root and finds no child.
        await killAndReap(copies[0].pid);
        const init = copies[0].namespaceInit!;
        await waitUntil(() => !isAlive(init), 5000, "the namespace's init to end with its tree");
      } finally {
        for (const copy of copies) await endCopy(copy);
      }
    });
  });
}

/** The numbers a counter wrote to `file`. */
function counts(file: string): number[] {
  return Deno.readTextFileSync(file).split("\n").filter(Boolean).map(Number);
}

Deno.test(
  needs(
    "pid namespace: a Python counter counts on beside its original, with its own /proc",
    notInstalled("python3"),
  ),
  async () => {
    const script = new URL("./fixtures/counter.py", import.meta.url).pathname;
    const copyFile = await Deno.makeTempFile({ prefix: "tardigrade-pidns-count-" });
    let file = "";
    const start = async () => {
      const t = await spawnTarget("python3", [script], { ready: /^READY /m, append: true });
      file = t.output().match(/\bfile=(\S+)/)![1];
      return t;
    };
    try {
      // The copy counts into a file of its own: the policy reopens the count file there.
      const policy = {
        fd: (fd: { target: string }) => fd.target === file ? { reopen: copyFile } : "dump" as const,
      };
      await withDumped(start, async (t, image) => {
        const atRestore = counts(file).at(-1)!;
        const copy = await restore(image, { pidNamespace: true });
        try {
          // Both count on: the original past where it was, the copy in its own file.
          await waitUntil(
            () => counts(file).at(-1)! > atRestore + 3 && counts(copyFile).length > 3,
            5000,
            () =>
              `both to count: the original at ${counts(file).at(-1)} (${atRestore} at the ` +
              `restore), the copy ${counts(copyFile).length} times`,
          );
          const its = counts(copyFile);
          // It went on from where the dump was, one by one.
          assert.ok(its[0] > 1 && its[0] <= atRestore + 1, `the copy started at ${its[0]}`);
          its.forEach((n, i) => assert.equal(n, its[0] + i));
          assert.equal(await t.check(), "PASS", `the original; output:\n${t.output()}`);

          // In the copy's mount namespace /proc is its pid namespace's: the dumped pid there is
          // the copy (not the original), and a process there sees one level of pids.
          const inCopy = async (...args: string[]) => {
            const out = await new Deno.Command("nsenter", {
              args: ["-t", String(copy.pid), ...args],
              stdout: "piped",
            }).output();
            assert.ok(out.success, `nsenter ${args.join(" ")} failed`);
            return new TextDecoder().decode(out.stdout);
          };
          const statThere = await inCopy("-m", "cat", `/proc/${t.pid}/stat`);
          assert.equal(
            startTime(statThere),
            startTime(Deno.readTextFileSync(`/proc/${copy.pid}/stat`)),
          );
          assert.notEqual(
            startTime(statThere),
            startTime(Deno.readTextFileSync(`/proc/${t.pid}/stat`)),
          );
          const nspidThere = await inCopy("-m", "-p", "--", "grep", "NSpid", "/proc/self/status");
          assert.match(
            nspidThere,
            /^NSpid:\s+\d+\s*$/,
            "/proc/self there is not a proc of the namespace",
          );
        } finally {
          await endCopy(copy);
        }
      }, policy);
    } finally {
      await Deno.remove(copyFile).catch(() => {});
    }
  },
);

Deno.test("pid namespace: a process tree restored beside its original passes its check", async () => {
  await withDumped(startFixture("r_tree"), async (t, image) => {
    const children = t.output().match(/^READY \d+ children (\d+) (\d+)/m)!.slice(1).map(Number);
    const copy = await restore(image, { pidNamespace: true });
    try {
      assert.equal(copy.processes.length, 3);
      for (const child of children) {
        const host = copy.pidMap.get(child)!;
        assert.deepEqual(nspid(`/proc/${host}`), [host, child]);
        assert.equal(ppid(host), copy.pid, "a child is again the child of the restored root");
      }
      assert.equal(await t.check(copy.pid), "PASS", `the copy; output:\n${t.output()}`);
      assert.equal(await t.check(), "PASS", `the original; output:\n${t.output()}`);
    } finally {
      await endCopy(copy);
    }
  });
});

/**
 * What a restore into a namespace may leave behind: a namespace init, a process with one of the
 * image's pids inside a namespace, a stub, a zombie of ours. Each as "pid starttime".
 */
function leftovers(imagePids: number[]): Set<string> {
  const out = new Set<string>();
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      const status = Deno.readTextFileSync(`/proc/${e.name}/status`);
      const ours = Number(status.match(/^PPid:\s*(\d+)/m)?.[1]) === Deno.pid;
      const ids = status.match(/^NSpid:(.*)$/m)?.[1].trim().split(/\s+/).map(Number) ?? [];
      if (
        stat.includes("(tardigrade-init)") ||
        (ids.length > 1 && imagePids.includes(ids[ids.length - 1])) ||
        (ours && (/^State:\s*Z/m.test(status) || isRestoreStub(Number(e.name))))
      ) out.add(`${e.name} ${startTime(stat)}`);
    } catch { /* gone */ }
  }
  return out;
}

Deno.test("pid namespace: a failed restore leaves no process behind, nor the namespace's init", async (ctx) => {
  await withDumped(startFixture("r_tree"), async (t, image) => {
    const children = t.output().match(/^READY \d+ children (\d+) (\d+)/m)!.slice(1).map(Number);
    const imagePids = [t.pid, ...children];
    for (const stop of ["memory", "threads", "resume"]) {
      await ctx.step(`stopped at "${stop}"`, async () => {
        const before = leftovers(imagePids);
        await assert.rejects(
          restore(image, {
            pidNamespace: true,
            policy: {
              restoreStage(stage) {
                if (stage === stop) throw new Error(`stopped at ${stage}`);
              },
            },
          }),
          new RegExp(`stopped at ${stop}`),
        );
        const left = [...leftovers(imagePids)].filter((p) => !before.has(p));
        assert.deepEqual(left, [], "left behind");
      });
    }
    // Nothing of the failed ones is in the way of one that goes through.
    const copy = await restore(image, { pidNamespace: true });
    try {
      assert.equal(await t.check(copy.pid), "PASS", `the copy; output:\n${t.output()}`);
    } finally {
      await endCopy(copy);
    }
  });
});

Deno.test("pid namespace: a listening address the original holds is refused clearly", async () => {
  await withDumped(startFixture("r_listen"), async (t, image) => {
    const before = leftovers([t.pid]);
    await assert.rejects(
      restore(image, { pidNamespace: true }),
      /cannot restore: .*127\.0\.0\.1:\d+ is in use/,
    );
    assert.deepEqual([...leftovers([t.pid])].filter((p) => !before.has(p)), []);
    assert.equal(await t.check(), "PASS", "the original is untouched");
  });
});

Deno.test("pid namespace: cli restore --pid-namespace prints the host pid, --json both", async () => {
  const t = await startFixture("r_pids")();
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-pidns-cli-" });
  const pidfile = `${dir}/pid`;
  const copies: RestoreResult[] = [];
  try {
    const d = await cli("dump", String(t.pid), `${dir}/img`, "--leave-running");
    assert.equal(d.code, 0, d.stderr);
    const j = await cli("restore", `${dir}/img`, "--pid-namespace", "--pidfile", pidfile, "--json");
    assert.equal(j.code, 0, j.stderr);
    const json = JSON.parse(j.stdout);
    copies.push({ ...json, processes: [json.pid] });
    assert.notEqual(json.pid, t.pid);
    assert.equal(json.namespacePid, t.pid);
    assert.equal(json.pidMap[t.pid], json.pid);
    assert.equal(ppid(json.pid), json.namespaceInit);
    assert.equal(Deno.readTextFileSync(pidfile), `${json.pid}\n`);

    const r = await cli("restore", `${dir}/img`, "--pid-namespace");
    assert.equal(r.code, 0, r.stderr);
    const pid = Number(r.stdout.trim());
    copies.push({ pid, processes: [pid], namespaceInit: ppid(pid) } as RestoreResult);
    assert.deepEqual(nspid(`/proc/${pid}`), [pid, t.pid]);
    for (const copy of copies) assert.equal(await t.check(copy.pid), "PASS", t.output());
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    for (const copy of copies) await endCopy(copy);
    await t.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});
