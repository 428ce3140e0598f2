import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  killAndReap,
  needs,
  noNetworkLock,
  notInstalled,
  spawnTarget,
  type Target,
} from "./helpers.ts";

/** Every process below `pid`, deepest first. */
function descendants(pid: number): number[] {
  const out: number[] = [];
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    try {
      const stat = Deno.readTextFileSync(`/proc/${e.name}/stat`);
      if (Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]) === pid) {
        out.push(...descendants(Number(e.name)), Number(e.name));
      }
    } catch { /* gone */ }
  }
  return out;
}

/** The numbered lines `cat -n` wrote: [line number, counter]. */
function numbered(t: Target): [number, number][] {
  return [...t.output().matchAll(/^\s*(\d+)\tn=(\d+)$/gm)].map((m) => [Number(m[1]), Number(m[2])]);
}

Deno.test("tree: a shell pipeline (bash, its subshell, cat, sleep) keeps counting after restore", async () => {
  const script = 'i=0; while true; do echo "n=$i"; i=$((i+1)); sleep 0.1; done | cat -n';
  const t = await spawnTarget("/bin/bash", ["-c", script], { ready: /n=2$/m });
  const img = await Deno.makeTempDir({ prefix: "tardigrade-tree-" });
  let everyone: number[] = [];
  try {
    const before = descendants(t.pid);
    assert.ok(before.length >= 2, "the pipeline has its subshell and cat");
    const r = await checkpoint(t.pid, `${img}/image`);
    assert.equal(r.processes[0], t.pid);
    assert.ok(r.processes.length >= 3, `processes dumped: ${r.processes}`);
    const seen = numbered(t).length;
    const back = await restore(`${img}/image`);
    everyone = back.processes;
    assert.deepEqual([...back.processes].sort(), [...r.processes].sort());
    await t.waitFor(new RegExp(`^\\s*${seen + 3}\\tn=`, "m"));
    // Numbered by cat, counted by the subshell: both went on where they were, through the same
    // pipe, with nothing lost or written twice.
    numbered(t).forEach(([line, n], i) => {
      assert.equal(line, i + 1);
      assert.equal(n, i);
    });
    // The long-lived ones (a short `sleep` may have ended since) have their parents again.
    for (const pid of before.filter((p) => r.processes.includes(p))) {
      let stat: string;
      try {
        stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
      } catch {
        continue;
      }
      const ppid = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
      assert.ok(r.processes.includes(ppid), `${pid} is again the child of a restored process`);
    }
  } finally {
    for (const pid of [...descendants(t.pid), ...everyone]) await killAndReap(pid);
    await t.kill();
    await Deno.remove(img, { recursive: true }).catch(() => {});
  }
});

/** A parent and its forked child playing ping-pong over a loopback TCP connection; the parent
 * prints every number it gets (the child sends even numbers, the parent answers n + 1). */
const PING_PONG = `
import os, socket, sys, time
listener = socket.socket()
listener.bind(("127.0.0.1", 0))
listener.listen(1)
address = listener.getsockname()
if os.fork() == 0:
    listener.close()
    c = socket.create_connection(address)
    n = 0
    while True:
        c.sendall(b"%d\\n" % n)
        reply = b""
        while not reply.endswith(b"\\n"):
            part = c.recv(64)
            if not part:
                os._exit(3)
            reply += part
        if int(reply) != n + 1:
            os._exit(4)
        n += 2
        time.sleep(0.005)
s, _ = listener.accept()
f = s.makefile("rb")
while True:
    line = f.readline()
    if not line:
        sys.exit(5)
    print("got", int(line), flush=True)
    s.sendall(b"%d\\n" % (int(line) + 1))
`;

Deno.test(
  needs(
    "tree: a parent and child talking over loopback TCP go on talking after restore",
    notInstalled("python3") ?? noNetworkLock(),
  ),
  async () => {
    const t = await spawnTarget("python3", ["-c", PING_PONG], { ready: /^got 20$/m });
    const img = await Deno.makeTempDir({ prefix: "tardigrade-tree-" });
    let everyone: number[] = [];
    try {
      const r = await checkpoint(t.pid, `${img}/image`);
      assert.equal(r.processes.length, 2, `processes dumped: ${r.processes}`);
      const last = Math.max(...[...t.output().matchAll(/^got (\d+)$/gm)].map((m) => Number(m[1])));
      const back = await restore(`${img}/image`);
      everyone = back.processes;
      await t.waitFor(new RegExp(`^got ${last + 40}$`, "m"));
      // Every even number once, in order: nothing lost or repeated across the dump.
      const got = [...t.output().matchAll(/^got (\d+)$/gm)].map((m) => Number(m[1]));
      got.forEach((n, i) => assert.equal(n, 2 * i));
    } finally {
      for (const pid of [...descendants(t.pid), ...everyone]) await killAndReap(pid);
      await t.kill();
      await Deno.remove(img, { recursive: true }).catch(() => {});
    }
  },
);
