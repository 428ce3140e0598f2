/**
 * Self-check of the restore verification fixtures (tests/fixtures/r_*.c): each one must start,
 * answer PASS twice (it is correct and its check leaves its state as it found it), and answer
 * PASS again after a SIGSTOP/SIGCONT pair. A fixture that fails here would make the restore suite
 * (tests/restore_suite_test.ts) blame the restore for the fixture's own bug.
 *
 * `R_FIXTURES=r_pipe,r_epoll deno test -A tests/fixtures_selfcheck_test.ts` runs only those.
 */
import assert from "node:assert/strict";
import {
  fixture,
  needs,
  notInstalled,
  PING_GROUPS,
  removeAnnounced,
  setSysctls,
  spawnTarget,
  waitUntil,
  withTarget,
} from "./helpers.ts";

const fixtureDir = new URL("./fixtures/", import.meta.url).pathname;

/** How fixtures are started; fixtures not named here start with no arguments. */
const launchOptions: Record<
  string,
  { args?: string[]; env?: Record<string, string>; sysctls?: Record<string, string> }
> = {
  r_ping_socket: { sysctls: PING_GROUPS },
  r_cmdline: {
    args: ["alpha", "two words", "", "ünïcödé", "--flag=x=y"],
    env: { TG_CMDLINE_VAR: "value with spaces=and equals" },
  },
};

const allFixtures = [...Deno.readDirSync(fixtureDir)]
  .map((e) => e.name.match(/^(r_\w+)\.c$/)?.[1])
  .filter((name): name is string => name !== undefined)
  .sort();
const only = Deno.env.get("R_FIXTURES")?.split(",");
const fixtures = only ? allFixtures.filter((name) => only.includes(name)) : allFixtures;

/** Waits until the process is stopped (state T), or runs again (any other state). */
function waitForState(pid: number, stopped: boolean): Promise<void> {
  const state = () => {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0];
  };
  return waitUntil(
    () => (state() === "T") === stopped,
    5000,
    () => `pid ${pid} to ${stopped ? "stop" : "run again"}; it is in state ${state()}`,
  );
}

Deno.test("selfcheck: there are at least 25 restore fixtures", () => {
  assert.ok(allFixtures.length >= 25, `only ${allFixtures.length}: ${allFixtures.join(" ")}`);
});

Deno.test("selfcheck: every restore fixture is in the restore suite's table", () => {
  const suite = Deno.readTextFileSync(new URL("./restore_suite_test.ts", import.meta.url));
  const listed = [...suite.matchAll(/name: "(r_\w+)"/g)].map((m) => m[1]).sort();
  assert.deepEqual(listed, allFixtures);
});

for (const name of fixtures) {
  Deno.test(`selfcheck: ${name}`, async () => {
    const bin = await fixture(name);
    const { args = [], env, sysctls } = launchOptions[name] ?? {};
    using _sysctls = setSysctls(sysctls);
    const t = await spawnTarget(bin, args, { ready: /^(READY|SETUP FAILED) /m, env });
    try {
      await withTarget(t, async () => {
        assert.match(t.output(), /^READY /m, `fixture setup failed:\n${t.output()}`);
        assert.equal(await t.check(), "PASS", `first check; output:\n${t.output()}`);
        assert.equal(await t.check(), "PASS", `second check; output:\n${t.output()}`);
        Deno.kill(t.pid, "SIGSTOP");
        await waitForState(t.pid, true);
        Deno.kill(t.pid, "SIGCONT");
        await waitForState(t.pid, false);
        assert.equal(
          await t.check(),
          "PASS",
          `check after SIGSTOP/SIGCONT; output:\n${t.output()}`,
        );
        assert.ok(t.alive(), "fixture died");
      });
    } finally {
      await removeAnnounced(t);
      await Deno.remove(t.outPath).catch(() => {});
    }
  });
}

/** The interpreted counters (tests/fixtures/counter.py, counter.js) answer checks and count. */
const counters = [
  { name: "counter.py", command: "python3" },
  { name: "counter.js", command: "node" },
].filter(({ name }) => !only || only.includes(name));

for (const { name, command } of counters) {
  Deno.test(needs(`selfcheck: ${name}`, notInstalled(command)), async () => {
    const script = `${fixtureDir}${name}`;
    const t = await spawnTarget(command, [script], { ready: /^READY /m });
    try {
      await withTarget(t, async () => {
        const file = t.output().match(/\bfile=(\S+)/)![1];
        const lastCount = () => Number(Deno.readTextFileSync(file).trimEnd().split("\n").at(-1));
        await waitUntil(() => lastCount() >= 5, 5000, () => `5 counts: ${lastCount()}`);
        assert.equal(await t.check(), "PASS", `first check; output:\n${t.output()}`);
        Deno.kill(t.pid, "SIGSTOP");
        await waitForState(t.pid, true);
        Deno.kill(t.pid, "SIGCONT");
        await waitForState(t.pid, false);
        const before = lastCount();
        await waitUntil(
          () => lastCount() >= before + 3,
          5000,
          () => `counting after SIGSTOP/SIGCONT: ${lastCount()}, ${before} before`,
        );
        assert.equal(await t.check(), "PASS", `second check; output:\n${t.output()}`);
      });
    } finally {
      await removeAnnounced(t);
      await Deno.remove(t.outPath).catch(() => {});
    }
  });
}
