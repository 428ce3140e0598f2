/**
 * SO_REUSEPORT groups (lib/files/socket/reuseport.ts, tcp_pending.ts) with real programs: nginx
 * with `listen … reuseport` (a socket per worker, all held by the master and every worker) and
 * python `socketserver`s with `allow_reuse_port` in two processes of a dump come back one group,
 * every worker serving; a server whose group has a member outside the dump comes back into that group; the
 * listeners whose waiting connections cannot be told apart are refused, naming what, and left as
 * they were. (tests/fixtures/r_reuseport.c proves the options, the UDP group and a member's
 * queue.)
 */
import assert from "node:assert/strict";
import { checkpoint, DumpError, restore, RestoreError } from "../mod.ts";
import { acceptQueues } from "../lib/files/socket/accept_queues.ts";
import {
  isAlive,
  needs,
  notInstalled,
  onPath,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const python3 = notInstalled("python3");
/** Why the kernel's accept queues cannot be read here (accept_queues.ts), or undefined. */
const bpfIterator = (() => {
  const q = acceptQueues();
  return typeof q === "string" ? `no BPF iterator: ${q}` : undefined;
})();

/**
 * argv[1] mode, argv[2] port (0: a new one). "tree": a socketserver (allow_reuse_port) and a child
 * with one of its own on the same port; a check connects 32 times and passes when both answered
 * (each writes its pid). "member": one such server. "busy": two listeners of one group that never
 * accept, with 16 clients of their own connected at once (so both queues hold some, many within
 * one clock tick); a check accepts them all and prints, after PASS, a line "QUEUES" with each
 * listener's fd and the ports of the clients it gave, in order. "waiting": one listener of a
 * group with a client of its own waiting; a check accepts it. "program": two listeners of a group
 * whose BPF program (SO_ATTACH_REUSEPORT_CBPF) sends every connection to the first; a check
 * connects 8 clients and passes when the first listener has them all. "udp-program": the same with
 * two UDP sockets and 8 datagrams.
 */
const SERVERS_PY = `import ctypes, os, signal, socket, socketserver, struct, sys, threading, time
mode, port = sys.argv[1], int(sys.argv[2])
class Who(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(f"{os.getpid()}\\n".encode())
class Server(socketserver.ThreadingTCPServer):
    allow_reuse_port = True
    daemon_threads = True
def listener():
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    s.bind(("127.0.0.1", port))
    s.listen(64)
    return s
child = 0
if mode in ("tree", "member"):
    server = Server(("127.0.0.1", port), Who)
    port = server.server_address[1]
    if mode == "tree":
        child = os.fork()
        if child == 0:
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGUSR1])
            server = Server(("127.0.0.1", port), Who)
    threading.Thread(target=server.serve_forever, daemon=True).start()
else:
    listeners = [listener()]
    port = listeners[0].getsockname()[1]
    if mode == "udp-program":
        listeners = []
        for _ in range(2):
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            u.bind(("127.0.0.1", port))
            port = u.getsockname()[1]
            listeners.append(u)
    if mode in ("busy", "program"):
        listeners.append(listener())
    if mode in ("program", "udp-program"):
        class Filter(ctypes.Structure):
            _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]
        class Prog(ctypes.Structure):
            _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(Filter))]
        first = Filter(0x06, 0, 0, 0)  # ret #0: the first member
        listeners[0].setsockopt(socket.SOL_SOCKET, 51, bytes(Prog(1, ctypes.pointer(first))))
    clients = []
    for i in range({"busy": 16, "waiting": 1}.get(mode, 0)):
        clients.append(socket.create_connection(("127.0.0.1", port)))
def who():
    with socket.create_connection(("127.0.0.1", port)) as c:
        return int(c.makefile().readline())
def check(*_):
    if mode == "tree":
        seen = {who() for _ in range(32)}
        ok = seen == {os.getpid(), child}
    elif mode == "member":
        ok = who() > 0
    elif mode == "udp-program":
        for _ in range(8):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                u.sendto(b"d", ("127.0.0.1", port))
        time.sleep(0.05)
        seen = []
        for u in listeners:
            u.setblocking(False)
            n = 0
            try:
                while True:
                    u.recv(8)
                    n += 1
            except BlockingIOError:
                pass
            seen.append(n)
        ok = seen == [8, 0]
    elif mode == "program":
        fresh = [socket.create_connection(("127.0.0.1", port)) for _ in range(8)]
        time.sleep(0.05)
        seen = []
        for l in listeners:
            l.setblocking(False)
            n = 0
            try:
                while True:
                    l.accept()[0].close()
                    n += 1
            except BlockingIOError:
                pass
            seen.append(n)
        for c in fresh:
            c.close()
        ok = seen == [8, 0]
    else:
        for l in listeners:
            l.setblocking(False)
        taken, queues = 0, []
        for l in listeners:
            ports = []
            try:
                while True:
                    conn, peer = l.accept()
                    conn.close()
                    ports.append(str(peer[1]))
                    taken += 1
            except BlockingIOError:
                pass
            queues.append(f"{l.fileno()}:{','.join(ports)}")
        ok = taken == len(clients)
        seen = taken
    print("PASS" if ok else f"FAIL {seen}", flush=True)
    if mode == "busy":
        print("QUEUES", " ".join(queues), flush=True)
if child or mode != "tree":
    signal.signal(signal.SIGUSR1, check)
    print("READY", os.getpid(), f"port={port}", f"child={child}", flush=True)
    while True:
        time.sleep(1)
else:
    while True:
        time.sleep(1)
`;

async function startServers(dir: string, mode: string, port = 0): Promise<Target> {
  return await spawnTarget("python3", [`${dir}/s.py`, mode, String(port)], {
    ready: /^READY \d+ port=\d+ child=\d+$/m,
  });
}

const portOf = (t: Target) => Number(t.output().match(/port=(\d+)/)![1]);

/** The pids that answer `n` connections to `port` (each server writes its pid). */
async function whoAnswers(port: number, n: number): Promise<Set<number>> {
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    const buf = new Uint8Array(32);
    let text = "";
    for (;;) {
      const got = await conn.read(buf);
      if (got === null) break;
      text += new TextDecoder().decode(buf.subarray(0, got));
    }
    conn.close();
    seen.add(Number(text.trim()));
  }
  return seen;
}

async function withServers(body: (dir: string) => Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-reuseport-" });
  try {
    await Deno.writeTextFile(`${dir}/s.py`, SERVERS_PY);
    await body(dir);
  } finally {
    await Deno.remove(dir, { recursive: true }).catch(() => {});
  }
}

Deno.test(
  needs(
    "reuseport: two socketservers sharing a port (a process and its child) serve again",
    python3,
  ),
  () =>
    withServers(async (dir) => {
      const t = await startServers(dir, "tree");
      try {
        assert.equal(await t.check(), "PASS", t.output());
        await checkpoint(t.pid, `${dir}/img`);
        const r = await restore(`${dir}/img`);
        assert.equal(r.pid, t.pid);
        // Both processes take connections again: the group is whole.
        assert.equal(await t.check(), "PASS", t.output());
        const child = Number(t.output().match(/child=(\d+)/)![1]);
        assert.deepEqual(await whoAnswers(portOf(t), 32), new Set([t.pid, child]));
      } finally {
        await t.kill();
        await Deno.remove(t.outPath).catch(() => {});
      }
    }),
);

Deno.test(
  needs("reuseport: a server whose group has a member outside the dump joins it again", python3),
  () =>
    withServers(async (dir) => {
      const t = await startServers(dir, "member");
      const outside = await startServers(dir, "member", portOf(t));
      try {
        assert.deepEqual(await whoAnswers(portOf(t), 32), new Set([t.pid, outside.pid]));
        await checkpoint(t.pid, `${dir}/img`);
        // Meanwhile the member outside takes every connection.
        assert.deepEqual(await whoAnswers(portOf(t), 8), new Set([outside.pid]));
        await restore(`${dir}/img`);
        assert.deepEqual(await whoAnswers(portOf(t), 32), new Set([t.pid, outside.pid]));
      } finally {
        await t.kill();
        await outside.kill();
        await Deno.remove(t.outPath).catch(() => {});
        await Deno.remove(outside.outPath).catch(() => {});
      }
    }),
);

/** Each listener's queue of process `pid` as the kernel holds it: "fd:port,port" by fd. */
function kernelQueuesOf(pid: number): string {
  const queues = acceptQueues();
  if (typeof queues === "string") throw new Error(queues);
  const out: string[] = [];
  for (const e of Deno.readDirSync(`/proc/${pid}/fd`)) {
    const inode = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`).match(/^socket:\[(\d+)\]$/)?.[1];
    const q = inode && queues.get(BigInt(inode));
    if (q) out.push(`${e.name}:${q.peers.map((p) => p.port).join(",")}`);
  }
  return out.sort().join(" ");
}

Deno.test(
  needs(
    "reuseport: listeners of one group that both have connections waiting, many within one clock tick, get them back in their own queues in order",
    python3 ?? bpfIterator,
  ),
  () =>
    withServers(async (dir) => {
      const t = await startServers(dir, "busy");
      try {
        const before = kernelQueuesOf(t.pid);
        assert.match(before, /^\d+:\d+(,\d+)* \d+:\d+(,\d+)*$/, `both queues hold some: ${before}`);
        await checkpoint(t.pid, `${dir}/img`);
        await restore(`${dir}/img`);
        assert.equal(kernelQueuesOf(t.pid), before);
        assert.equal(await t.check(), "PASS", t.output());
        const accepted = t.output().match(/^QUEUES (.*)$/m)![1];
        assert.equal(accepted.split(" ").sort().join(" "), before);
      } finally {
        await t.kill();
        await Deno.remove(t.outPath).catch(() => {});
      }
    }),
);

// The program still steers every connection (datagram) to the first member: the check says so.
for (
  const [what, mode, refusal] of [
    [
      "a group",
      "program",
      /^fd \d+ of process \d+: IPv4 TCP socket .*listening on 127\.0\.0\.1:\d+ whose SO_REUSEPORT group has a BPF program choosing which member gets a connection \(SO_ATTACH_REUSEPORT_CBPF\/EBPF\), which cannot be read back/,
    ],
    [
      "a UDP group",
      "udp-program",
      /^fd \d+ of process \d+: IPv4 UDP socket .*127\.0\.0\.1:\d+ whose SO_REUSEPORT group has a BPF program choosing which member gets a datagram/,
    ],
  ] as const
) {
  Deno.test(
    needs(
      `reuseport: ${what} with a BPF program choosing its member is refused, and left as it was`,
      python3 ?? bpfIterator,
    ),
    () =>
      withServers(async (dir) => {
        const t = await startServers(dir, mode);
        try {
          await assert.rejects(checkpoint(t.pid, `${dir}/img`), (err: Error) => {
            assert.ok(err instanceof DumpError, String(err));
            assert.match(err.message, refusal);
            return true;
          });
          assert.equal(await t.check(), "PASS", t.output());
        } finally {
          await t.kill();
          await Deno.remove(t.outPath).catch(() => {});
        }
      }),
  );
}

Deno.test(
  needs(
    "reuseport: a listener with a connection waiting, in a group with a member outside the dump, is refused naming its holder",
    python3,
  ),
  () =>
    withServers(async (dir) => {
      const t = await startServers(dir, "waiting");
      const outside = await startServers(dir, "member", portOf(t));
      try {
        await assert.rejects(checkpoint(t.pid, `${dir}/img`), (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(
            err.message,
            new RegExp(
              `in a SO_REUSEPORT group with socket:\\[\\d+\\], held by python3 ${outside.pid} ` +
                `\\(fd \\d+\\) outside the dump: the restore could not steer`,
            ),
          );
          return true;
        });
        assert.equal(await t.check(), "PASS", t.output());
      } finally {
        await t.kill();
        await outside.kill();
        await Deno.remove(t.outPath).catch(() => {});
        await Deno.remove(outside.outPath).catch(() => {});
      }
    }),
);

Deno.test(
  needs(
    "reuseport: a restore whose waiting connection would go to a member outside the image fails and says why",
    python3,
  ),
  () =>
    withServers(async (dir) => {
      const t = await startServers(dir, "waiting");
      let outside: Target | undefined;
      try {
        await checkpoint(t.pid, `${dir}/img`);
        // A server outside the image joins the port's group first: the restored listener is
        // not where the restore steers its client.
        outside = await startServers(dir, "member", portOf(t));
        await assert.rejects(restore(`${dir}/img`), (err: Error) => {
          assert.ok(err instanceof RestoreError, String(err));
          assert.match(
            err.message,
            /1 client\(s\) connected again but 0 wait in its queue: the others went to another socket of its SO_REUSEPORT group/,
          );
          return true;
        });
        assert.ok(!t.alive(), "a half-restored process was left behind");
      } finally {
        await t.kill();
        await outside?.kill();
        await Deno.remove(t.outPath).catch(() => {});
        if (outside) await Deno.remove(outside.outPath).catch(() => {});
      }
    }),
);

function childrenOf(pid: number): number[] {
  try {
    return Deno.readTextFileSync(`/proc/${pid}/task/${pid}/children`).trim().split(/\s+/)
      .filter(Boolean).map(Number).sort();
  } catch {
    return [];
  }
}

/** The pids of the nginx workers that answer `n` requests, each on a connection of its own. */
async function nginxWorkers(port: number, n: number): Promise<Set<number>> {
  const seen = new Set<number>();
  for (let i = 0; i < n; i++) {
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    await conn.write(new TextEncoder().encode("GET / HTTP/1.0\r\n\r\n"));
    let text = "";
    const buf = new Uint8Array(512);
    for (;;) {
      const got = await conn.read(buf);
      if (got === null) break;
      text += new TextDecoder().decode(buf.subarray(0, got));
    }
    conn.close();
    seen.add(Number(text.match(/hello (\d+)/)?.[1]));
  }
  return seen;
}

Deno.test(
  needs(
    "reuseport: nginx with a reuseport listener per worker serves from every worker again",
    notInstalled("nginx"),
  ),
  async () => {
    const dir = Deno.makeTempDirSync({ prefix: "tardigrade-nginx-" });
    const p = 20000 + Math.floor(Math.random() * 20000);
    Deno.writeTextFileSync(
      `${dir}/nginx.conf`,
      `daemon off;
worker_processes 2;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log notice;
events { worker_connections 64; }
http {
  access_log off;
  server { listen 127.0.0.1:${p} reuseport; location / { return 200 "hello $pid\\n"; } }
}
`,
    );
    const nginx = await spawnTarget(onPath("nginx")!, ["-c", `${dir}/nginx.conf`, "-p", dir]);
    try {
      await waitUntil(() => childrenOf(nginx.pid).length === 2, 5000, "two workers");
      const workers = childrenOf(nginx.pid);
      const answering = async () => (await nginxWorkers(p, 32).catch(() => new Set())).size === 2;
      await waitUntil(answering, 5000, "both workers to answer");
      await checkpoint(nginx.pid, `${dir}/image`);
      assert.ok(!isAlive(nginx.pid));
      const r = await restore(`${dir}/image`);
      assert.equal(r.pid, nginx.pid);
      assert.deepEqual(childrenOf(nginx.pid), workers);
      // Each worker's socket is in the group again: connections reach both.
      assert.deepEqual(await nginxWorkers(p, 32), new Set(workers));
      Deno.kill(nginx.pid, "SIGQUIT");
      await waitUntil(() => !isAlive(nginx.pid), 5000, "nginx to quit");
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
);
