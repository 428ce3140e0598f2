/**
 * Real programs of the sweep (README "Real programs checked") that the other test files do not
 * cover: each dumped while it works, restored, and checked as its user would.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  childrenOf,
  isAlive,
  killAndReap,
  needs,
  notInstalled,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

function scratch(): { dir: string; img: string; [Symbol.dispose](): void } {
  const dir = Deno.makeTempDirSync({ prefix: "tardigrade-real-" });
  return {
    dir,
    img: `${dir}/img`,
    [Symbol.dispose]: () => Deno.removeSync(dir, { recursive: true }),
  };
}

/** Dumps `pid` (which ends it) and restores it: the same pid runs again. */
async function dumpAndRestore(pid: number, img: string): Promise<void> {
  await checkpoint(pid, img);
  await killAndReap(pid);
  const r = await restore(img);
  assert.equal(r.pid, pid);
  assert.ok(isAlive(pid));
}

/** Kills `t` and the children it has. */
async function killTree(t: Target): Promise<void> {
  const kids = isAlive(t.pid) ? childrenOf(t.pid) : [];
  await t.kill();
  for (const k of kids) await killAndReap(k);
}

/** The lines `t` printed. */
function lines(t: Target): string[] {
  return t.output().split("\n").filter((l) => l !== "");
}

Deno.test(
  needs(
    "python3 multiprocessing pool (semaphores and a Value in deleted /dev/shm files, pipes) goes on",
    notInstalled("python3"),
  ),
  async () => {
    using s = scratch();
    // Its arena is opened O_NOFOLLOW and unlinked; its workers map the parent's semaphores.
    Deno.writeTextFileSync(
      `${s.dir}/mp.py`,
      `import multiprocessing as mp, time, itertools
def sq(x):
    time.sleep(0.02); return x * x
if __name__ == "__main__":
    lock = mp.Lock(); v = mp.Value("i", 0)
    with mp.Pool(2) as p:
        for i, r in enumerate(p.imap(sq, itertools.count())):
            with lock: v.value += 1
            print(i, r, v.value, flush=True)
`,
    );
    const t = await spawnTarget("python3", ["-u", `${s.dir}/mp.py`], { ready: /^5 25 6$/m });
    try {
      await dumpAndRestore(t.pid, s.img);
      const seen = lines(t).length;
      await waitUntil(() => lines(t).length > seen + 10, 10_000, "the pool to go on");
      lines(t).forEach((l, i) => assert.equal(l, `${i} ${i * i} ${i + 1}`));
    } finally {
      await killTree(t);
    }
  },
);

Deno.test("a zombie is refused as one, naming the parent to dump", async () => {
  using s = scratch();
  const t = await spawnTarget("sh", ["-c", "sleep 0.1 & exec sleep 100"]);
  try {
    let zombie = 0;
    await waitUntil(
      () => {
        zombie = childrenOf(t.pid)[0] ?? 0;
        const stat = zombie ? Deno.readTextFileSync(`/proc/${zombie}/stat`) : "";
        return stat[stat.lastIndexOf(")") + 2] === "Z";
      },
      5000,
      "the zombie child",
    );
    await assert.rejects(
      () => checkpoint(zombie, s.img),
      new RegExp(`process ${zombie} \\(sleep\\) has exited \\(a zombie\\).*parent ${t.pid}`),
    );
    assert.ok(isAlive(t.pid));
  } finally {
    await t.kill();
  }
});

Deno.test({
  ...needs(
    "`sqlite3` holding an exclusive transaction keeps its lock and commits",
    notInstalled("sqlite3"),
  ),
  async fn() {
    using s = scratch();
    const db = `${s.dir}/t.db`;
    const sql = (...args: string[]) =>
      new Deno.Command("sqlite3", { args: [db, ...args], stdout: "piped", stderr: "piped" })
        .output();
    await sql("CREATE TABLE t(x)");
    // The transaction is open while `.shell` runs its sleep: sqlite3 waits in waitpid.
    const t = await spawnTarget("sqlite3", [
      db,
      "BEGIN EXCLUSIVE",
      "INSERT INTO t VALUES(1)",
      ".shell sleep 4 && echo slept",
      "INSERT INTO t VALUES(2)",
      "COMMIT",
      "SELECT count(*) FROM t",
    ]);
    const locked = async () => {
      const r = await sql("SELECT count(*) FROM t");
      return new TextDecoder().decode(r.stderr).includes("database is locked");
    };
    try {
      await waitUntil(() => childrenOf(t.pid).length > 0, 5000, "the .shell child");
      assert.ok(await locked(), "locked before the dump");
      await dumpAndRestore(t.pid, s.img);
      assert.ok(await locked(), "the restored sqlite3 holds its lock");
      await t.waitFor(/^2$/m, 10_000);
      const after = new TextDecoder().decode((await sql("SELECT group_concat(x) FROM t")).stdout);
      assert.equal(after.trim(), "1,2");
    } finally {
      await killTree(t);
    }
  },
});

Deno.test({
  ...needs("`socat` relays a live TCP connection after a restore", notInstalled("socat")),
  async fn() {
    using s = scratch();
    // An upper-casing echo server (this process) behind socat; the client is this process too.
    const backend = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const serving = (async () => {
      for await (const c of backend) {
        (async () => {
          const buf = new Uint8Array(100);
          for (;;) {
            const n = await c.read(buf).catch(() => null);
            if (!n) break;
            await c.write(
              new TextEncoder().encode(new TextDecoder().decode(buf.subarray(0, n)).toUpperCase()),
            );
          }
          c.close();
        })();
      }
    })();
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const t = await spawnTarget("socat", [
      `TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork`,
      `TCP:127.0.0.1:${(backend.addr as Deno.NetAddr).port}`,
    ]);
    let conn: Deno.TcpConn | undefined;
    const ask = async (text: string) => {
      await conn!.write(new TextEncoder().encode(text));
      const buf = new Uint8Array(100);
      const n = await conn!.read(buf);
      return new TextDecoder().decode(buf.subarray(0, n ?? 0));
    };
    try {
      await waitUntil(
        async () => {
          conn = await Deno.connect({ hostname: "127.0.0.1", port }).catch(() => undefined);
          return conn !== undefined;
        },
        5000,
        "socat to listen",
      );
      assert.equal(await ask("one"), "ONE");
      await dumpAndRestore(t.pid, `${s.img}`);
      assert.equal(await ask("two"), "TWO");
    } finally {
      conn?.close();
      await killTree(t);
      backend.close();
      await serving.catch(() => {});
    }
  },
});

Deno.test({
  ...needs("`inotifywait -m` reports the events after a restore", notInstalled("inotifywait")),
  async fn() {
    using s = scratch();
    const watched = `${s.dir}/w`;
    Deno.mkdirSync(watched);
    const t = await spawnTarget("inotifywait", ["-m", "-e", "create,modify", watched], {
      ready: /Watches established/,
    });
    try {
      Deno.writeTextFileSync(`${watched}/a`, "");
      await t.waitFor(/CREATE a$/m);
      await dumpAndRestore(t.pid, s.img);
      Deno.writeTextFileSync(`${watched}/b`, "");
      Deno.writeTextFileSync(`${watched}/a`, "x", { append: true });
      await t.waitFor(/CREATE b\n.*MODIFY a$/m);
    } finally {
      await t.kill();
    }
  },
});

Deno.test({
  ...needs(
    "`python3 -m http.server` answers a request half sent before the dump",
    notInstalled("python3"),
  ),
  async fn() {
    using s = scratch();
    Deno.writeTextFileSync(`${s.dir}/index.txt`, "hello-body\n");
    const probe = Deno.listen({ hostname: "127.0.0.1", port: 0 });
    const port = (probe.addr as Deno.NetAddr).port;
    probe.close();
    const t = await spawnTarget(
      "python3",
      ["-m", "http.server", `${port}`, "--bind", "127.0.0.1"],
      {
        cwd: s.dir,
        ready: /Serving HTTP/,
      },
    );
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port });
      await conn.write(new TextEncoder().encode("GET /index.txt HTTP/1.0\r\n"));
      // Read by the server or still queued in its socket: either way the rest completes it.
      await new Promise((r) => setTimeout(r, 200));
      await dumpAndRestore(t.pid, s.img);
      await conn.write(new TextEncoder().encode("\r\n"));
      let got = "";
      const buf = new Uint8Array(4096);
      for (;;) {
        const n = await conn.read(buf);
        if (n === null) break;
        got += new TextDecoder().decode(buf.subarray(0, n));
      }
      assert.match(got, /^HTTP\/1\.0 200 OK/);
      assert.ok(got.endsWith("hello-body\n"), got);
    } finally {
      conn?.close();
      await t.kill();
    }
  },
});
