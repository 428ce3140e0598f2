/**
 * One descriptor of every kind the file handlers know (tests/fixtures/fd_zoo.c) through
 * checkpoint() and restore(): the image holds what /proc shows, a dump that leaves the process
 * running leaves its descriptors as they were, and the restored process has the same ones.
 */
import assert from "node:assert/strict";
import { close, O, open, pidfdGetfd, pidfdOpen, pread } from "../ffi/mod.ts";
import { checkpoint, type Fd, ImageReader, Process, restore } from "../mod.ts";
import type { FdEntry, FileEntry, ProcessEntry } from "../image.ts";
import type { EpollEntry } from "../lib/files/epoll.ts";
import type { EventfdEntry } from "../lib/files/eventfd.ts";
import type { InotifyEntry } from "../lib/files/inotify.ts";
import type { MemfdEntry } from "../lib/files/memfd.ts";
import { type FifoEntry, peekPipe, type PipeEntry } from "../lib/files/pipe.ts";
import { handlerForEntry, handlerForFd } from "../lib/files/registry.ts";
import type { RegularEntry } from "../lib/files/regular.ts";
import type { SignalfdEntry } from "../lib/files/signalfd.ts";
import type { TimerfdEntry } from "../lib/files/timerfd.ts";
import { bytesQueued } from "../lib/files/util.ts";
import { deviceHandler } from "../lib/files/device.ts";
import { regularHandler } from "../lib/files/regular.ts";
import { fixture, killAndReap, spawnTarget, type Target, withTarget } from "./helpers.ts";

// Descriptor numbers fixed by tests/fixtures/fd_zoo.c.
const FD = {
  FILE: 10,
  RO: 11,
  DIR: 12,
  NULL: 13,
  PIPE_R: 14,
  PIPE_W: 15,
  FIFO: 16,
  EVENT: 17,
  EPOLL: 18,
  SIGNAL: 19,
  TIMER: 20,
  MEMFD: 21,
  INOTIFY: 22,
  DELETED: 23,
  LONE_W: 24,
  SEM: 25,
  TICKS: 26,
  ABS: 27,
  INOTIFY2: 28,
} as const;

const text = (b: Uint8Array) => new TextDecoder().decode(b);

/** What a checkpoint of the zoo wrote, with what /proc showed of its descriptors before. */
interface Dumped {
  files: FileEntry[];
  fds: FdEntry[];
  /** The contents of the image's memory objects (memfds, deleted files), by id. */
  objects: Map<number, Uint8Array>;
  byFd: Map<number, Fd>;
}

function readContents(fd: number): Uint8Array {
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const buf = new Uint8Array(65536);
    const n = pread(fd, buf, total);
    if (n === 0) break;
    chunks.push(buf.subarray(0, n));
    total += n;
  }
  const out = new Uint8Array(total);
  let off = 0;
  for (const c of chunks) out.set(c, (off += c.length) - c.length);
  return out;
}

/** The descriptors of `pid` as /proc shows them, by number. */
async function fdsByNumber(pid: number): Promise<Map<number, Fd>> {
  const fds = await Array.fromAsync((await Process.open(pid)).fds());
  return new Map(fds.map((fd) => [fd.fd, fd]));
}

/** Checkpoints the zoo into `dir` (ending it unless `leaveRunning`) and reads the image back. */
async function dumpZoo(t: Target, dir: string, leaveRunning: boolean): Promise<Dumped> {
  const byFd = await fdsByNumber(t.pid);
  await checkpoint(t.pid, dir, { leaveRunning });
  using image = await ImageReader.open(dir, { verify: true });
  const p = await image.readMeta<ProcessEntry>("process");
  const objects = new Map(p.objects.map((o) => {
    const bytes = new Uint8Array(o.size);
    for (const run of o.pages) {
      const data = image.readExtent(p.extents[run.extent]).subarray(run.offset);
      const at = Number(run.start);
      bytes.set(data.subarray(0, Math.min(run.length, o.size - at)), at);
    }
    return [o.id, bytes];
  }));
  return { files: p.files, fds: p.fds, objects, byFd };
}

function fileOf<E extends FileEntry>(d: Dumped, fd: number): E {
  const id = d.fds.find((f) => f.fd === fd)!.file;
  return d.files.find((f) => f.id === id)! as E;
}

/** The zoo on a scratch directory of its own (which it watches), and a directory for images. */
async function startZoo(): Promise<{ t: Target; dir: string; img: string }> {
  const dir = Deno.makeTempDirSync({ prefix: "tardigrade-zoo-" });
  const img = `${Deno.makeTempDirSync({ prefix: "tardigrade-zoo-img-" })}/img`;
  const t = await spawnTarget(await fixture("fd_zoo"), [dir], { ready: /READY/ });
  return { t, dir, img };
}

Deno.test("files: dumping every kind matches /proc and leaves the process as it was", async () => {
  const { t, dir, img } = await startZoo();
  try {
    await withTarget(t, async (t) => {
      assert.equal(await t.check(), "PASS");
      const d = await dumpZoo(t, img, true);
      // The pipe and FIFO data were peeked, not read; positions and counts untouched.
      assert.equal(await t.check(), "PASS");
      for (const fd of d.byFd.values()) {
        const e = fileOf(d, fd.fd);
        assert.equal(e.flags, fd.flags, `flags of fd ${fd.fd}`);
      }
      const file = fileOf<RegularEntry>(d, FD.FILE);
      assert.equal(file.kind, "regular");
      assert.equal(file.path, `${dir}/appended`);
      assert.equal(file.position, 12n);
      assert.equal(file.size, 12);
      assert.ok(file.flags & O.APPEND);
      assert.equal(fileOf<RegularEntry>(d, FD.RO).position, 3n);
      const dirEntry = fileOf<RegularEntry>(d, FD.DIR);
      assert.equal(dirEntry.directory, true);
      assert.equal(dirEntry.path, dir);
      assert.equal(fileOf(d, FD.NULL).kind, "device");
      assert.equal(fileOf(d, FD.NULL).path, "/dev/null");

      const r = fileOf<PipeEntry>(d, FD.PIPE_R), w = fileOf<PipeEntry>(d, FD.PIPE_W);
      assert.equal(r.pipe, w.pipe);
      assert.equal(r.end, "read");
      assert.equal(w.end, "write");
      assert.equal(r.size, 128 * 1024);
      assert.equal(text(r.data) + text(w.data), "pipe data 123", "data stored once");
      const fifo = fileOf<FifoEntry>(d, FD.FIFO);
      assert.equal(fifo.path, `${dir}/fifo`);
      assert.equal(text(fifo.data), "fifo bytes");

      const ev = fileOf<EventfdEntry>(d, FD.EVENT);
      assert.equal(ev.count, 5n);
      assert.equal(ev.semaphore, false);
      assert.ok(ev.flags & O.NONBLOCK);
      const ep = fileOf<EpollEntry>(d, FD.EPOLL);
      assert.deepEqual(
        ep.watches.map((w) => [w.tfd, w.data, w.stale ?? false]).sort(),
        [[FD.PIPE_R, 0x2222n, false], [FD.EVENT, 0x1111n, false]].sort(),
      );
      assert.equal(fileOf<SignalfdEntry>(d, FD.SIGNAL).sigmask, (1n << 11n) | (1n << 27n));
      const tm = fileOf<TimerfdEntry>(d, FD.TIMER);
      assert.deepEqual(tm.interval, { sec: 7n, nsec: 0n });
      assert.ok(tm.value.sec > 900n && tm.value.sec < 1000n);
      assert.equal(tm.clockid, 1);
      const mf = fileOf<MemfdEntry>(d, FD.MEMFD);
      assert.equal(mf.position, 4n);
      assert.equal(text(d.objects.get(mf.object)!), "memfd contents");
      const ino = fileOf<InotifyEntry>(d, FD.INOTIFY);
      assert.equal(ino.watches.length, 1);
      assert.equal(ino.watches[0].path, dir);
      assert.equal(ino.watches[0].wd, 1);
      assert.equal(ino.watches[0].mask, 0x300);
      const del = fileOf<RegularEntry>(d, FD.DELETED);
      assert.equal(del.path, `${dir}/deleted`);
      assert.equal(text(d.objects.get(del.object!)!), "deleted file");
      const lone = fileOf<PipeEntry>(d, FD.LONE_W);
      assert.equal(lone.end, "write");
      assert.equal(text(lone.data), "lone");
      assert.equal(fileOf<EventfdEntry>(d, FD.SEM).semaphore, true);
      assert.equal(fileOf<TimerfdEntry>(d, FD.TICKS).ticks, 1n);
      assert.equal(fileOf<TimerfdEntry>(d, FD.ABS).settimeFlags, 3);
      assert.deepEqual(
        fileOf<InotifyEntry>(d, FD.INOTIFY2).watches.map((w) => [w.wd, w.path]),
        [[2, `${dir}/sub`]],
      );
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
    Deno.removeSync(img.replace(/\/img$/, ""), { recursive: true });
  }
});

Deno.test("files: every kind comes back through restore() with the same descriptors", async () => {
  const { t, dir, img } = await startZoo();
  try {
    await withTarget(t, async (t) => {
      const d = await dumpZoo(t, img, false);
      await killAndReap(t.pid);
      const r = await restore(img);
      assert.equal(r.pid, t.pid);
      await compare(d, t.pid);
      // Its pipe and FIFO data, positions, counts and ticks, as it checks them itself.
      assert.equal(await t.check(), "PASS", t.output());
    });
  } finally {
    Deno.removeSync(dir, { recursive: true });
    Deno.removeSync(img.replace(/\/img$/, ""), { recursive: true });
  }
});

/** Compares the descriptors of the restored `pid` with what /proc showed before the dump. */
async function compare(d: Dumped, pid: number): Promise<void> {
  const got = await fdsByNumber(pid);
  assert.deepEqual([...got.keys()], [...d.byFd.keys()]);
  for (const [n, was] of d.byFd) {
    const now = got.get(n)!;
    assert.equal(now.kind, was.kind, `kind of fd ${n}`);
    assert.equal(now.flags & ~O.CLOEXEC, was.flags & ~O.CLOEXEC, `flags of fd ${n}`);
    assert.equal(now.position, was.position, `position of fd ${n}`);
    if (["file", "directory", "device"].includes(was.kind)) {
      assert.equal(now.target, was.target, `path of fd ${n}`);
    }
  }
  // Shared open files stay shared (stdout and stderr), the pipe ends are one pipe.
  assert.equal(got.get(1)!.fileId, got.get(2)!.fileId);
  assert.equal(got.get(FD.PIPE_R)!.inode, got.get(FD.PIPE_W)!.inode);
  assert.notEqual(got.get(FD.PIPE_R)!.inode, d.byFd.get(FD.PIPE_R)!.inode);

  const info = (n: number) => got.get(n)!.info as Record<string, unknown>;
  assert.equal(info(FD.EVENT).count, 5n);
  assert.deepEqual(
    (info(FD.EPOLL).targets as { tfd: number; events: number; data: bigint }[])
      .map((t) => [t.tfd, t.events, t.data]).sort(),
    (d.byFd.get(FD.EPOLL)!.info as { targets: { tfd: number; events: number; data: bigint }[] })
      .targets.map((t) => [t.tfd, t.events, t.data]).sort(),
  );
  assert.equal(info(FD.SIGNAL).sigmask, (1n << 11n) | (1n << 27n));
  assert.deepEqual(info(FD.TIMER).interval, { sec: 7n, nsec: 0n });
  const left = info(FD.TIMER).value as { sec: bigint };
  assert.ok(left.sec > 900n && left.sec < 1000n, `timer left ${left.sec}`);
  const watches = info(FD.INOTIFY).watches as { wd: number; mask: number; ino: bigint }[];
  const was = (d.byFd.get(FD.INOTIFY)!.info as { watches: typeof watches }).watches;
  assert.deepEqual(
    watches.map((w) => [w.wd, w.mask, w.ino]),
    was.map((w) => [w.wd, w.mask, w.ino]),
  );

  assert.equal(info(FD.SEM).count, 3n);
  assert.equal(info(FD.SEM).semaphore, true);
  assert.equal(info(FD.TICKS).ticks, 1n);
  assert.equal(info(FD.ABS).settimeFlags, 3);
  const abs = info(FD.ABS).value as { sec: bigint };
  assert.ok(abs.sec > 400n && abs.sec <= 500n, `abs timer left ${abs.sec}`);
  const w2 = info(FD.INOTIFY2).watches as { wd: number; mask: number }[];
  assert.deepEqual(w2.map((w) => [w.wd, w.mask]), [[2, 0x4]]);
  // The IN_IGNORED events of the burnt wd 1 were read away.
  const pidfd = pidfdOpen(pid);
  const ino2 = pidfdGetfd(pidfd, FD.INOTIFY2);
  close(pidfd);
  try {
    assert.equal(bytesQueued(ino2), 0);
  } finally {
    close(ino2);
  }
  assert.equal(text(peekPipe(pid, FD.LONE_W).data), "lone");
  const del = open(`/proc/${pid}/fd/${FD.DELETED}`, O.RDONLY);
  try {
    assert.equal(text(readContents(del)), "deleted file");
  } finally {
    close(del);
  }

  // Pipe data readable (peeked) through the stub's read end; its capacity came back.
  const pipe = peekPipe(pid, FD.PIPE_R);
  assert.equal(text(pipe.data), "pipe data 123");
  assert.equal(pipe.size, 128 * 1024);
  assert.equal(text(peekPipe(pid, FD.FIFO).data), "fifo bytes");
  // The memfd's contents, through the stub's fd.
  const m = open(`/proc/${pid}/fd/${FD.MEMFD}`, O.RDONLY);
  try {
    assert.equal(text(readContents(m)), "memfd contents");
  } finally {
    close(m);
  }
}

Deno.test("files: kinds without a handler are named, not guessed", () => {
  for (const kind of ["userfaultfd", "other"] as const) {
    assert.equal(handlerForFd({ kind } as Fd), undefined);
  }
  assert.equal(handlerForEntry({ id: 1, kind: "userfaultfd", flags: 0 }), undefined);
  // Sockets have a handler; its dump refuses the kinds it cannot restore (tests/sockets_test.ts).
  assert.equal(handlerForFd({ kind: "socket" } as Fd)?.kind, "socket");
});

Deno.test("files: check() refuses files that changed since the dump", () => {
  const dir = Deno.makeTempDirSync({ prefix: "tardigrade-check-" });
  try {
    const path = `${dir}/f`;
    Deno.writeTextFileSync(path, "0123456789");
    const st = Deno.statSync(path);
    const base = {
      id: 1,
      kind: "regular" as const,
      path,
      directory: false,
      position: 8n,
      size: 10,
      mtimeMs: st.mtime!.getTime(),
      inode: BigInt(st.ino!),
      dev: BigInt(st.dev),
    };
    const ro = { ...base, flags: O.RDONLY };
    const rw = { ...base, flags: O.RDWR };
    assert.equal(regularHandler.check!(ro), null);
    Deno.writeTextFileSync(path, "01234567890123");
    assert.match(regularHandler.check!(ro)!, /changed since the dump/);
    assert.equal(regularHandler.check!(rw), null, "a written file may grow");
    Deno.writeTextFileSync(path, "0123");
    assert.match(regularHandler.check!(rw)!, /shorter \(4\) than the dumped position 8/);
    Deno.removeSync(path);
    assert.match(regularHandler.check!(rw)!, /no longer exists/);
    assert.match(
      regularHandler.check!({ ...base, flags: 0, path: dir, directory: false })!,
      /no longer a regular file/,
    );
    const zero = Deno.statSync("/dev/zero").rdev!;
    const dev = { id: 2, kind: "device" as const, flags: O.RDWR, path: "/dev/null", tty: false };
    assert.match(
      deviceHandler.check!({ ...dev, rdev: BigInt(zero), position: 0n })!,
      /no longer the same device/,
    );
  } finally {
    Deno.removeSync(dir, { recursive: true });
  }
});
