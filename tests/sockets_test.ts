/**
 * Sockets (lib/files/socket.ts): listening TCP/TCP6/UNIX and bound UDP/UNIX datagram sockets come
 * back at the same addresses with their options and keep serving; socketpairs between processes of
 * the dump come back connected with their queues (lib/files/unix_pair.ts); a UNIX connection to a
 * process outside the dump, and queues the tool cannot keep, are refused at dump naming the fd.
 */
import assert from "node:assert/strict";
import dgram from "node:dgram";
import { checkpoint, DumpError, ImageReader, restore, RestoreError } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import type { SocketEntry } from "../lib/files/socket/standalone.ts";
import type { UnixPairEntry } from "../lib/files/socket/unix_pair.ts";
import type { UnixPendingEntry } from "../lib/files/socket/unix_pending.ts";
import { fixture, needs, notInstalled, spawnTarget, type Target } from "./helpers.ts";
import { close, pidfdGetfd, pidfdOpen } from "../ffi/mod.ts";
import { freeze } from "../mod.ts";
import { changedOptions, toolSocketOptions } from "../lib/files/socket/options.ts";
import { TargetSocket } from "../lib/files/socket/target_socket.ts";

const python3 = notInstalled("python3");

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
    await checkpoint(t.pid, `${base}/img`);

    const entries = await sockets(`${base}/img`);
    const byDesc = entries.map((e) => e.description);
    const tcp = entries.find((e) => e.description.startsWith("IPv4 TCP 127.0.0.1:"))!;
    assert.ok(tcp, byDesc.join("\n"));
    assert.equal(tcp.state, "listening");
    assert.equal(tcp.backlog, 7);
    assert.equal(tcp.backlogSource, "tcp_info");
    assert.deepEqual(
      tcp.options.map((o) => o.name).sort(),
      ["SO_BUF_LOCK", "SO_KEEPALIVE", "SO_RCVBUF", "SO_REUSEADDR", "TCP_NODELAY"],
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
    await checkpoint(t.pid, `${base}/img`, { leaveRunning: true });
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

Deno.test("sockets: a UNIX stream connected to a listener outside the dump is refused, naming the fd", async () => {
  const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
  const listener = Deno.listen({ transport: "unix", path: `${base}/outside.sock` });
  const t = await spawnTarget(await fixture("unix_client"), [`${base}/outside.sock`], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  let conn: Deno.Conn | undefined;
  const refused = (where: RegExp) => (err: Error) => {
    assert.ok(err instanceof DumpError, String(err));
    assert.match(err.message, /^fd 3 of process \d+: UNIX stream socket /);
    assert.match(err.message, where);
    assert.match(err.message, /a policy can skip it/);
    return true;
  };
  try {
    assert.match(t.output(), /^READY /m, t.output());
    // Not accepted yet: the other end waits in the listener's queue, held by no process.
    await assert.rejects(
      checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
      refused(/not yet accepted, waits in the queue of a listener outside the dump \(held by /),
    );
    conn = await listener.accept();
    await assert.rejects(
      checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
      refused(/outside the dump: no process of this dump holds that end/),
    );
    // Left running as it was: the connection still carries its messages.
    assert.equal(await t.check(), "PASS", t.output());
    const buf = new Uint8Array(64);
    const n = await conn.read(buf);
    assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "ping 1\n");
  } finally {
    conn?.close();
    listener.close();
    await cleanup(t, base);
  }
});

Deno.test("sockets: a parent and child talking over socketpairs come back as a tree, queues and all", async () => {
  const t = await start("r_socketpair_tree");
  const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
  const child = Number(t.output().match(/^READY \d+ child (\d+)/m)![1]);
  try {
    assert.equal(await t.check(), "PASS", t.output());
    const r = await checkpoint(t.pid, `${base}/img`);
    assert.deepEqual(r.processes, [t.pid, child]);

    using image = await ImageReader.open(`${base}/img`);
    const ends: Record<number, UnixPairEntry[]> = {};
    for (const [pid, meta] of [[t.pid, "process"], [child, `process-${child}`]] as const) {
      const p = await image.readMeta<ProcessEntry>(meta);
      ends[pid] = p.files.filter((f) => f.kind === "unix-pair") as UnixPairEntry[];
    }
    const queues = (pid: number) => ends[pid].map((e) => e.queue.map((m) => m.length));
    assert.deepEqual(queues(t.pid), [[7000], [], [10, 0, 4000], [10]]);
    assert.deepEqual(queues(child), [[5000], [1, 0, 500, 2000], [], []]);
    // Each end names the other, across the two processes.
    for (const [i, e] of ends[t.pid].entries()) {
      assert.equal(e.peer, ends[child][i].inode);
      assert.equal(ends[child][i].peer, e.inode);
    }
    assert.deepEqual(ends[t.pid].map((e) => e.shutdown), [0, 0, 0, 1]);
    assert.deepEqual(ends[child].map((e) => e.shutdown), [0, 0, 0, 2]);

    const back = await restore(`${base}/img`);
    assert.deepEqual(back.processes, [t.pid, child]);
    // Twice: the second check reads what the first one queued through the restored pairs.
    assert.equal(await t.check(), "PASS", t.output());
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await cleanup(t, base); // the parent first: a killed child stays a zombie while it lives
    await t.kill(child);
  }
});

/** A server that accepted a connection from itself, with data queued both ways. */
const ACCEPTED_PY = `import os, signal, socket, sys, time
path = sys.argv[1]
srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
srv.bind(path)
srv.listen(4)
client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
client.connect(path)
conn, _ = srv.accept()
client.sendall(b"request" * 1000)
conn.sendall(b"reply")
def check(*_):
    got = conn.recv(100000, socket.MSG_DONTWAIT), client.recv(100, socket.MSG_DONTWAIT)
    ok = got == (b"request" * 1000, b"reply")
    client.sendall(b"request" * 1000)
    conn.sendall(b"reply")
    print("names", conn.getsockname() or "-", client.getpeername() or "-", flush=True)
    print("PASS" if ok else f"FAIL {got}", flush=True)
signal.signal(signal.SIGUSR1, check)
print("READY", os.getpid(), flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "sockets: a connection accepted from a named listener comes back, queues and all (unnamed)",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path], { ready: /^READY \d+$/m });
    try {
      assert.equal(await t.check(), "PASS", t.output());
      assert.match(t.output(), new RegExp(`^names ${path} ${path}$`, "m"));
      await checkpoint(t.pid, `${base}/img`);
      await restore(`${base}/img`);
      // Both ends of the connection come back, each with its queue, but as a socketpair: unnamed.
      assert.equal(await t.check(), "PASS", t.output());
      assert.match(t.output(), /^names - -$/m);
      assert.equal(await t.check(), "PASS", t.output());
      // The listener itself is back at its path.
      const conn = await Deno.connect({ transport: "unix", path });
      conn.close();
    } finally {
      await cleanup(t, base);
    }
  },
);

/**
 * A socketserver that has not called accept() yet, with a client of its own waiting in its queue
 * (argv[2] "data": the client sent a line already; "outside": no client of its own, whoever
 * connects is served; "removed": its path was removed, so only the first check connects no new
 * client; "replaced": a regular file is at its path now). Each check serves one request (the waiting client's line, echoed) and
 * connects a new client.
 */
const NOT_ACCEPTED_PY = `import os, signal, socket, socketserver, sys, time
path, mode = sys.argv[1], sys.argv[2]
early = mode == "data"
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"echo " + self.rfile.readline())
server = socketserver.UnixStreamServer(path, Echo)
def connect():
    global client
    if mode == "outside":
        return
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(path)
    if early:
        client.sendall(b"early\\n")
connect()
if mode in ("replaced", "removed"):
    os.unlink(path)
if mode == "replaced":
    open(path, "w").close()
def check(*_):
    if mode == "outside":
        server.handle_request()
        print("PASS", flush=True)
        return
    if not early:
        client.sendall(b"late\\n")
    server.handle_request()
    got = client.recv(100)
    want = b"echo early\\n" if early else b"echo late\\n"
    if mode != "removed":
        connect()
    print("PASS" if got == want else f"FAIL {got}", flush=True)
signal.signal(signal.SIGUSR1, check)
print("READY", os.getpid(), flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs("sockets: a socketserver's connection not accepted yet comes back in its queue", python3),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path, "-"], {
      ready: /^READY \d+$/m,
    });
    try {
      await checkpoint(t.pid, `${base}/img`);
      using image = await ImageReader.open(`${base}/img`);
      const files = (await image.readMeta<ProcessEntry>("process")).files;
      const listener = files.find((f) => f.kind === "socket") as SocketEntry;
      const client = files.find((f) => f.kind === "unix-pending") as UnixPendingEntry;
      assert.deepEqual(listener.pending, [client.inode]);
      assert.equal(client.listener, listener.inode);
      await restore(`${base}/img`);
      // The server accepts the client that waited, which then talks; and serves the next one.
      assert.equal(await t.check(), "PASS", t.output());
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await cleanup(t, base);
    }
  },
);

Deno.test(
  needs(
    "sockets: a connection not accepted yet from a client outside the dump is refused, and left as it was",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path, "outside"], {
      ready: /^READY \d+$/m,
    });
    const conn = await Deno.connect({ transport: "unix", path });
    try {
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
        (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(
            err.message,
            /^fd 3 of process \d+: UNIX stream socket .*listening on .*server\.sock with its connection #1 not yet accepted from socket:\[\d+\] outside the dump \(held by deno \d+/,
          );
          return true;
        },
      );
      // Left as it was: the server serves the connection that waited.
      await conn.write(new TextEncoder().encode("hi\n"));
      assert.equal(await t.check(), "PASS", t.output());
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "echo hi\n");
    } finally {
      conn.close();
      await cleanup(t, base);
    }
  },
);

Deno.test(
  needs("sockets: a ghost listener's connection not accepted yet comes back in its queue", python3),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path, "removed"], {
      ready: /^READY \d+$/m,
    });
    try {
      await checkpoint(t.pid, `${base}/img`);
      await restore(`${base}/img`);
      assert.equal(await t.check(), "PASS", t.output());
      await assert.rejects(Deno.lstat(path), Deno.errors.NotFound, `${path} is back`);
    } finally {
      await cleanup(t, base);
    }
  },
);

Deno.test(
  needs(
    "sockets: a listener with connections not accepted yet whose path names another file now is refused",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path, "replaced"], {
      ready: /^READY \d+$/m,
    });
    try {
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
        (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(err.message, /^fd 3 of process \d+: UNIX stream socket .*listening on /);
          assert.match(err.message, /its path now names another file: its clients could not/);
          return true;
        },
      );
      assert.ok(t.alive(), "the target was killed");
    } finally {
      await cleanup(t, base);
    }
  },
);

Deno.test(
  needs(
    "sockets: a connection not accepted yet whose client sent data is refused, and left as it was",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const path = `${base}/server.sock`;
    await Deno.writeTextFile(`${base}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${base}/s.py`, path, "data"], {
      ready: /^READY \d+$/m,
    });
    try {
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
        (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(
            err.message,
            /UNIX stream socket .* not yet accepted.* has sent data the server has not read/,
          );
          return true;
        },
      );
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await cleanup(t, base);
    }
  },
);

/**
 * A stream socketpair with a passed fd ("fds") or an out-of-band byte ("oob") queued on \`b\`, or
 * a seqpacket one with a passed fd that a child holds too ("shared"; it ends with its parent).
 */
const UNKEPT_QUEUE_PY = `import array, os, signal, socket, sys, time
a, b = socket.socketpair(type=socket.SOCK_SEQPACKET if sys.argv[1] == "shared" else socket.SOCK_STREAM)
if sys.argv[1] in ("fds", "shared"):
    r, w = os.pipe()
    if sys.argv[1] == "shared" and os.fork() == 0:
        parent = os.getppid()
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(0)
    a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
    if sys.argv[1] == "shared":
        os.close(r)
else:
    a.send(b"abc")
    a.send(b"X", socket.MSG_OOB)
def check(*_):
    peek_off = b.getsockopt(socket.SOL_SOCKET, 42)
    if sys.argv[1] in ("fds", "shared"):
        msg, anc, _, _ = b.recvmsg(10, socket.CMSG_SPACE(4))
        got = f"{msg} with {len(anc)} fd message"
    else:
        got = f"{b.recv(10)} then {b.recv(1, socket.MSG_OOB)}"
    print("peek_off", peek_off, "got", got, flush=True)
signal.signal(signal.SIGUSR1, check)
print("READY", b.fileno(), flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "sockets: a fd passed through a stream (SCM_RIGHTS) and not received yet comes back",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    await Deno.writeTextFile(`${base}/q.py`, UNKEPT_QUEUE_PY);
    const t = await spawnTarget("python3", [`${base}/q.py`, "fds"], { ready: /^READY \d+$/m });
    try {
      await checkpoint(t.pid, `${base}/img`);
      await restore(`${base}/img`);
      Deno.kill(t.pid, "SIGUSR1");
      await t.waitFor(/^peek_off -1 got b'x' with 1 fd message$/m);
    } finally {
      await cleanup(t, base);
    }
  },
);

const UNKEPT_QUEUES = [
  {
    mode: "shared",
    what: "a passed fd a child holds too",
    why:
      /has a pipe in flight \(pipe:\[\d+\]\) that is also open at fd \d+ of process \d+, which this dump reaches after/,
    got: "b'x' with 1 fd message",
  },
  {
    mode: "oob",
    what: "an out-of-band byte",
    why: /has an out-of-band byte \(MSG_OOB\) queued/,
    got: "b'abc' then b'X'",
  },
];

for (const { mode, what, why, got } of UNKEPT_QUEUES) {
  Deno.test(
    needs(`sockets: a queue holding ${what} is refused, the process left as it was`, python3),
    async () => {
      const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
      await Deno.writeTextFile(`${base}/q.py`, UNKEPT_QUEUE_PY);
      const t = await spawnTarget("python3", [`${base}/q.py`, mode], { ready: /^READY \d+$/m });
      try {
        const fd = t.output().match(/^READY (\d+)$/m)![1];
        await assert.rejects(
          checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
          (err: Error) => {
            assert.ok(err instanceof DumpError, String(err));
            assert.match(err.message, new RegExp(`^fd ${fd} of process ${t.pid}: `));
            assert.match(err.message, why);
            return true;
          },
        );
        // SO_PEEK_OFF is back at -1 and the queue is whole.
        Deno.kill(t.pid, "SIGUSR1");
        await t.waitFor(new RegExp(`^peek_off -1 got ${got}$`, "m"));
      } finally {
        await cleanup(t, base);
      }
    },
  );
}

Deno.test("sockets: read in place or from a copy, a socket's options and filter are the same", async () => {
  const t = await spawnTarget(await fixture("r_socket_options"), [], {
    ready: /^(READY|SETUP FAILED) /m,
  });
  try {
    assert.match(t.output(), /^READY /m, t.output());
    await using frozen = await freeze(t.pid);
    const pidfd = pidfdOpen(t.pid);
    try {
      // In place (injected, where a copy would change net_cls) and from the tool's copy.
      for (const fd of [3, 4, 5, 7]) {
        const inPlace = new TargetSocket(frozen.injector, fd);
        const copy = pidfdGetfd(pidfd, fd);
        try {
          const kind = [inPlace.getsockopt(1, 39, 4), inPlace.getsockopt(1, 3, 4)] as Uint8Array[];
          const family = new DataView(kind[0].buffer).getInt32(0, true);
          const type = new DataView(kind[1].buffer).getInt32(0, true);
          const protocol = fd === 4 ? 6 : 17;
          assert.deepEqual(
            changedOptions(inPlace, family, type, protocol),
            changedOptions(toolSocketOptions(copy, true), family, type, protocol),
            `fd ${fd}`,
          );
        } finally {
          close(copy);
        }
      }
      const filter = new TargetSocket(frozen.injector, 7).filter();
      assert.ok(filter instanceof Uint8Array && filter.length === 16, `filter ${filter}`);
    } finally {
      close(pidfd);
    }
  } finally {
    await t.kill();
  }
});

/** A datagram socket bound to a relative path deep in one directory, the process then elsewhere. */
const LOST_RELATIVE_PY = `import os, socket, sys, time
os.chdir(sys.argv[1])
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind("lost.sock")
os.chdir(sys.argv[2])
print("READY", s.fileno(), flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "sockets: a relative UNIX path bound where no cwd of the dump leads is refused, naming it",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    const deep = `${base}/a/b/c/d/e`;
    await Deno.mkdir(deep, { recursive: true });
    await Deno.mkdir(`${base}/elsewhere`);
    await Deno.writeTextFile(`${base}/r.py`, LOST_RELATIVE_PY);
    const t = await spawnTarget("python3", [`${base}/r.py`, deep, `${base}/elsewhere`], {
      ready: /^READY \d+$/m,
    });
    try {
      const fd = t.output().match(/^READY (\d+)$/m)![1];
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, { leaveRunning: true }),
        (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(
            err.message,
            new RegExp(`^fd ${fd} of process ${t.pid}: UNIX datagram socket`),
          );
          assert.match(
            err.message,
            /bound to the relative path lost\.sock, whose file is neither in/,
          );
          return true;
        },
      );
      assert.ok(t.alive());
    } finally {
      await cleanup(t, base);
    }
  },
);

/** A parent that sent its child a pipe's read end, which it keeps too; the child has not read it. */
const IN_FLIGHT_TREE_PY = `import array, os, signal, socket, sys, time
a, b = socket.socketpair(type=socket.SOCK_SEQPACKET)
child = os.fork()
if child == 0:
    a.close()
    def check(*_):
        msg, anc, _, _ = b.recvmsg(16, socket.CMSG_SPACE(4))
        fd = array.array("i", anc[0][2])[0]
        print("child got", msg, os.read(fd, 100), os.read(fd, 100), flush=True)
    signal.signal(signal.SIGUSR1, check)
    while True:
        time.sleep(1)
b.close()
r, w = os.pipe()
os.write(w, b"from the parent")
os.close(w)
a.sendmsg([b"take this"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
print("READY", os.getpid(), "child", child, flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "sockets: a pipe a parent sent its child and keeps, not yet received, comes back in flight",
    python3,
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-sockets-" });
    await Deno.writeTextFile(`${base}/f.py`, IN_FLIGHT_TREE_PY);
    const t = await spawnTarget("python3", [`${base}/f.py`], { ready: /^READY \d+ child \d+$/m });
    const child = Number(t.output().match(/^READY \d+ child (\d+)$/m)![1]);
    try {
      const r = await checkpoint(t.pid, `${base}/img`);
      assert.deepEqual(r.processes, [t.pid, child]);
      const back = await restore(`${base}/img`);
      assert.deepEqual(back.processes, [t.pid, child]);
      Deno.kill(child, "SIGUSR1");
      await t.waitFor(/^child got b'take this' b'from the parent' b''$/m);
    } finally {
      await cleanup(t, base);
      await t.kill(child);
    }
  },
);
