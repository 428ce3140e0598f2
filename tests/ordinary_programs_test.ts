/** Ordinary programs, not fixtures, through a dump and a restore. */
import assert from "node:assert/strict";
import { checkpoint, ImageReader, restore } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import type { UnixPairEntry } from "../lib/files/socket/unix_pair.ts";
import {
  exists,
  isAlive,
  killAndReap,
  needs,
  notInstalled,
  onPath,
  spawnTarget,
  waitUntil,
} from "./helpers.ts";
import { dumpAndRestore, scratch } from "./round_trip.ts";

const python3 = notInstalled("python3");

/** Waits until the shell `spawnTarget` started as `pid` has exec'd `program`. */
function execed(pid: number, program: string): Promise<void> {
  return waitUntil(
    () => Deno.readLinkSync(`/proc/${pid}/exe`).endsWith(`/${program}`),
    5000,
    `${pid} to exec ${program}`,
  );
}

Deno.test("a `sleep` (the restore stub's own program) restores and sleeps on", async () => {
  const t = await spawnTarget("/bin/sleep", ["1000"]);
  const dir = `${Deno.makeTempDirSync({ prefix: "tardigrade-ord-" })}/img`;
  try {
    await execed(t.pid, "sleep");
    const exe = Deno.realPathSync(`/proc/${t.pid}/exe`);
    await checkpoint(t.pid, dir);
    await killAndReap(t.pid);
    const r = await restore(dir);
    assert.equal(r.pid, t.pid);
    assert.ok(isAlive(t.pid));
    assert.equal(Deno.realPathSync(`/proc/${t.pid}/exe`), exe);
  } finally {
    await t.kill();
    Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("a stopped process (^Z, SIGSTOP) comes back stopped, and SIGCONT lets it run", async () => {
  const t = await spawnTarget("/bin/sleep", ["1000"]);
  const dir = `${Deno.makeTempDirSync({ prefix: "tardigrade-ord-" })}/img`;
  const state = () => {
    const stat = Deno.readTextFileSync(`/proc/${t.pid}/stat`);
    return stat.slice(stat.lastIndexOf(")") + 2)[0];
  };
  try {
    await execed(t.pid, "sleep");
    Deno.kill(t.pid, "SIGSTOP");
    await waitUntil(() => state() === "T", 2000, "the stopped state (T) before the dump");
    await checkpoint(t.pid, dir);
    await killAndReap(t.pid);
    await restore(dir);
    await waitUntil(() => state() === "T", 2000, () => `state T after the restore: ${state()}`);
    Deno.kill(t.pid, "SIGCONT");
    await waitUntil(() => state() === "S", 2000, () => `state S after SIGCONT: ${state()}`);
  } finally {
    await t.kill();
    Deno.removeSync(dir.replace(/\/img$/, ""), { recursive: true });
  }
});

// ---- Real runtimes and tools: each is dumped mid-work (and ended), restored, and must go on ----

/** Waits until `pid` has exited (reaping it when it is ours). */
async function waitExit(pid: number, timeoutMs = 20_000): Promise<void> {
  await waitUntil(() => !isAlive(pid), timeoutMs, `pid ${pid} to exit`);
  await killAndReap(pid);
}

/** `n` lines of text that sort and compress like ordinary data (same every run). */
function textLines(n: number): Uint8Array {
  let x = 12345;
  const rnd = () => (x = (Math.imul(x, 1103515245) + 12345) >>> 0);
  const words = Array.from({ length: 4096 }, () => (rnd() >>> 8).toString(36).padStart(5, "q"));
  const lines: string[] = [];
  for (let i = 0; i < n; i++) lines.push(`${words[rnd() & 4095]} ${rnd() % 1000000} ${i}\n`);
  return new TextEncoder().encode(lines.join(""));
}

/** Lines of `text` matching `re`, as numbers from the first group. */
function numbers(text: string, re: RegExp): number[] {
  return [...text.matchAll(re)].map((m) => Number(m[1]));
}

/** How many threads `pid` has. */
function threads(pid: number): number {
  return [...Deno.readDirSync(`/proc/${pid}/task`)].length;
}

/** The file position of `pid`'s descriptor on `path` (0 while it has none). */
function readPosition(pid: number, path: string): number {
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    try {
      if (Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`) !== path) continue;
      const info = Deno.readTextFileSync(`/proc/${pid}/fdinfo/${e.name}`);
      return Number(info.match(/^pos:\s+(\d+)/m)![1]);
    } catch { /* closed meanwhile */ }
  }
  return 0;
}

/** Whether `pid` waits in poll, ppoll, select or pselect6 (the number in /proc/PID/syscall). */
function inPoll(pid: number): boolean {
  const nr = Deno.readTextFileSync(`/proc/${pid}/syscall`).split(" ")[0];
  return ["7", "271", "23", "270"].includes(nr);
}

Deno.test({
  ...needs(
    "java (source launcher, thread pool, HashMap, a socketpair half) counts on",
    notInstalled("java"),
  ),
  async fn() {
    using s = scratch("tardigrade-ord-");
    Deno.writeTextFileSync(
      `${s.dir}/Counter.java`,
      `import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;
public class Counter {
  public static void main(String[] a) throws Exception {
    Map<Integer, String> map = new HashMap<>();
    AtomicLong n = new AtomicLong();
    ScheduledExecutorService pool = Executors.newScheduledThreadPool(4);
    pool.scheduleWithFixedDelay(() -> {
      long i = n.incrementAndGet();
      synchronized (map) {
        map.put((int) i, "v" + i);
        boolean ok = true;
        for (int k = 1; k <= i; k++) ok &= map.get(k).equals("v" + k);
        System.out.println("tick " + i + " size " + map.size() + " " + (ok ? "ok" : "BAD"));
      }
    }, 0, 50, TimeUnit.MILLISECONDS);
    Thread.sleep(Long.MAX_VALUE);
  }
}
`,
    );
    const t = await spawnTarget("java", ["-Xmx64m", "-Xshare:auto", "Counter.java"], {
      cwd: s.dir,
      ready: /^tick 5 /m,
    });
    try {
      // The source launcher's NIO keeps a UNIX socketpair half whose peer is closed.
      const fds = [...Deno.readDirSync(`/proc/${t.pid}/fd`)].map((e) =>
        Deno.readLinkSync(`/proc/${t.pid}/fd/${e.name}`)
      );
      assert.ok(fds.some((f) => f.startsWith("socket:")), fds.join(" "));
      await dumpAndRestore(t.pid, s.img);
      const last = Math.max(...numbers(t.output(), /^tick (\d+) /gm));
      await t.waitFor(new RegExp(`^tick ${last + 5} size ${last + 5} ok$`, "m"));
      const ticks = numbers(t.output(), /^tick (\d+) /gm);
      assert.deepEqual(ticks, ticks.map((_, i) => i + 1));
      assert.ok(!t.output().includes("BAD"));
    } finally {
      await t.kill();
    }
  },
});

Deno.test(needs("python3 threads with a queue go on where they were", python3), async () => {
  using s = scratch("tardigrade-ord-");
  Deno.writeTextFileSync(
    `${s.dir}/q.py`,
    `import threading, queue, time
q = queue.Queue()
def producer():
    i = 0
    while True:
        i += 1
        q.put(i)
        time.sleep(0.02)
def consumer(name):
    while True:
        print(name, q.get(), flush=True)
threading.Thread(target=producer, daemon=True).start()
for n in "ab":
    threading.Thread(target=consumer, args=(n,), daemon=True).start()
while True:
    time.sleep(1)
`,
  );
  const t = await spawnTarget("python3", ["q.py"], { cwd: s.dir, ready: /^[ab] 10$/m });
  try {
    await dumpAndRestore(t.pid, s.img);
    const last = Math.max(...numbers(t.output(), /^[ab] (\d+)$/gm));
    await t.waitFor(new RegExp(`^[ab] ${last + 10}$`, "m"));
    const got = numbers(t.output(), /^[ab] (\d+)$/gm).sort((x, y) => x - y);
    assert.deepEqual(got.slice(0, last + 10), got.slice(0, last + 10).map((_, i) => i + 1));
  } finally {
    await t.kill();
  }
});

// Not a shim under /root (pyenv), which nobody cannot enter.
const systemPython = exists("/usr/bin/python3") ? undefined : "not installed: /usr/bin/python3";

Deno.test(
  needs(
    "another user's threads all come back as that user, not as root",
    systemPython ?? notInstalled("setpriv"),
  ),
  async () => {
    using s = scratch("tardigrade-ord-");
    Deno.chmodSync(s.dir, 0o755);
    Deno.writeTextFileSync(
      `${s.dir}/t.py`,
      `import threading, time, os
for i in range(3):
    threading.Thread(target=lambda: time.sleep(1000), daemon=True).start()
print("ready", os.getuid(), flush=True)
time.sleep(1000)
`,
    );
    const t = await spawnTarget("setpriv", [
      "--reuid=nobody",
      "--regid=nogroup",
      "--clear-groups",
      "/usr/bin/python3", // not a shim under /root, which nobody cannot enter
      `${s.dir}/t.py`,
    ], { ready: /^ready \d+$/m });
    const uids = () =>
      [...Deno.readDirSync(`/proc/${t.pid}/task`)].map((e) =>
        Deno.readTextFileSync(`/proc/${t.pid}/task/${e.name}/status`).match(/^Uid:\s+(.*)$/m)![1]
      );
    try {
      const before = uids();
      assert.equal(before.length, 4);
      await dumpAndRestore(t.pid, s.img);
      const after = uids();
      assert.equal(after.length, 4);
      assert.deepEqual(after, before, "a thread's credentials changed");
    } finally {
      await t.kill();
    }
  },
);

Deno.test(
  needs("python3 asyncio (a self-pipe socketpair woken from a thread) counts on", python3),
  async () => {
    using s = scratch("tardigrade-ord-");
    Deno.writeTextFileSync(
      `${s.dir}/a.py`,
      `import asyncio, threading, time
async def count():
    n = 0
    while True:
        n += 1
        with open("count", "a") as f:
            f.write(f"n {n}\\n")
        await asyncio.sleep(0.05)
async def main():
    loop = asyncio.get_running_loop()
    fed = asyncio.Queue()
    def feeder():
        i = 0
        while True:
            i += 1
            # Wakes the loop by writing to its self-pipe, a socketpair.
            loop.call_soon_threadsafe(fed.put_nowait, i)
            time.sleep(0.03)
    threading.Thread(target=feeder, daemon=True).start()
    asyncio.create_task(count())
    while True:
        print("fed", await fed.get(), flush=True)
asyncio.run(main())
`,
    );
    const counted = () => numbers(Deno.readTextFileSync(`${s.dir}/count`), /^n (\d+)$/gm);
    const t = await spawnTarget("python3", ["a.py"], { cwd: s.dir, ready: /^fed 10$/m });
    try {
      await checkpoint(t.pid, s.img);
      {
        // The loop's self-pipe: both ends of one socketpair, each naming the other.
        using image = await ImageReader.open(s.img);
        const p = await image.readMeta<ProcessEntry>("process");
        const pair = p.files.filter((f) => f.kind === "unix-pair") as UnixPairEntry[];
        assert.equal(pair.length, 2, p.files.map((f) => f.kind).join(" "));
        assert.equal(pair[0].peer, pair[1].inode);
      }
      await killAndReap(t.pid);
      const countAtDump = Math.max(...counted());
      const fedAtDump = Math.max(...numbers(t.output(), /^fed (\d+)$/gm));
      const r = await restore(s.img);
      assert.equal(r.pid, t.pid);
      await t.waitFor(new RegExp(`^fed ${fedAtDump + 10}$`, "m"));
      await waitUntil(
        () => Math.max(...counted()) >= countAtDump + 10,
        5000,
        () => `10 more counts after ${countAtDump}: ${Math.max(...counted())}`,
      );
      const n = counted();
      assert.ok(n.length >= countAtDump + 10, `counted ${n.length}, ${countAtDump} at the dump`);
      assert.deepEqual(n, n.map((_, i) => i + 1));
      const fed = numbers(t.output(), /^fed (\d+)$/gm);
      assert.deepEqual(fed, fed.map((_, i) => i + 1));
    } finally {
      await t.kill();
    }
  },
);

Deno.test({
  ...needs("node with a worker thread goes on passing messages", notInstalled("node")),
  async fn() {
    using s = scratch("tardigrade-ord-");
    Deno.writeTextFileSync(
      `${s.dir}/w.js`,
      `const { Worker, isMainThread, parentPort } = require("node:worker_threads");
if (isMainThread) {
  let last = 0;
  new Worker(__filename).on("message", (m) => {
    console.log(m === last + 1 ? "got" : "BAD", m);
    last = m;
  });
} else {
  let i = 0;
  setInterval(() => parentPort.postMessage(++i), 50);
}
`,
    );
    const t = await spawnTarget("node", ["w.js"], { cwd: s.dir, ready: /^got 5$/m });
    try {
      await dumpAndRestore(t.pid, s.img);
      const last = Math.max(...numbers(t.output(), /^got (\d+)$/gm));
      await t.waitFor(new RegExp(`^got ${last + 5}$`, "m"));
      assert.ok(!t.output().includes("BAD"), t.output());
    } finally {
      await t.kill();
    }
  },
});

Deno.test("deno (V8, its tokio threads, a code cache other denos write, mapped shared) counts on", async () => {
  using s = scratch("tardigrade-ord-");
  Deno.writeTextFileSync(
    `${s.dir}/c.ts`,
    `let last = 0;
const worker = new Worker("data:text/javascript,let i = 0; setInterval(() => postMessage(++i), 40);", {
  type: "module",
});
worker.onmessage = (e) => {
  console.log(e.data === last + 1 ? "got" : "BAD", e.data);
  last = e.data;
};
`,
  );
  const t = await spawnTarget(Deno.execPath(), ["run", "-A", "c.ts"], {
    cwd: s.dir,
    ready: /^got 5$/m,
  });
  try {
    await checkpoint(t.pid, s.img);
    await killAndReap(t.pid);
    // Another deno compiles new code meanwhile: the shared code cache changes under the image.
    await new Deno.Command(Deno.execPath(), {
      args: ["eval", `console.log(${Math.random()} * 2)`],
      stdout: "null",
    }).output();
    assert.equal((await restore(s.img)).pid, t.pid);
    const last = Math.max(...numbers(t.output(), /^got (\d+)$/gm));
    await t.waitFor(new RegExp(`^got ${last + 5}$`, "m"));
    assert.ok(!t.output().includes("BAD"), t.output());
  } finally {
    await t.kill();
  }
});

Deno.test("`tail -f` (inotify, waiting in poll) follows the file after a restore", async () => {
  using s = scratch("tardigrade-ord-");
  const file = `${s.dir}/log`;
  Deno.writeTextFileSync(file, "one\n");
  const t = await spawnTarget("tail", ["-f", file], { ready: /^one$/m });
  try {
    Deno.writeTextFileSync(file, "two\n", { append: true });
    await t.waitFor(/^two$/m);
    // Dumped while it waits in poll(): cut short there, the call must be made again, not
    // fail with EINTR.
    await waitUntil(() => inPoll(t.pid), 5000, "tail to wait in poll()");
    await dumpAndRestore(t.pid, s.img);
    Deno.writeTextFileSync(file, "three\n", { append: true });
    await t.waitFor(/^three$/m);
    assert.ok(isAlive(t.pid), t.output());
  } finally {
    await t.kill();
  }
});

Deno.test("`sort` dumped mid-way writes the same sorted output", async () => {
  using s = scratch("tardigrade-ord-");
  Deno.writeFileSync(`${s.dir}/in`, textLines(700_000));
  const env = { LC_ALL: "C", TMPDIR: s.dir };
  const ref = await new Deno.Command("sort", { args: [`${s.dir}/in`], env, stdout: "piped" })
    .output();
  const t = await spawnTarget("sort", ["-S", "2M", `${s.dir}/in`, "-o", `${s.dir}/out`], { env });
  try {
    // Mid-way: it has sorted a first run into a temporary file and goes on.
    const spilled = () => [...Deno.readDirSync(s.dir)].some((e) => e.name.startsWith("sort"));
    await waitUntil(spilled, 10_000, "sort to write a temporary file");
    assert.ok(isAlive(t.pid), "sort ended before the dump");
    await dumpAndRestore(t.pid, s.img);
    await waitExit(t.pid);
    assert.equal(t.output(), "");
    assert.ok(ref.stdout.length > 0);
    assert.deepEqual(Deno.readFileSync(`${s.dir}/out`), ref.stdout);
  } finally {
    await t.kill();
  }
});

Deno.test({
  ...needs(
    "`xz -T2` (two compressing threads) dumped mid-way writes a stream that decompresses",
    notInstalled("xz"),
  ),
  async fn() {
    using s = scratch("tardigrade-ord-");
    const input = textLines(600_000);
    Deno.writeFileSync(`${s.dir}/in`, input);
    const t = await spawnTarget("sh", [
      "-c",
      `exec xz -T2 -2 --block-size=1MiB -c '${s.dir}/in' > '${s.dir}/in.xz'`,
    ]);
    try {
      await execed(t.pid, "xz");
      assert.equal(Deno.realPathSync(`/proc/${t.pid}/exe`), Deno.realPathSync(onPath("xz")!));
      // Mid-way: its compressing threads run and it has read part of the input.
      await waitUntil(
        () => threads(t.pid) >= 3 && readPosition(t.pid, `${s.dir}/in`) > 0,
        10_000,
        () => `xz to read with its threads (${threads(t.pid)} threads)`,
      );
      assert.ok(readPosition(t.pid, `${s.dir}/in`) < input.length, "xz read all its input");
      await dumpAndRestore(t.pid, s.img);
      await waitExit(t.pid);
      assert.equal(t.output(), "");
      const un = await new Deno.Command("xz", { args: ["-dc", `${s.dir}/in.xz`], stdout: "piped" })
        .output();
      assert.ok(un.success);
      assert.equal(un.stdout.length, input.length);
      assert.deepEqual(un.stdout, input);
    } finally {
      await t.kill();
    }
  },
});

Deno.test({
  ...needs(
    "`sqlite3` dumped mid-insert (WAL: shared -shm mapping, POSIX locks) commits it all",
    notInstalled("sqlite3"),
  ),
  async fn() {
    using s = scratch("tardigrade-ord-");
    Deno.writeTextFileSync(
      `${s.dir}/q.sql`,
      `PRAGMA journal_mode=WAL;
CREATE TABLE t(x INTEGER, y TEXT);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM c WHERE i<600000)
  INSERT INTO t SELECT i, hex(randomblob(8)) FROM c;
CREATE INDEX ty ON t(y);
SELECT count(*), sum(x) FROM t;
`,
    );
    const t = await spawnTarget("sqlite3", ["t.db", ".read q.sql"], { cwd: s.dir });
    try {
      // Mid-insert: the transaction has begun writing pages to the write-ahead log.
      const wal = () => {
        try {
          return Deno.statSync(`${s.dir}/t.db-wal`).size;
        } catch {
          return 0;
        }
      };
      await waitUntil(() => wal() > 0, 10_000, "sqlite3 to write its WAL");
      assert.ok(isAlive(t.pid), "sqlite3 ended before the dump");
      await dumpAndRestore(t.pid, s.img);
      await waitExit(t.pid);
      assert.equal(t.output(), "wal\n600000|180000300000\n");
      const check = await new Deno.Command("sqlite3", {
        args: [`${s.dir}/t.db`, "PRAGMA integrity_check; SELECT count(*) FROM t;"],
        stdout: "piped",
      }).output();
      assert.equal(new TextDecoder().decode(check.stdout), "ok\n600000\n");
    } finally {
      await t.kill();
    }
  },
});

Deno.test(
  needs("a UNIX socketpair half whose peer was closed comes back at EOF, writes failing", python3),
  async () => {
    using s = scratch("tardigrade-ord-");
    Deno.writeTextFileSync(
      `${s.dir}/sp.py`,
      `import socket, signal, time
a, b = socket.socketpair()
b.close()
# The same, with what the closed peer sent still to be read.
c, d = socket.socketpair()
d.sendall(b"last words")
d.close()
def check(*_):
    for name, sock in ("a", a), ("c", c):
        got = sock.recv(100), sock.recv(100)
        try:
            sock.send(b"x")
            w = "sent"
        except BrokenPipeError:
            w = "EPIPE"
        print(name, "recv", *got, w, flush=True)
signal.signal(signal.SIGUSR1, check)
print("ready", flush=True)
while True:
    time.sleep(1)
`,
    );
    const t = await spawnTarget("python3", ["sp.py"], { cwd: s.dir, ready: /^ready$/m });
    try {
      await dumpAndRestore(t.pid, s.img);
      Deno.kill(t.pid, "SIGUSR1");
      await t.waitFor(/^c recv b'last words' b'' EPIPE$/m);
      assert.match(t.output(), /^a recv b'' b'' EPIPE$/m);
    } finally {
      await t.kill();
    }
  },
);
