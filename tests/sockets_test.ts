/**
 * Sockets (lib/files/socket.ts): listening TCP/TCP6/UNIX and bound UDP/UNIX datagram sockets come
 * back at the same addresses with their options and keep serving; connected ones are refused at
 * dump with a message naming the fd.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { checkpoint, restore } from "../mod.ts";
import { DumpError, RestoreError } from "../lib/errors.ts";
import { ImageReader } from "../lib/image/mod.ts";
import type { SocketEntry } from "../lib/files/socket.ts";
import type { ProcessEntry } from "../lib/schema.ts";
import { fixture, spawnTarget, type Target } from "./helpers.ts";

async function start(name: string): Promise<Target> {
  const t = await spawnTarget(await fixture(name), [], { ready: /^(READY|SETUP FAILED) /m });
  assert.match(t.output(), /^READY /m, `${name} setup failed:\n${t.output()}`);
  return t;
}

function ready(t: Target): Record<string, string> {
  const line = t.output().match(/^READY .*$/m)![0];
  return Object.fromEntries([...line.matchAll(/(\w+)=(\S+)/g)].map((m) => [m[1], m[2]]));
}

async function cleanup(t: Target, ...dirs: string[]): Promise<void> {
  await t.kill();
  const tmp = ready(t).tmp;
  for (const d of [...dirs, ...(tmp ? [tmp] : [])]) {
    await Deno.remove(d, { recursive: true }).catch(() => {});
  }
  await Deno.remove(t.outPath).catch(() => {});
}

async function readAll(conn: Deno.Conn): Promise<string> {
  const chunks: Uint8Array[] = [];
  const buf = new Uint8Array(64);
  for (;;) {
    const n = await conn.read(buf);
    if (n === null) break;
    chunks.push(buf.slice(0, n));
  }
  conn.close();
  return new TextDecoder().decode(new Uint8Array(chunks.flatMap((c) => [...c])));
}

function udpAsk(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = dgram.createSocket("udp4");
    const timer = setTimeout(() => {
      s.close();
      reject(new Error("no UDP answer within 5 s"));
    }, 5000);
    s.on("message", (m) => {
      clearTimeout(timer);
      s.close();
      resolve(m.toString());
    });
    s.send("ping", port, "127.0.0.1");
  });
}

async function sockets(dir: string): Promise<SocketEntry[]> {
  using image = await ImageReader.open(dir);
  const p = await image.readMeta<ProcessEntry>("process");
  return p.files.filter((f) => f.kind === "socket") as SocketEntry[];
}

Deno.test("sockets: a server's listening and bound sockets are restored and keep serving", async () => {
  const t = await start("r_listen");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
  try {
    const r0 = ready(t);
    assert.equal(await t.check(), "PASS", t.output());
    await checkpoint(t.pid, { dir: `${base}/img` });

    const entries = await sockets(`${base}/img`);
    const byDesc = entries.map((e) => e.description);
    const tcp = entries.find((e) => e.description.startsWith("IPv4 TCP 127.0.0.1:"))!;
    assert.ok(tcp, byDesc.join("\n"));
    assert.equal(tcp.state, "listening");
    assert.equal(tcp.backlog, 7);
    assert.equal(tcp.backlogSource, "tcp_info");
    assert.deepEqual(
      tcp.options.map((o) => o.name).sort(),
      ["SO_KEEPALIVE", "SO_RCVBUF", "SO_REUSEADDR", "TCP_NODELAY"],
    );
    const unixListener = entries.find((e) => e.description === `UNIX stream ${r0.unix} listening`);
    assert.ok(unixListener, byDesc.join("\n"));
    assert.equal(unixListener.backlog, 5);
    assert.equal(unixListener.backlogSource, "sock_diag");
    assert.ok(byDesc.includes(`IPv4 UDP 127.0.0.1:${r0.udp} unconnected`), byDesc.join("\n"));
    assert.ok(byDesc.includes("UNIX stream rel.sock listening"), byDesc.join("\n"));
    assert.ok(byDesc.includes(`UNIX datagram @tg-listen-${t.pid} unconnected`), byDesc.join("\n"));
    // The dumped process's socket file is still there: the restore must replace it.
    assert.ok(Deno.lstatSync(r0.unix).isSocket);

    const r = await restore(`${base}/img`);
    assert.equal(r.pid, t.pid, "restored with another pid");

    const tcpConn = await Deno.connect({ hostname: "127.0.0.1", port: Number(r0.tcp) });
    assert.equal(await readAll(tcpConn), "hello\n");
    if (r0.tcp6 !== "0") {
      const conn6 = await Deno.connect({ hostname: "::1", port: Number(r0.tcp6) });
      assert.equal(await readAll(conn6), "hello\n");
    }
    const unixConn = await Deno.connect({ transport: "unix", path: r0.unix });
    assert.equal(await readAll(unixConn), "hello\n");
    const relConn = await Deno.connect({ transport: "unix", path: r0.rel });
    assert.equal(await readAll(relConn), "hello\n");
    assert.equal(await udpAsk(Number(r0.udp)), "hello\n");

    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("sockets: a restore is refused while the address is still in use", async () => {
  const t = await start("r_listen");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
  try {
    const { tcp } = ready(t);
    await checkpoint(t.pid, { dir: `${base}/img`, leaveRunning: true });
    await assert.rejects(
      restore(`${base}/img`),
      (err: Error) =>
        err instanceof RestoreError && err.message.includes(`127.0.0.1:${tcp} is in use`),
    );
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await cleanup(t, base);
  }
});

Deno.test("sockets: a connected socketpair is refused at dump, naming the fd", async () => {
  const t = await start("r_socketpair");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
  try {
    await assert.rejects(
      checkpoint(t.pid, { dir: `${base}/img`, leaveRunning: true }),
      (err: Error) => {
        assert.ok(err instanceof DumpError, String(err));
        assert.match(err.message, /^fd 3 of process \d+: UNIX stream socket /);
        assert.match(err.message, /connected to an unnamed peer/);
        assert.match(err.message, /a policy can skip it/);
        return true;
      },
    );
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await cleanup(t, base);
  }
});
