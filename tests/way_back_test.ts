/**
 * The tool killed while a thread of a dump's target holds injected registers: the thread finds
 * its way back by itself (lib/ptrace/way_back.ts) and runs on from exactly where it was frozen,
 * its general, vector and x87 registers as they were, the syscall it was blocked in restarted.
 */
import assert from "node:assert/strict";
import { fixture, spawnTarget, waitUntil, withTarget } from "./helpers.ts";

/** The state and tracer of each thread of `pid`. */
function threadStates(pid: number): string[] {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].map((e) => {
    const status = Deno.readTextFileSync(`/proc/${pid}/task/${e.name}/status`);
    const field = (f: string) => status.match(new RegExp(`^${f}:\\s*(\\S+)`, "m"))![1];
    return `${e.name} ${field("State")} tracer ${field("TracerPid")}`;
  });
}

Deno.test("way back: a tool killed inside an injected syscall leaves the thread as it was", async () => {
  const bin = await fixture("r_fpu");
  await withTarget(await spawnTarget(bin, [], { ready: /^(READY|SETUP FAILED)/m }), async (t) => {
    assert.equal(await t.check(), "PASS");
    const tid = [...Deno.readDirSync(`/proc/${t.pid}/task`)].map((e) => Number(e.name))
      .find((x) => x !== t.pid)!;
    const probe = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "-A",
        new URL("./way_back_probe.ts", import.meta.url).pathname,
        `${t.pid}`,
        `${tid}`,
      ],
      stdout: "piped",
      stderr: "inherit",
    }).spawn();
    const reader = probe.stdout.pipeThrough(new TextDecoderStream()).getReader();
    let out = "";
    while (!out.includes("ARMED")) {
      const { value, done } = await reader.read();
      if (done) break;
      out += value;
    }
    assert.match(out, /ARMED/);
    await new Promise((r) => setTimeout(r, 300)); // inside the nanosleep, injected registers on
    probe.kill("SIGKILL");
    await probe.status;
    await reader.cancel();
    // The injected sleep ends, then the thread returns through its frame.
    await waitUntil(
      () => Promise.resolve(threadStates(t.pid).every((s) => / S tracer 0$/.test(s))),
      5000,
      () => `threads to sleep untraced again: ${threadStates(t.pid).join(", ")}`,
    );
    assert.equal(await t.check(), "PASS");
    assert.equal(await t.check(), "PASS");
  });
});
