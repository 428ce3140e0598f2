/**
 * Signals sent to a process while it is frozen for a dump are not lost: those the tool's own
 * syscalls took from its queue are handed back on release, each with its information (sender,
 * value, code), and a dump records them as pending, so the restored process takes them too.
 */
import assert from "node:assert/strict";
import { checkpoint, type Policy, restore } from "../mod.ts";
import { syscall } from "../ffi/mod.ts";
import { fixture, killAndReap, spawnTarget, type Target } from "./helpers.ts";

const SIGUSR2 = 12;
const SI_QUEUE = -1;

/** sigqueue(3): a process-directed signal with a value, sent from this process. */
function sigqueue(pid: number, signo: number, value: number): void {
  const info = new DataView(new ArrayBuffer(128));
  info.setInt32(0, signo, true);
  info.setInt32(8, SI_QUEUE, true);
  info.setInt32(16, Deno.pid, true);
  info.setInt32(20, Deno.uid() ?? 0, true);
  info.setInt32(24, value, true);
  syscall(
    "rt_sigqueueinfo",
    pid,
    signo,
    Deno.UnsafePointer.value(Deno.UnsafePointer.of(info.buffer)),
  );
}

/** A policy that sends the signals while the process is frozen, before any syscall runs in it. */
function sendingWhileFrozen(pid: number, rt: number): Policy {
  let sent = false;
  return {
    mapping() {
      if (!sent) {
        sent = true;
        sigqueue(pid, rt, 4242);
        sigqueue(pid, SIGUSR2, 77);
      }
      return "dump";
    },
  };
}

/** The signals the fixture logged since `from`: "signo code value pid" each. */
async function logged(t: Target, from: number): Promise<string[]> {
  await t.waitFor(/^GOT .*\n(?:.*\n)*?GOT /m, 10_000, from);
  return [...t.output().slice(from).matchAll(/^GOT (.*)$/gm)].map((m) => m[1]).sort();
}

/**
 * Runs `body` with the fixture and a fresh image directory; `body` dumps (sending the signals
 * while frozen) and returns the output offset from which the two signals must be logged, whole.
 */
async function heldSignalsCase(
  body: (t: Target, img: string, policy: Policy) => Promise<number>,
): Promise<void> {
  const t = await spawnTarget(await fixture("signal_log"), [], { ready: /^READY rt=(\d+)/m });
  const dir = await Deno.makeTempDir({ prefix: "held-" });
  try {
    const rt = Number(t.output().match(/rt=(\d+)/)![1]);
    const from = await body(t, `${dir}/img`, sendingWhileFrozen(t.pid, rt));
    assert.deepEqual(
      await logged(t, from),
      [`${SIGUSR2} ${SI_QUEUE} 77 ${Deno.pid}`, `${rt} ${SI_QUEUE} 4242 ${Deno.pid}`].sort(),
    );
    assert.equal(await t.check(), "PASS");
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("held signals: sent during a dump that leaves the process running, they arrive whole", async () => {
  await heldSignalsCase(async (t, img, policy) => {
    const from = t.output().length;
    await checkpoint(t.pid, img, { leaveRunning: true, policy });
    return from;
  });
});

Deno.test("held signals: sent during a dump, they are pending in the image and the restored process takes them", async () => {
  await heldSignalsCase(async (t, img, policy) => {
    await checkpoint(t.pid, img, { policy });
    await killAndReap(t.pid);
    const from = t.output().length;
    await restore(img);
    return from;
  });
});

/** SigCgt and SigBlk of a process, from its status. */
function handledAndBlocked(pid: number): string[] {
  const status = Deno.readTextFileSync(`/proc/${pid}/status`);
  return ["SigCgt", "SigBlk"].map((f) => status.match(new RegExp(`^${f}:\\s*(\\S+)`, "m"))![1]);
}

Deno.test("held signals: a handled and blocked SIGTRAP stays so through a dump that leaves it running", async () => {
  const t = await spawnTarget(await fixture("signal_log"), [], { ready: /^READY/m });
  const dir = await Deno.makeTempDir({ prefix: "held-" });
  try {
    const before = handledAndBlocked(t.pid);
    assert.ok(BigInt(`0x${before[0]}`) & (1n << 4n), "SIGTRAP handled before the dump");
    await checkpoint(t.pid, `${dir}/img`, { leaveRunning: true });
    assert.deepEqual(handledAndBlocked(t.pid), before);
  } finally {
    await killAndReap(t.pid);
    await Deno.remove(dir, { recursive: true });
  }
});
