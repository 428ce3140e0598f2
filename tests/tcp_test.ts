/**
 * TCP connections (lib/files/socket/tcp_stream.ts), over real loopback TCP: a client whose
 * server is this test process comes back with the bytes in flight both ways (received but unread,
 * sent but unacknowledged, never sent) and the server sees every byte once, in order, and no
 * reset; both ends of connections inside one process come back and keep talking; a dump that
 * leaves the client running puts its connection back as it was; a refused socket after held
 * connections leaves the target running with those connections unharmed; connections in every
 * state a socket stays in (tcp_states.c: connecting, closing, ended) come back in it over IPv4,
 * IPv6 and v4-mapped IPv6 and close as they would have, or are put back by a dump that leaves
 * them running; curl dumped while connecting connects after restore and gets its page; a python
 * client whose server closed its side reads the rest, answers and closes, the server seeing no
 * reset; a refused connect whose error the program has not read is refused, and once read comes
 * back ended (EOF); a connect whose SYN carries data (TCP Fast Open) is refused and put back.
 *
 * The server end is a raw socket (FFI) so the test can hold back its acknowledgements: a drop-all
 * socket filter on it makes the client's bytes stay sent but unacknowledged. It stays quiet while
 * the client is dumped and restored (the header of tcp_stream.ts says why it must).
 */
import assert from "node:assert/strict";
import { addressOf, errno, libc } from "../ffi/mod.ts";
import { checkpoint, DumpError, ImageReader, ProcessImage, restore, RestoreError } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import type { TcpStreamEntry } from "../lib/files/socket/tcp_stream.ts";
import type { TcpPendingEntry } from "../lib/files/socket/tcp_pending.ts";
import type { SocketEntry } from "../lib/files/socket/standalone.ts";
import {
  fixture,
  needs,
  noNetworkLock,
  notInstalled,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

const NR = {
  close: 3,
  ioctl: 16,
  socket: 41,
  connect: 42,
  sendto: 44,
  recvfrom: 45,
  shutdown: 48,
  bind: 49,
  listen: 50,
  getsockname: 51,
  setsockopt: 54,
  getsockopt: 55,
  accept4: 288,
};
const EAGAIN = 11,
  EINPROGRESS = 115,
  MSG_DONTWAIT = 0x40,
  SOCK_NONBLOCK = 0o4000,
  SOCK_CLOEXEC = 0o2000000;
const SOL_SOCKET = 1, SO_ATTACH_FILTER = 26, SO_DETACH_FILTER = 27, SOL_TCP = 6, TCP_INFO = 11;
const SIOCOUTQ = 0x5411, TCP_ESTABLISHED = 1;

/** A raw syscall: the result, or a negative errno. */
function sys(nr: number, ...args: (number | bigint)[]): number {
  const a = [...args.map(BigInt), 0n, 0n, 0n, 0n, 0n, 0n].slice(0, 6);
  const r = Number(libc.syscall(BigInt(nr), a[0], a[1], a[2], a[3], a[4], a[5]));
  return r === -1 ? -errno() : r;
}

function must(r: number, what: string): number {
  if (r < 0) throw new Error(`${what}: errno ${-r}`);
  return r;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Byte `i` of stream `seed`, as tests/fixtures/tcp_client.c and r_tcp_loopback.c make them. */
function streamByte(seed: number, i: number): number {
  return ((Math.imul(i, 2654435761) >>> 24) ^ (i >>> 11) ^ (seed * 37)) & 0xff;
}

function stream(seed: number, from: number, length: number): Uint8Array {
  return Uint8Array.from({ length }, (_, k) => streamByte(seed, from + k));
}

/** A socket filter that drops every packet: sock_fprog at 0, its one insn `ret #0` at 16 (one
 * buffer over V8's 64-byte in-heap limit, so it does not move and the pointer stays valid). */
const dropAllProg = new Uint8Array(128);
new DataView(dropAllProg.buffer).setUint16(0, 1, true);
new DataView(dropAllProg.buffer).setBigUint64(8, addressOf(dropAllProg) + 16n, true);
dropAllProg[16] = 0x06;

/** The server's end of the connection: a non-blocking socket of this process. */
class ServerConn {
  constructor(readonly fd: number) {}

  /** Holds back every packet of the client: nothing it sends is acknowledged meanwhile. */
  dropIncoming(drop: boolean): void {
    if (drop) {
      must(
        sys(NR.setsockopt, this.fd, SOL_SOCKET, SO_ATTACH_FILTER, addressOf(dropAllProg), 16),
        "SO_ATTACH_FILTER",
      );
    } else {
      const zero = new Uint8Array(4);
      must(
        sys(NR.setsockopt, this.fd, SOL_SOCKET, SO_DETACH_FILTER, addressOf(zero), 4),
        "SO_DETACH_FILTER",
      );
    }
  }

  /** Bytes sent and not acknowledged by the client yet. */
  unacknowledged(): number {
    const n = new Int32Array(1);
    must(sys(NR.ioctl, this.fd, SIOCOUTQ, addressOf(new Uint8Array(n.buffer))), "SIOCOUTQ");
    return n[0];
  }

  state(): number {
    const info = new Uint8Array(8);
    const len = new Uint32Array([8]);
    must(
      sys(NR.getsockopt, this.fd, SOL_TCP, TCP_INFO, addressOf(info), addressOf(len)),
      "TCP_INFO",
    );
    return info[0];
  }

  /**
   * Sends `out` and reads `inLength` bytes, both at once as the connection allows; returns what
   * was read. EOF or an error (a reset) fails the test.
   */
  async exchange(out: Uint8Array, inLength: number, timeoutMs = 30_000): Promise<Uint8Array> {
    const got = new Uint8Array(inLength);
    let sent = 0, read = 0;
    const deadline = Date.now() + timeoutMs;
    while (sent < out.length || read < inLength) {
      if (Date.now() > deadline) {
        throw new Error(`exchange timed out: sent ${sent}/${out.length}, read ${read}/${inLength}`);
      }
      let moved = false;
      if (sent < out.length) {
        const r = sys(
          NR.sendto,
          this.fd,
          addressOf(out.subarray(sent)),
          out.length - sent,
          MSG_DONTWAIT,
          0,
          0,
        );
        if (r > 0) sent += r, moved = true;
        else if (r !== -EAGAIN) throw new Error(`server send: errno ${-r} after ${sent} bytes`);
      }
      if (read < inLength) {
        const r = sys(
          NR.recvfrom,
          this.fd,
          addressOf(got.subarray(read)),
          inLength - read,
          MSG_DONTWAIT,
          0,
          0,
        );
        if (r > 0) read += r, moved = true;
        else if (r === 0) throw new Error(`server: EOF after ${read} bytes read`);
        else if (r !== -EAGAIN) throw new Error(`server recv: errno ${-r} after ${read} bytes`);
      }
      if (!moved) await sleep(2);
    }
    return got;
  }

  /** Reads until EOF (a reset or another error fails the test); returns what was read. */
  async readToEnd(timeoutMs = 30_000): Promise<Uint8Array> {
    const chunks: number[] = [];
    const buf = new Uint8Array(65536);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const r = sys(NR.recvfrom, this.fd, addressOf(buf), buf.length, MSG_DONTWAIT, 0, 0);
      if (r === 0) return Uint8Array.from(chunks);
      if (r > 0) chunks.push(...buf.subarray(0, r));
      else if (r !== -EAGAIN) throw new Error(`server recv: errno ${-r} after ${chunks.length}`);
      else if (Date.now() > deadline) throw new Error(`no EOF after ${chunks.length} bytes`);
      else await sleep(5);
    }
  }

  /** Shuts the server's side for writing: the client gets its FIN. */
  shutWrite(): void {
    must(sys(NR.shutdown, this.fd, 1), "shutdown");
  }

  #closed = false;

  close(): void {
    if (!this.#closed) sys(NR.close, this.fd);
    this.#closed = true;
  }
}

/** A listener on 127.0.0.1 or [::1] (ephemeral port) owned by this process. */
class Server {
  readonly fd: number;
  readonly port: number;
  readonly address: Uint8Array;

  constructor(family: 2 | 10 = 2, backlog = 4) {
    this.fd = must(sys(NR.socket, family, 1 | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    const addr = new Uint8Array(family === 2 ? 16 : 28);
    addr[0] = family;
    if (family === 2) addr.set([127, 0, 0, 1], 4);
    else addr[23] = 1;
    must(sys(NR.bind, this.fd, addressOf(addr), addr.length), "bind");
    must(sys(NR.listen, this.fd, backlog), "listen");
    const len = new Uint32Array([addr.length]);
    must(sys(NR.getsockname, this.fd, addressOf(addr), addressOf(len)), "getsockname");
    this.port = (addr[2] << 8) | addr[3];
    this.address = addr;
  }

  /** A connection of this process to the listener, left unaccepted in its queue. */
  connect(): ServerConn {
    const family = this.address[0];
    const fd = must(sys(NR.socket, family, 1 | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), "socket");
    const r = sys(NR.connect, fd, addressOf(this.address), this.address.length);
    if (r < 0 && r !== -EINPROGRESS) throw new Error(`connect: errno ${-r}`);
    return new ServerConn(fd);
  }

  async accept(): Promise<ServerConn> {
    const deadline = Date.now() + 10_000;
    for (;;) {
      const fd = sys(NR.accept4, this.fd, 0, 0, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd >= 0) return new ServerConn(fd);
      if (fd !== -EAGAIN || Date.now() > deadline) throw new Error(`accept: errno ${-fd}`);
      await sleep(5);
    }
  }

  close(): void {
    sys(NR.close, this.fd);
  }
}

async function tcpStreams(dir: string): Promise<TcpStreamEntry[]> {
  using image = await ImageReader.open(dir);
  const p = await image.readMeta<ProcessEntry>("process");
  return p.files.filter((f) => f.kind === "tcp-stream") as TcpStreamEntry[];
}

function assertStream(got: Uint8Array, seed: number, from: number, what: string): void {
  for (let i = 0; i < got.length; i++) {
    if (got[i] !== streamByte(seed, from + i)) {
      assert.fail(`${what}: byte ${i} (stream offset ${from + i}) differs`);
    }
  }
}

const WRITE = 8 << 20; // the client's bytes: more than its send buffer holds
const EARLY = 100_000; // the server's bytes before the dump, left unread in the client
const LATE = 200_000; // the server's bytes after it

/**
 * A client (tests/fixtures/tcp_client.c) connected to a server of this process, with bytes in
 * flight both ways: EARLY bytes from the server received but unread, and the client blocked in
 * writing, its send queue full of bytes sent but unacknowledged (the server drops its packets
 * from before the client writes) and bytes never sent. Runs `body`, then cleans up.
 */
async function withClient(
  body: (t: Target, conn: ServerConn, dir: string) => Promise<void>,
): Promise<void> {
  const server = new Server();
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
  let conn: ServerConn | undefined;
  const t = await spawnTarget(
    await fixture("tcp_client"),
    [String(server.port), String(WRITE), String(EARLY + LATE)],
    { ready: /^(READY|SETUP FAILED)/m },
  );
  try {
    assert.match(t.output(), /^READY /m, t.output());
    conn = await server.accept();
    await conn.exchange(stream(2, 0, EARLY), 0);
    await waitUntil(
      () => conn!.unacknowledged() === 0,
      5000,
      "the client to acknowledge the server's first bytes",
    );
    conn.dropIncoming(true);
    Deno.kill(t.pid, "SIGUSR2"); // now the client writes
    await t.waitFor(/^BLOCKED /m);
    assert.equal(await t.check(), "PASS", t.output());
    await body(t, conn, dir);
  } finally {
    await t.kill();
    conn?.close();
    server.close();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
}

/** The server's side of the rest of the exchange: every byte of the client's once and in order. */
async function finishExchange(t: Target, conn: ServerConn): Promise<void> {
  conn.dropIncoming(false);
  const got = await conn.exchange(stream(2, EARLY, LATE), WRITE);
  assertStream(got, 1, 0, "the client's bytes as the server read them");
  await t.waitFor(/^DONE /m, 30_000);
  assert.equal(await t.check(), "PASS", t.output());
  assert.equal(conn.state(), TCP_ESTABLISHED, "the server's end left ESTABLISHED");
}

Deno.test(
  needs(
    "tcp: a client comes back with every byte in flight, and the server sees no reset",
    noNetworkLock(),
  ),
  async () => {
    await withClient(async (t, conn, dir) => {
      const written = Number(t.output().match(/^BLOCKED written=(\d+)/m)![1]);
      await checkpoint(t.pid, `${dir}/img`);
      assert.ok(!t.alive(), "the client still runs after the dump");

      const [e, ...more] = await tcpStreams(`${dir}/img`);
      assert.ok(e && more.length === 0, "one tcp-stream entry expected");
      assert.equal(e.state, "established");
      assert.equal(e.family, 2);
      assert.match(e.description, /^IPv4 TCP 127\.0\.0\.1:\d+ connected to 127\.0\.0\.1:\d+$/);
      assert.deepEqual(e.inQueue, stream(2, 0, EARLY), "receive queue");
      assert.ok(e.unsent > 0, "no bytes never sent");
      assert.ok(e.outQueue.length > e.unsent, "no bytes sent but unacknowledged");
      assertStream(e.outQueue, 1, written - e.outQueue.length, "send queue");
      assert.deepEqual(e.options.map((o) => o.name).sort().filter((n) => !n.endsWith("BUF")), [
        "SO_KEEPALIVE",
        "SO_REUSEADDR",
        "TCP_NODELAY",
      ]);

      const r = await restore(`${dir}/img`);
      assert.equal(r.pid, t.pid);
      await finishExchange(t, conn);
    });
  },
);

Deno.test(
  needs("tcp: a dump that leaves the client running puts its connection back", noNetworkLock()),
  async () => {
    await withClient(async (t, conn, dir) => {
      await checkpoint(t.pid, `${dir}/img`, { leaveRunning: true });
      // Repair mode off, filter off, SO_REUSEADDR back: the fixture checks all three.
      assert.equal(await t.check(), "PASS", t.output());
      await assert.rejects(
        restore(`${dir}/img`),
        (err: Error) =>
          err instanceof RestoreError && /has that connection already/.test(err.message),
      );
      await finishExchange(t, conn);
    });
  },
);

Deno.test(
  needs(
    "tcp: both ends of loopback connections in one process come back and keep talking",
    noNetworkLock(),
  ),
  async () => {
    const t = await spawnTarget(await fixture("r_tcp_loopback"), [], {
      ready: /^(READY|SETUP FAILED)/m,
    });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    try {
      assert.match(t.output(), /^READY /m, t.output());
      const v6 = t.output().includes("v6=1");
      assert.equal(await t.check(), "PASS", t.output());
      await checkpoint(t.pid, `${dir}/img`);

      const entries = await tcpStreams(`${dir}/img`);
      assert.equal(entries.length, v6 ? 5 : 3, entries.map((e) => e.description).join("\n"));
      assert.equal(entries.filter((e) => e.family === 10).length, v6 ? 2 : 0);
      const closing = entries.filter((e) => e.state === "close-wait");
      assert.equal(closing.length, 1);
      assert.deepEqual(closing[0].inQueue, stream(3, 0, 1000));
      assert.ok(closing[0].readShutdown);
      assert.match(closing[0].description, /its peer closed its side/);
      const talking = entries.filter((e) => e.state === "established");
      assert.ok(talking.every((e) => e.inQueue.length > 0 && e.outQueue.length > 0));

      await restore(`${dir}/img`);
      assert.equal(await t.check(), "PASS", t.output());
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "tcp: a refused listener names its fd; the connections held before it are put back",
    noNetworkLock(),
  ),
  async () => {
    const t = await spawnTarget(await fixture("tcp_refused"), [], {
      ready: /^(READY|SETUP FAILED)/m,
    });
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    try {
      assert.match(t.output(), /^READY /m, t.output());
      assert.equal(await t.check(), "PASS", t.output());
      await assert.rejects(checkpoint(t.pid, `${dir}/img`), (err: Error) => {
        assert.ok(err instanceof DumpError, String(err));
        assert.match(
          err.message,
          /^fd 6 of process \d+: IPv4 TCP socket .*not yet accepted: #1 from 127\.0\.0\.1:\d+ \(fd 7 of process \d+\), which has sent data the server has not read/,
        );
        assert.match(err.message, /a policy can skip it/);
        return true;
      });
      assert.ok(t.alive(), "the target was killed");
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

/**
 * A TCP socketserver that has not called accept() yet: with argv[1] "self" a client of its own
 * waits in its queue (each check sends a line on it, serves one request and connects a new
 * client); otherwise each check serves one request of whoever connected.
 */
const NOT_ACCEPTED_PY = `import os, signal, socket, socketserver, sys, time
own = sys.argv[1] == "self"
class Echo(socketserver.StreamRequestHandler):
    def handle(self):
        self.wfile.write(b"echo " + self.rfile.readline())
server = socketserver.TCPServer(("127.0.0.1", 0), Echo)
port = server.server_address[1]
def connect():
    global client
    if own:
        client = socket.create_connection(("127.0.0.1", port))
connect()
def check(*_):
    got = b"echo late\\n"
    if own:
        client.sendall(b"late\\n")
    server.handle_request()
    if own:
        got = client.recv(100)
        client.close()
    connect()
    print("PASS" if got == b"echo late\\n" else f"FAIL {got}", flush=True)
signal.signal(signal.SIGUSR1, check)
print("READY", os.getpid(), "port", port, flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "tcp: a socketserver's own connection not accepted yet comes back in its queue",
    notInstalled("python3"),
  ),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    await Deno.writeTextFile(`${dir}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${dir}/s.py`, "self"], { ready: /^READY /m });
    try {
      await checkpoint(t.pid, `${dir}/img`);
      using image = await ImageReader.open(`${dir}/img`);
      const files = (await image.readMeta<ProcessEntry>("process")).files;
      const client = files.find((f) => f.kind === "tcp-pending") as TcpPendingEntry;
      assert.ok(client, files.map((f) => f.kind).join(" "));
      assert.deepEqual(
        files.filter((f) => f.kind === "socket").map((f) => (f as SocketEntry).pending),
        [[client.inode]],
      );
      // The image shows it as the process did: a socket.
      using view = await ProcessImage.open(`${dir}/img`);
      const fds = (await Array.fromAsync(view.root.fds())).map((f) => `${f.kind} ${f.target}`);
      assert.ok(fds.includes(`socket socket:[${client.inode}]`), fds.join("\n"));
      await restore(`${dir}/img`);
      assert.equal(await t.check(), "PASS", t.output());
      assert.equal(await t.check(), "PASS", t.output());
    } finally {
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test("tcp: a restored queue of connections not accepted yet is dumped and restored again in order", async () => {
  const t = await spawnTarget(await fixture("r_tcp_accept_queue"), [], {
    ready: /^(READY|SETUP FAILED)/m,
  });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
  try {
    assert.match(t.output(), /^READY /m, t.output());
    await checkpoint(t.pid, `${dir}/one`);
    await restore(`${dir}/one`);
    // At once: the restore made the queue's connections a clock tick apart, so their order shows.
    await checkpoint(t.pid, `${dir}/two`);
    await restore(`${dir}/two`);
    assert.equal(await t.check(), "PASS", t.output());
  } finally {
    await t.kill();
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
});

Deno.test(
  needs(
    "tcp: a connection not accepted yet from a peer outside the dump is refused, and left as it was",
    notInstalled("python3"),
  ),
  async () => {
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    await Deno.writeTextFile(`${dir}/s.py`, NOT_ACCEPTED_PY);
    const t = await spawnTarget("python3", [`${dir}/s.py`, "-"], { ready: /^READY /m });
    const port = Number(t.output().match(/^READY \d+ port (\d+)/m)![1]);
    const conn = await Deno.connect({ hostname: "127.0.0.1", port });
    try {
      await assert.rejects(
        checkpoint(t.pid, `${dir}/img`, { leaveRunning: true }),
        (err: Error) => {
          assert.ok(err instanceof DumpError, String(err));
          assert.match(
            err.message,
            /^fd 3 of process \d+: IPv4 TCP socket .*listening on 127\.0\.0\.1:\d+ with 1 connection\(s\) not yet accepted: #1 from 127\.0\.0\.1:\d+, a peer outside the dump \(a process not dumped\)/,
          );
          return true;
        },
      );
      // Left as it was: the connection waits on, and the server serves it.
      await conn.write(new TextEncoder().encode("late\n"));
      assert.equal(await t.check(), "PASS", t.output());
      const buf = new Uint8Array(64);
      const n = await conn.read(buf);
      assert.equal(new TextDecoder().decode(buf.subarray(0, n ?? 0)), "echo late\n");
    } finally {
      conn.close();
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

/**
 * tcp_states.c's conversations finish: it checks each socket is in its state, the test frees the
 * full accept queue (`waiting` holds it) so the connecting one gets through and says hello, and
 * every conversation ends (all bytes read, EOF, every socket in CLOSE).
 */
async function finishConversations(t: Target, server: Server, waiting: ServerConn): Promise<void> {
  assert.equal(await t.check(), "PASS", t.output());
  (await server.accept()).close();
  waiting.close();
  const conn = await server.accept();
  try {
    assert.deepEqual(await conn.exchange(new Uint8Array(0), 5), new TextEncoder().encode("hello"));
  } finally {
    conn.close();
  }
  assert.equal(await t.check(), "PASS", t.output());
}

/** Whether this machine has [::1]. */
function hasIpv6Loopback(): boolean {
  try {
    Deno.listen({ hostname: "::1", port: 0 }).close();
    return true;
  } catch {
    return false;
  }
}

for (const family of ["4", "6", "mapped"]) {
  Deno.test({
    ...needs(
      `tcp: connections in every state come back in it and close as they would (${family})`,
      family === "6" && !hasIpv6Loopback() ? "no IPv6 loopback" : noNetworkLock(),
    ),
    async fn() {
      // A listener whose accept queue is full (backlog 0, one connection waiting): the fixture's
      // SYNs are dropped, so its connect() stays in SYN_SENT until the test accepts.
      const server = new Server(family === "6" ? 10 : 2, 0);
      const waiting = server.connect();
      const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
      const t = await spawnTarget(await fixture("tcp_states"), [family, String(server.port)], {
        ready: /^(READY|SETUP FAILED)/m,
      });
      try {
        assert.match(t.output(), /^READY /m, t.output());
        assert.equal(await t.check(), "PASS", t.output());
        await checkpoint(t.pid, `${dir}/img`);
        assert.ok(!t.alive(), "the fixture still runs after the dump");

        const entries = await tcpStreams(`${dir}/img`);
        assert.deepEqual(entries.map((e) => e.state).sort(), [
          "close",
          "close",
          "close-wait",
          "closing",
          "established",
          "fin-wait1",
          "fin-wait2",
          "fin-wait2",
          "fin-wait2",
          "last-ack",
          "syn-sent",
        ]);
        assert.ok(entries.every((e) => e.family === (family === "4" ? 2 : 10)));
        const mapped = entries.every((e) => /\[::ffff:7f00:1\]/.test(e.description));
        assert.equal(
          entries.filter((e) => /whose connection ended$/.test(e.description)).length,
          2,
          entries.map((e) => e.description).join("\n"),
        );
        assert.equal(mapped, family === "mapped", entries[0].description);

        await restore(`${dir}/img`);
        // Every state as it was, C still connecting: the accept queue is still full.
        await finishConversations(t, server, waiting);
      } finally {
        await t.kill();
        waiting.close();
        server.close();
        await Deno.remove(dir, { recursive: true }).catch(() => {});
        await Deno.remove(t.outPath).catch(() => {});
      }
    },
  });
}

/** Whether /proc/net/tcp has a socket in SYN_SENT towards 127.0.0.1:`port`. */
function connectingTo(port: number): boolean {
  const remote = `0100007F:${port.toString(16).toUpperCase().padStart(4, "0")}`;
  return Deno.readTextFileSync("/proc/net/tcp").split("\n").some((line) => {
    const f = line.trim().split(/\s+/);
    return f[2] === remote && f[3] === "02";
  });
}

Deno.test(
  needs(
    "tcp: curl dumped while connecting (SYN_SENT) connects after restore",
    notInstalled("curl") ?? noNetworkLock(),
  ),
  async () => {
    const server = new Server(2, 0); // its accept queue full: curl's SYNs are dropped
    const waiting = server.connect();
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    await waitUntil(() => waiting.state() === TCP_ESTABLISHED, 5000, "the queue to fill");
    const t = await spawnTarget("curl", ["-sS", `http://127.0.0.1:${server.port}/page`]);
    try {
      await waitUntil(() => connectingTo(server.port), 10_000, "curl to be connecting");
      await checkpoint(t.pid, `${dir}/img`);
      assert.deepEqual((await tcpStreams(`${dir}/img`)).map((e) => e.state), ["syn-sent"]);
      await restore(`${dir}/img`);
      (await server.accept()).close();
      waiting.close();
      const conn = await server.accept(); // curl's SYN, sent again, got through
      try {
        let request = "";
        while (!request.includes("\r\n\r\n")) {
          request += new TextDecoder().decode(await conn.exchange(new Uint8Array(0), 1));
        }
        assert.match(request, /^GET \/page HTTP/);
        const page = "HTTP/1.0 200 OK\r\nContent-Length: 6\r\n\r\nhello\n";
        await conn.exchange(new TextEncoder().encode(page), 0);
      } finally {
        conn.close();
      }
      await t.waitFor(/^hello$/m, 30_000);
      await waitUntil(() => !t.alive(), 10_000, "curl to exit");
    } finally {
      await t.kill();
      waiting.close();
      server.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "tcp: a python client whose server closed its side (CLOSE_WAIT) reads on, answers and closes",
    notInstalled("python3") ?? noNetworkLock(),
  ),
  async () => {
    const server = new Server();
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    const flag = `${dir}/go`;
    const script = `
import os, socket, time
s = socket.create_connection(("127.0.0.1", ${server.port}))
print("READY", flush=True)
while not os.path.exists(${JSON.stringify(flag)}):
    time.sleep(0.02)
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
s.sendall(b"got %d" % len(data))
s.close()
print("DONE", len(data), flush=True)
`;
    const t = await spawnTarget("python3", ["-c", script], { ready: /^READY/m });
    let conn: ServerConn | undefined;
    try {
      conn = await server.accept();
      await conn.exchange(stream(4, 0, 5000), 0);
      conn.shutWrite();
      await waitUntil(() => conn!.state() === 5, 5000, "the server's end to be in FIN_WAIT2");
      await checkpoint(t.pid, `${dir}/img`);
      const [e] = await tcpStreams(`${dir}/img`);
      assert.equal(e.state, "close-wait");
      assert.deepEqual(e.inQueue, stream(4, 0, 5000));
      await restore(`${dir}/img`);
      Deno.writeTextFileSync(flag, "");
      // The answer, then EOF: no reset on the server's side.
      assert.equal(new TextDecoder().decode(await conn.readToEnd()), "got 5000");
      await t.waitFor(/^DONE 5000$/m, 10_000);
    } finally {
      await t.kill();
      conn?.close();
      server.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "tcp: a dump that leaves them running puts connections in every state back",
    noNetworkLock(),
  ),
  async () => {
    const server = new Server(2, 0);
    const waiting = server.connect();
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    const t = await spawnTarget(await fixture("tcp_states"), ["4", String(server.port)], {
      ready: /^(READY|SETUP FAILED)/m,
    });
    try {
      assert.match(t.output(), /^READY /m, t.output());
      await checkpoint(t.pid, `${dir}/img`, { leaveRunning: true });
      // Each in its state, out of repair mode, with no filter; then each conversation finishes.
      await finishConversations(t, server, waiting);
    } finally {
      await t.kill();
      waiting.close();
      server.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "tcp: a refused connect whose error is not read yet is refused; once read, it comes back ended",
    notInstalled("python3") ?? noNetworkLock(),
  ),
  async () => {
    const server = new Server();
    const port = server.port;
    server.close(); // nobody listens there now: a connect gets a reset
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    const script = `
import errno, os, socket, sys, time
s = socket.socket()
s.setblocking(False)
s.connect_ex(("127.0.0.1", ${port}))
print("READY", flush=True)
sys.stdin.readline()
print("ERROR", s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
sys.stdin.readline()
print("READ", s.recv(10), flush=True)
`;
    const fifo = `${dir}/in`;
    await new Deno.Command("mkfifo", { args: [fifo] }).output();
    const t = await spawnTarget("sh", ["-c", `exec python3 -c '${script}' <${fifo}`]);
    const input = await Deno.open(fifo, { write: true });
    try {
      await t.waitFor(/^READY/m);
      await assert.rejects(checkpoint(t.pid, `${dir}/img`), (err: Error) => {
        assert.ok(err instanceof DumpError, String(err));
        assert.match(err.message, /error not yet read \(SO_ERROR/);
        return true;
      });
      await input.write(new TextEncoder().encode("\n"));
      await t.waitFor(/^ERROR 111$/m); // ECONNREFUSED, read by the program itself
      await checkpoint(t.pid, `${dir}/img`);
      const [e] = await tcpStreams(`${dir}/img`);
      assert.equal(e.state, "close");
      await restore(`${dir}/img`);
      await input.write(new TextEncoder().encode("\n"));
      await t.waitFor(/^READ b''$/m); // EOF, as the original would have read, not ENOTCONN
    } finally {
      input.close();
      await t.kill();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

Deno.test(
  needs(
    "tcp: a connect whose SYN carries data (TCP Fast Open) is refused",
    notInstalled("python3") ?? noNetworkLock(),
  ),
  async () => {
    const server = new Server(2, 0); // its accept queue full: the SYN stays unanswered
    const waiting = server.connect();
    const dir = await Deno.makeTempDir({ prefix: "tardigrade-tcp-" });
    await waitUntil(() => waiting.state() === TCP_ESTABLISHED, 5000, "the queue to fill");
    const script = `
import socket, time
s = socket.socket()
s.setblocking(False)
s.setsockopt(socket.IPPROTO_TCP, 34, 1)  # TCP_FASTOPEN_NO_COOKIE: the data goes in the SYN
sent = s.sendto(b"early data", socket.MSG_FASTOPEN, ("127.0.0.1", ${server.port}))
print("READY", sent, flush=True)
time.sleep(600)
`;
    const t = await spawnTarget("python3", ["-c", script], { ready: /^READY/m });
    try {
      await waitUntil(() => connectingTo(server.port), 10_000, "python to be connecting");
      await assert.rejects(checkpoint(t.pid, `${dir}/img`), (err: Error) => {
        assert.ok(err instanceof DumpError, String(err));
        assert.match(err.message, /its SYN carries data \(TCP Fast Open\)/);
        return true;
      });
      assert.ok(t.alive(), "the target was killed");
      assert.ok(connectingTo(server.port), "the connect was not put back");
    } finally {
      await t.kill();
      waiting.close();
      server.close();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);
