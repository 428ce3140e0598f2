/**
 * Servers people run, through a dump and a restore: nginx (a master and its workers talking over
 * socketpairs) and Redis (with a client connection held open across the dump). Each is ignored,
 * with the reason, where it is not installed (.ci/run installs them when it can).
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import { isAlive, needs, notInstalled, onPath, spawnTarget, waitUntil } from "./helpers.ts";

function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number).sort();
  } catch {
    return [];
  }
}

const port = () => 20000 + Math.floor(Math.random() * 20000);

Deno.test({
  ...needs(
    "nginx: master and workers restore, serve, reload their workers and quit",
    notInstalled("nginx"),
  ),
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "tardigrade-nginx-" });
    const p = port();
    Deno.writeTextFileSync(
      `${dir}/nginx.conf`,
      `daemon off;
worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  server { listen 127.0.0.1:${p}; location / { return 200 "hello $pid\\n"; } }
}
`,
    );
    const get = async () => (await (await fetch(`http://127.0.0.1:${p}/`)).text()).trim();
    const nginx = await spawnTarget(onPath("nginx")!, ["-c", `${dir}/nginx.conf`, "-p", dir]);
    try {
      await waitUntil(() => childrenOf(nginx.pid).length === 2, 5000, "two workers");
      await waitUntil(() => get().then(() => true, () => false), 5000, "nginx to answer");
      const workers = childrenOf(nginx.pid);
      await checkpoint(nginx.pid, `${dir}/image`);
      assert.ok(!isAlive(nginx.pid));
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, nginx.pid);
      assert.deepEqual(childrenOf(nginx.pid), workers);
      assert.match(await get(), /^hello \d+$/);
      // A reload: the master opens new workers and tells the old ones, over their socketpairs,
      // to finish.
      Deno.kill(nginx.pid, "SIGHUP");
      await waitUntil(
        () => {
          const now = childrenOf(nginx.pid);
          return now.length === 2 && now.every((w) => !workers.includes(w));
        },
        5000,
        "new workers",
      );
      assert.match(await get(), /^hello \d+$/);
      Deno.kill(nginx.pid, "SIGQUIT");
      await waitUntil(() => !isAlive(nginx.pid), 5000, "nginx to quit");
      assert.match(Deno.readTextFileSync(`${dir}/error.log`), /exit/);
    } finally {
      for (const pid of [nginx.pid, ...childrenOf(nginx.pid)]) {
        try {
          Deno.kill(pid, "SIGKILL");
        } catch { /* gone */ }
      }
      await nginx.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});

/** One RESP request on a connection, and the reply read up to its end (short replies only). */
async function redis(conn: Deno.TcpConn, ...args: string[]): Promise<string> {
  const req = `*${args.length}\r\n` + args.map((a) => `$${a.length}\r\n${a}\r\n`).join("");
  await conn.write(new TextEncoder().encode(req));
  const buf = new Uint8Array(4096);
  const n = await conn.read(buf);
  if (n === null) throw new Error("redis closed the connection");
  return new TextDecoder().decode(buf.subarray(0, n));
}

Deno.test({
  ...needs(
    "redis: a client's open connection survives the server's dump and restore",
    notInstalled("redis-server"),
  ),
  async fn() {
    const dir = Deno.makeTempDirSync({ prefix: "tardigrade-redis-" });
    const p = port();
    const server = await spawnTarget(onPath("redis-server")!, [
      "--port",
      String(p),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
    ], { ready: /Ready to accept connections/ });
    let conn: Deno.TcpConn | undefined;
    try {
      conn = await Deno.connect({ hostname: "127.0.0.1", port: p });
      assert.equal(await redis(conn, "SET", "greeting", "hello"), "+OK\r\n");
      await checkpoint(server.pid, `${dir}/image`);
      assert.ok(!isAlive(server.pid));
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, server.pid);
      // The same connection: the server's end came back with its sequence numbers.
      assert.equal(await redis(conn, "GET", "greeting"), "$5\r\nhello\r\n");
      assert.equal(await redis(conn, "INCR", "n"), ":1\r\n");
      const fresh = await Deno.connect({ hostname: "127.0.0.1", port: p });
      assert.equal(await redis(fresh, "INCR", "n"), ":2\r\n");
      fresh.close();
    } finally {
      conn?.close();
      await server.kill();
      Deno.removeSync(dir, { recursive: true });
    }
  },
});
