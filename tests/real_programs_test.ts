/**
 * Real programs of the sweep (README "Real programs checked") that the other test files do not
 * cover: each dumped while it works, restored, and checked as its user would.
 */
import assert from "node:assert/strict";
import { checkpoint } from "../mod.ts";
import {
  childrenOf,
  exists,
  isAlive,
  killAndReap,
  needs,
  noNetworkLock,
  notInstalled,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";
import { dumpAndRestore, scratch } from "./round_trip.ts";

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
    using s = scratch("tardigrade-real-");
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
  using s = scratch("tardigrade-real-");
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
    using s = scratch("tardigrade-real-");
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
    using s = scratch("tardigrade-real-");
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
    using s = scratch("tardigrade-real-");
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
    using s = scratch("tardigrade-real-");
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

Deno.test({
  ...needs(
    "python3 with a 20 ms setitimer and a ThreadPoolExecutor goes on ticking after a restore",
    notInstalled("python3"),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    // The timer fires while the process is frozen and while it is restored: its SIGALRM waits,
    // the timer with it (reloaded only when the signal is taken).
    Deno.writeTextFileSync(
      `${s.dir}/tick.py`,
      `import signal, itertools, concurrent.futures as cf, time
ticks = [0]
def on_alarm(sig, frame): ticks[0] += 1
signal.signal(signal.SIGALRM, on_alarm)
signal.setitimer(signal.ITIMER_REAL, 0.02, 0.02)
with cf.ThreadPoolExecutor(max_workers=3) as ex:
    for i in itertools.count():
        print(i, sum(ex.map(lambda x: x * 2, range(i, i + 3))), ticks[0], flush=True)
        time.sleep(0.1)
`,
    );
    const t = await spawnTarget("python3", ["-u", `${s.dir}/tick.py`], { ready: /^5 /m });
    const ticks = () => lines(t).map((l) => l.split(" ").map(Number));
    try {
      await dumpAndRestore(t.pid, s.img);
      const seen = ticks().length;
      await waitUntil(() => ticks().length > seen + 5, 10_000, "the loop to go on");
      ticks().forEach(([i, sum], n) => assert.deepEqual([i, sum], [n, 6 * n + 6]));
      // SIGALRM still comes every 20 ms: more ticks over the last lines than those lines' time.
      const last = ticks().slice(-5);
      assert.ok(last[4][2] - last[0][2] >= 8, `alarms over 0.4 s: ${last.map((l) => l[2])}`);
    } finally {
      await t.kill();
    }
  },
});

Deno.test({
  ...needs(
    "a tmux server and a client attached in script's pty come back as one tree",
    notInstalled("tmux", "script"),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    const sock = `${s.dir}/sock`;
    const tmux = async (...args: string[]) => {
      const out = await new Deno.Command("tmux", { args: ["-S", sock, ...args] }).output();
      return new TextDecoder().decode(out.stdout);
    };
    // The server in the foreground (-D), so the client and it share the dumped root.
    const t = await spawnTarget("sh", [
      "-c",
      `tmux -D -f /dev/null -S ${sock} & sleep 0.3; ` +
      `script -qfc 'tmux -S ${sock} new -s t -x 80 -y 24' ${s.dir}/ts; wait`,
    ]);
    const pane = () => tmux("capture-pane", "-p", "-t", "t");
    try {
      await waitUntil(
        async () => (await tmux("list-clients")).includes("attached"),
        10_000,
        "the client",
      );
      await tmux("send-keys", "-t", "t", "echo before-$((6*7)) $(tty)", "Enter");
      await waitUntil(async () => /before-42 /.test(await pane()), 10_000, "the shell");
      const clients = await tmux("list-clients");
      const tty = (await pane()).match(/before-42 (\S+)/)![1];
      await dumpAndRestore(t.pid, s.img);
      assert.equal(await tmux("list-clients"), clients);
      await tmux("send-keys", "-t", "t", "echo after-$((6*7)) $(tty)", "Enter");
      await waitUntil(async () => (await pane()).includes(`after-42 ${tty}`), 10_000, "the shell");
      // The client still draws the pane into script's pty: the typescript shows the answer.
      await waitUntil(
        () => Deno.readTextFileSync(`${s.dir}/ts`).includes(`after-42 ${tty}`),
        10_000,
        "the client to draw",
      );
    } finally {
      await tmux("kill-server");
      await killTree(t);
    }
  },
});

Deno.test({
  ...needs("`make -j2` dumped while gcc compiles finishes the build", notInstalled("make", "cc")),
  async fn() {
    using s = scratch("tardigrade-real-");
    // Each part is slow to compile (many functions) and returns its number: main prints 1+2+3.
    for (const i of [1, 2, 3]) {
      const bulk = Array.from(
        { length: 1200 },
        (_, k) => `int f${i}_${k}(int x) { return x * ${k} + (x >> 3) ^ ${k * 7}; }`,
      );
      Deno.writeTextFileSync(
        `${s.dir}/p${i}.c`,
        `${bulk.join("\n")}\nint part${i}(void) { return f${i}_1(${i}) - (${i} >> 3) ^ 7; }\n`,
      );
    }
    Deno.writeTextFileSync(
      `${s.dir}/main.c`,
      `#include <stdio.h>\nint part1(void), part2(void), part3(void);\n` +
        `int main(void) { printf("%d\\n", part1() + part2() + part3()); return 0; }\n`,
    );
    Deno.writeTextFileSync(
      `${s.dir}/Makefile`,
      "prog: main.o p1.o p2.o p3.o\n\tcc -o $@ $^\n%.o: %.c\n\tcc -O2 -c $< -o $@\n",
    );
    const t = await spawnTarget("make", ["-j2"], { cwd: s.dir });
    try {
      await waitUntil(
        () => childrenOf(t.pid).some((c) => childrenOf(c).length > 0),
        10_000,
        "cc to run cc1",
      );
      await dumpAndRestore(t.pid, s.img);
      await waitUntil(() => !isAlive(t.pid), 60_000, "make to finish");
      assert.match(t.output(), /cc -o prog main\.o p1\.o p2\.o p3\.o/);
      assert.ok(exists(`${s.dir}/prog`), t.output());
      const run = await new Deno.Command(`${s.dir}/prog`).output();
      assert.equal(new TextDecoder().decode(run.stdout), "6\n");
    } finally {
      await killTree(t);
    }
  },
});

Deno.test({
  ...needs(
    "GNU screen and a client attached in script's pty come back; the window goes on",
    notInstalled("screen", "script"),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    const env = { SCREENDIR: `${s.dir}/screens` };
    Deno.mkdirSync(env.SCREENDIR, { mode: 0o700 });
    Deno.chmodSync(env.SCREENDIR, 0o700); // screen insists, whatever the umask did
    const loop = "i=0; while :; do i=$((i+1)); echo tick $i; sleep 0.1; done";
    // The session in the foreground (-D -m) and a client attached to it, under one root.
    const t = await spawnTarget("sh", [
      "-c",
      `screen -D -m -S rw sh -c '${loop}' & sleep 0.3; script -qfc 'screen -x rw' ${s.dir}/ts; wait`,
    ], { env });
    const ticks = () =>
      exists(`${s.dir}/ts`)
        ? [...Deno.readTextFileSync(`${s.dir}/ts`).matchAll(/tick (\d+)/g)].map((m) => Number(m[1]))
        : [];
    try {
      await waitUntil(() => ticks().length >= 3, 10_000, "the client to show ticks");
      await dumpAndRestore(t.pid, s.img);
      const seen = Math.max(...ticks());
      await waitUntil(() => Math.max(...ticks()) >= seen + 5, 10_000, "more ticks");
      const ls = await new Deno.Command("screen", { args: ["-ls"], env, stdout: "piped" }).output();
      assert.match(new TextDecoder().decode(ls.stdout), /\.rw\s.*\(Attached\)/);
    } finally {
      await killTree(t);
    }
  },
});

Deno.test({
  ...needs(
    "`flock` waiting for a lock another process holds waits on, then takes it and runs its child",
    notInstalled("flock"),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    const lock = `${s.dir}/lk`;
    const holder = await spawnTarget("flock", [lock, "sleep", "1000"]);
    let waiter: Target | undefined;
    try {
      await waitUntil(() => childrenOf(holder.pid).length > 0, 5000, "the holder's child");
      waiter = await spawnTarget("flock", [lock, "echo", "got-it"]);
      const blocked = () => Deno.readTextFileSync("/proc/locks").includes(`-> FLOCK`);
      await waitUntil(blocked, 5000, "the waiter to block");
      await dumpAndRestore(waiter.pid, s.img);
      await new Promise((r) => setTimeout(r, 300));
      assert.ok(isAlive(waiter.pid) && waiter.output() === "", "it waits while the lock is held");
      await killTree(holder);
      await waitUntil(() => waiter!.output() === "got-it\n", 5000, "the waiter to take the lock");
    } finally {
      await killTree(holder);
      if (waiter) await waiter.kill();
    }
  },
});

Deno.test({
  ...needs(
    "`openssl s_server` with an `openssl s_client` outside goes on over the same TLS connection",
    notInstalled("openssl") ?? noNetworkLock(),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    const req = await new Deno.Command("openssl", {
      args: ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=rw"]
        .concat(["-keyout", `${s.dir}/key.pem`, "-out", `${s.dir}/cert.pem`]),
      stderr: "null",
    }).output();
    assert.ok(req.success);
    const port = 20000 + (Deno.pid % 20000);
    // -rev answers each line reversed: the server reads no stdin of its own.
    const server = await spawnTarget("openssl", [
      "s_server",
      "-accept",
      `127.0.0.1:${port}`,
      "-cert",
      `${s.dir}/cert.pem`,
      "-key",
      `${s.dir}/key.pem`,
      "-rev",
      "-quiet",
    ]);
    let client: Target | undefined;
    const answers = () => lines(client!).map((l) => [...l].reverse().join(""));
    try {
      const listening = () =>
        Deno.readTextFileSync("/proc/net/tcp").includes(
          `:${port.toString(16).toUpperCase()} 00000000:0000 0A`,
        );
      await waitUntil(listening, 5000, "the server to listen");
      client = await spawnTarget("sh", [
        "-c",
        `i=0; while :; do i=$((i+1)); echo line$i; sleep 0.05; done | ` +
        `openssl s_client -connect 127.0.0.1:${port} -quiet 2>/dev/null`,
      ]);
      await waitUntil(() => answers().length >= 5, 10_000, "answers");
      await dumpAndRestore(server.pid, s.img);
      const seen = answers().length;
      await waitUntil(() => answers().length > seen + 10, 10_000, "answers after the restore");
      answers().forEach((l, i) => assert.equal(l, `line${i + 1}`));
    } finally {
      if (client) await killTree(client);
      await server.kill();
    }
  },
});

Deno.test({
  ...needs(
    "dnsmasq answers DNS over UDP and TCP after a restore, and rereads its hosts on SIGHUP",
    notInstalled("dnsmasq", "python3"),
  ),
  async fn() {
    using s = scratch("tardigrade-real-");
    Deno.chmodSync(s.dir, 0o755); // dnsmasq reads its hosts file as nobody
    Deno.writeTextFileSync(`${s.dir}/hosts`, "10.1.2.3 foo.test\n");
    // One A query over UDP or TCP; prints the address answered, or "" for none.
    Deno.writeTextFileSync(
      `${s.dir}/q.py`,
      `import socket, struct, sys
port, name, tcp = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "tcp"
q = struct.pack(">6H", 0x1234, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack(">2H", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM)
s.settimeout(3); s.connect(("127.0.0.1", port))
if tcp:
    s.sendall(struct.pack(">H", len(q)) + q); r = s.recv(2); r = s.recv(struct.unpack(">H", r)[0])
else:
    s.send(q); r = s.recv(512)
print(".".join(map(str, r[-4:])) if struct.unpack(">H", r[6:8])[0] else "")
`,
    );
    const port = 20000 + ((Deno.pid + 7) % 20000);
    const ask = async (name: string, how: string) => {
      const out = await new Deno.Command("python3", {
        args: [`${s.dir}/q.py`, String(port), name, how],
        stdout: "piped",
      }).output();
      return new TextDecoder().decode(out.stdout).trim();
    };
    const t = await spawnTarget("dnsmasq", [
      "-k",
      "-C",
      "/dev/null",
      `--port=${port}`,
      "--listen-address=127.0.0.1",
      "--bind-interfaces",
      "--no-resolv",
      "--no-hosts",
      `--addn-hosts=${s.dir}/hosts`,
      "--address=/bar.test/10.9.9.9",
      `--pid-file=${s.dir}/pid`,
      "--log-facility=-",
    ], { ready: /read .*hosts/ });
    try {
      assert.equal(await ask("foo.test", "udp"), "10.1.2.3");
      await dumpAndRestore(t.pid, s.img);
      assert.equal(await ask("foo.test", "udp"), "10.1.2.3");
      assert.equal(await ask("bar.test", "tcp"), "10.9.9.9");
      Deno.writeTextFileSync(`${s.dir}/hosts`, "10.4.5.6 foo.test\n");
      Deno.kill(t.pid, "SIGHUP");
      await waitUntil(async () => await ask("foo.test", "udp") === "10.4.5.6", 5000, "the reread");
    } finally {
      await killTree(t);
    }
  },
});
