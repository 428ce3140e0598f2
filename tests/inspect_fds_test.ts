import assert from "node:assert/strict";
import { type Fd, FileTable, Process } from "../mod.ts";
import { fixture, spawnTarget, withTarget } from "./helpers.ts";

// Files the fixtures map or hold stay until the module is done.
const tempDirs: string[] = [];
globalThis.addEventListener("unload", () => {
  for (const dir of tempDirs) Deno.removeSync(dir, { recursive: true });
});

async function startFdsFixture() {
  const dir = Deno.makeTempDirSync({ prefix: "inspect-fds-" });
  tempDirs.push(dir);
  const t = await spawnTarget(await fixture("inspect_fds"), [`${dir}/file`, `${dir}/fifo`], {
    ready: /READY \d+ child \d+/,
  });
  const child = Number((await t.waitFor(/READY \d+ child (\d+)/))[1]);
  const numbers = new Map<string, number>();
  for (const m of t.output().matchAll(/^fd (\w+) (\d+)$/gm)) numbers.set(m[1], Number(m[2]));
  return { t, child, numbers, dir };
}

Deno.test("fds: the kind of every descriptor, and its fdinfo", async () => {
  const { t, numbers, dir } = await startFdsFixture();
  await withTarget(t, async () => {
    const p = await Process.open(t.pid);
    const fds = await Array.fromAsync(p.fds());
    const byNumber = new Map(fds.map((f) => [f.fd, f]));
    const fd = (name: string): Fd => byNumber.get(numbers.get(name)!)!;
    const expected: Record<string, string> = {
      file: "file",
      dup: "file",
      independent: "file",
      directory: "directory",
      pipe: "pipe",
      fifo: "fifo",
      socket: "socket",
      eventfd: "eventfd",
      epoll: "epoll",
      signalfd: "signalfd",
      timerfd: "timerfd",
      inotify: "inotify",
      memfd: "memfd",
      null: "device",
      tty: "tty",
      pidfd: "pidfd",
    };
    for (const [name, kind] of Object.entries(expected)) assert.equal(fd(name).kind, kind, name);
    const listed = fds.map((f) => f.fd);
    assert.deepEqual(listed, [...listed].sort((a, b) => a - b));
    for (const n of [0, 1, 2, ...numbers.values()]) assert.ok(listed.includes(n), `fd ${n}`);

    assert.equal(fd("file").target, `${dir}/file`);
    assert.equal(fd("file").position, 5n);
    assert.equal(fd("file").flags & 3, 2); // O_RDWR
    assert.equal(fd("independent").closeOnExec, true);
    assert.equal(fd("file").closeOnExec, false);
    assert.equal(fd("file").mode & 0o777, 0o600);
    assert.equal(fd("file").inode, BigInt(Deno.statSync(`${dir}/file`).ino!));
    assert.ok(fd("file").mntId > 0);
    assert.equal(fd("null").target, "/dev/null");

    assert.deepEqual(fd("eventfd").info, {
      count: 7n,
      id: (fd("eventfd").info as { id: number }).id,
      semaphore: false,
    });
    assert.deepEqual(
      (fd("epoll").info as { targets: { tfd: number; data: bigint }[] }).targets.map((
        x,
      ) => [x.tfd, x.data]),
      [[numbers.get("eventfd"), 0xabcn]],
    );
    assert.deepEqual(fd("signalfd").info, { sigmask: 1n << 11n }); // SIGUSR2
    const timer = fd("timerfd").info as { clockid: number; interval: { sec: bigint } };
    assert.equal(timer.clockid, 1);
    assert.equal(timer.interval.sec, 5n);
    const watches = (fd("inotify").info as { watches: { wd: number; ino: bigint }[] }).watches;
    assert.deepEqual(watches.map((w) => [w.wd, w.ino]), [[1, BigInt(Deno.statSync("/tmp").ino!)]]);
    assert.equal((fd("pidfd").info as { pid: number }).pid, t.pid);
  });
});

Deno.test("fds: fileId is shared by dup and fork, not by an independent open", async () => {
  const { t, child, numbers } = await startFdsFixture();
  await withTarget(t, async () => {
    const files = new FileTable();
    const parent = await Array.fromAsync((await Process.open(t.pid)).fds({ files }));
    const kid = await Array.fromAsync((await Process.open(child)).fds({ files }));
    const id = (list: Fd[], name: string) => list.find((f) => f.fd === numbers.get(name))!.fileId;
    assert.equal(id(parent, "dup"), id(parent, "file"));
    assert.notEqual(id(parent, "independent"), id(parent, "file"));
    for (const name of numbers.keys()) assert.equal(id(kid, name), id(parent, name), name);
    // distinct open files get distinct ids (the anonymous-inode kinds share one inode)
    const ids = new Set(parent.map((f) => f.fileId));
    // all distinct but the dup, and stderr which the shell made a dup of stdout (2>&1)
    assert.equal(ids.size, parent.length - 2);
  });
});
