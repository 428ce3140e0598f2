/**
 * The network lock (lib/network/lock.ts) over real loopback TCP and Debian's nft and iptables: a
 * peer outside the dump (this test process) keeps sending to a client (tests/fixtures/
 * tcp_client.c) while it is dumped and for 2 s before its restore, and sees no reset: the client
 * reads every byte in order and checks itself, the peer reads every byte of the client's. The
 * lock is in netfilter from the dump to the restore, recorded in the image, and gone after; where
 * nft is missing it is an iptables chain. The lock of a dumper killed with SIGKILL before it wrote
 * its image is removed by `tardigrade unlock DIR`; so is an image's, after which the peer gets
 * the reset the lock held back.
 */
import assert from "node:assert/strict";
import { checkpoint, ImageReader, restore, unlockNetwork } from "../mod.ts";
import type { ProcessEntry } from "../image.ts";
import { validateProcessEntry } from "../lib/image/validate.ts";
import { lockNameFor } from "../lib/network/lock.ts";
import {
  cli,
  exists,
  fixture,
  needs,
  notInstalled,
  onPath,
  runDeno,
  spawnTarget,
  streamBytes,
  type Target,
  waitUntil,
} from "./helpers.ts";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const WRITE = 256 << 10; // the client's bytes, read by the peer
const READ = 6 << 20; // the peer's bytes, sent 16 KiB every 10 ms: about 4 s of sending
const CHUNK = 16 << 10;

/** Whether `program args` succeeds (the lock object is there). */
async function succeeds(program: string, ...args: string[]): Promise<boolean> {
  const out = await new Deno.Command(program, { args, stdout: "null", stderr: "null" }).output();
  return out.success;
}

const nftHas = (name: string) => succeeds("nft", "list", "table", "inet", name);
const iptablesHas = (name: string) => succeeds("iptables", "-w", "-S", name);

/** The peer's side of a connection: sends stream 2 at a steady pace and reads stream 1. */
class Peer {
  sent = 0;
  read = 0;
  error: Error | undefined;
  readonly done: Promise<void>;

  constructor(readonly conn: Deno.TcpConn) {
    const fail = (err: Error) => void (this.error ??= err);
    this.done = Promise.all([this.#send().catch(fail), this.#receive().catch(fail)]).then(() => {});
  }

  async #send(): Promise<void> {
    while (this.sent < READ && !this.error) {
      const chunk = streamBytes(2, this.sent, Math.min(CHUNK, READ - this.sent));
      for (let off = 0; off < chunk.length;) off += await this.conn.write(chunk.subarray(off));
      this.sent += chunk.length;
      await sleep(10);
    }
  }

  async #receive(): Promise<void> {
    const buf = new Uint8Array(65536);
    while (this.read < WRITE && !this.error) {
      const n = await this.conn.read(buf);
      if (n === null) throw new Error(`EOF after ${this.read} bytes of the client's`);
      assert.deepEqual(buf.subarray(0, n), streamBytes(1, this.read, n), "the client's bytes");
      this.read += n;
    }
  }
}

/**
 * A client connected to a listener of this process, exchanging bytes with its `Peer` when `body`
 * runs (both streams under way); cleans up after.
 */
async function withClient(
  body: (t: Target, peer: Peer, dir: string) => Promise<void>,
): Promise<void> {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const dir = await Deno.makeTempDir({ prefix: "tardigrade-netlock-" });
  const t = await spawnTarget(
    await fixture("tcp_client"),
    [String(listener.addr.port), String(WRITE), String(READ)],
    { ready: /^(READY|SETUP FAILED)/m },
  );
  let peer: Peer | undefined;
  try {
    assert.match(t.output(), /^READY /m, t.output());
    peer = new Peer(await listener.accept());
    Deno.kill(t.pid, "SIGUSR2"); // the client writes, then reads
    await waitUntil(() => peer!.sent >= READ / 8 || !!peer!.error, 30_000, "the peer to send");
    assert.equal(peer.error, undefined);
    await body(t, peer, dir);
  } finally {
    await t.kill();
    try {
      peer?.conn.close();
    } catch { /* closed */ }
    await peer?.done;
    listener.close();
    await unlockNetwork(`${dir}/img`).catch(() => {}); // a failed test leaves no lock behind
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
}

/** The client read every byte in order and checks itself; the peer saw no reset. */
async function deliveredInOrder(t: Target, peer: Peer): Promise<void> {
  await t.waitFor(/^DONE /m, 60_000);
  await peer.done;
  assert.equal(peer.error, undefined, "the peer's side of the connection failed");
  assert.equal(peer.read, WRITE);
  assert.equal(peer.sent, READ);
  assert.equal(await t.check(), "PASS", t.output());
}

async function lockOf(dir: string): Promise<ProcessEntry["networkLock"]> {
  using image = await ImageReader.open(dir);
  return (await image.readMeta<ProcessEntry>("process")).networkLock;
}

Deno.test(
  needs(
    "network lock: a peer sending during the dump and a 2 s gap sees no reset; nft table gone after",
    notInstalled("nft"),
  ),
  async () => {
    await withClient(async (t, peer, dir) => {
      await checkpoint(t.pid, `${dir}/img`);
      assert.ok(!t.alive(), "the client still runs after the dump");
      const lock = await lockOf(`${dir}/img`);
      assert.equal(lock?.method, "nftables");
      assert.equal(lock?.name, lockNameFor(`${dir}/img`));
      assert.equal(lock?.connections.length, 1);
      assert.match(lock!.connections[0].local, /^127\.0\.0\.1:\d+$/);
      assert.ok(await nftHas(lock!.name), "no nft table after the dump");

      const before = peer.sent;
      await sleep(2000);
      assert.ok(peer.sent > before, "the peer sent nothing while the client was away");
      assert.equal(peer.error, undefined, "the peer's side failed before the restore");

      const r = await restore(`${dir}/img`);
      assert.equal(r.pid, t.pid);
      assert.deepEqual(r.warnings.filter((w) => /network lock/.test(w)), []);
      assert.ok(!(await nftHas(lock!.name)), "the nft table outlived the restore");
      await deliveredInOrder(t, peer);
    });
  },
);

/** A directory of links to the commands of `names` only, for a PATH without the others. */
function pathWith(names: string[]): string {
  const bin = Deno.makeTempDirSync({ prefix: "tardigrade-path-" });
  for (const name of names) Deno.symlinkSync(onPath(name)!, `${bin}/${name}`);
  return bin;
}

Deno.test(
  needs(
    "network lock: where nft is missing an iptables chain holds the connection, gone after restore",
    notInstalled("iptables", "ip6tables"),
  ),
  async () => {
    const bin = pathWith(["iptables", "ip6tables"]);
    try {
      await withClient(async (t, peer, dir) => {
        // Without nft on its PATH, the dumper falls back to iptables.
        const run = await runDeno(["main.ts", "dump", String(t.pid), `${dir}/img`], {
          PATH: `${bin}:/usr/bin`,
        });
        assert.equal(run.code, 0, run.stderr);
        const lock = await lockOf(`${dir}/img`);
        assert.equal(lock?.method, "iptables");
        assert.ok(await iptablesHas(lock!.name), "no iptables chain after the dump");

        await sleep(2000);
        assert.equal(peer.error, undefined, "the peer's side failed before the restore");
        await restore(`${dir}/img`);
        assert.ok(!(await iptablesHas(lock!.name)), "the iptables chain outlived the restore");
        await deliveredInOrder(t, peer);
      });
    } finally {
      await Deno.remove(bin, { recursive: true });
    }
  },
);

Deno.test(
  needs(
    "network lock: a dumper killed with SIGKILL before its image leaves its lock to `unlock DIR`",
    notInstalled("nft"),
  ),
  async () => {
    await withClient(async (t, _peer, dir) => {
      const mark = `${dir}/after-dump`;
      const policy = `${dir}/policy.ts`;
      // The dump stops where everything is read but the image is not yet written.
      Deno.writeTextFileSync(
        policy,
        `export default { afterDump() { Deno.writeTextFileSync(${JSON.stringify(mark)}, ""); ` +
          `return new Promise((r) => setTimeout(r, 600_000)); } };\n`,
      );
      const dumper = new Deno.Command(Deno.execPath(), {
        args: ["run", "-A", "main.ts", "dump", String(t.pid), `${dir}/img`, "--policy", policy],
        cwd: new URL("../", import.meta.url).pathname,
        stdin: "null",
        stdout: "null",
        stderr: "null",
      }).spawn();
      try {
        await waitUntil(() => exists(mark), 30_000, "the dump to reach its policy's afterDump");
        const name = lockNameFor(`${dir}/img`);
        assert.ok(await nftHas(name), "no nft table during the dump");
        dumper.kill("SIGKILL");
        await dumper.status;
        assert.ok(await nftHas(name), "the killed dumper's table is gone: nothing to test");

        const run = await cli("unlock", `${dir}/img`);
        assert.equal(run.code, 0, run.stderr);
        assert.equal(run.stdout, `removed the network lock ${name} (nftables)\n`);
        assert.ok(!(await nftHas(name)), "the nft table outlived unlock");
        const again = await cli("unlock", `${dir}/img`);
        assert.equal(again.stdout, `no network lock of ${dir}/img\n`);
      } finally {
        try {
          dumper.kill("SIGKILL");
        } catch { /* ended */ }
        await dumper.status;
      }
    });
  },
);

Deno.test(
  needs(
    "network lock: unlockNetwork frees a dumped image's connections, whose peer then gets a reset",
    notInstalled("nft"),
  ),
  async () => {
    await withClient(async (t, peer, dir) => {
      await checkpoint(t.pid, `${dir}/img`);
      const name = (await lockOf(`${dir}/img`))!.name;
      // The name goes to nft: a forged one is refused before anything runs.
      using image = await ImageReader.open(`${dir}/img`);
      const root = await image.readMeta<ProcessEntry>("process");
      const forged = { ...root, networkLock: { ...root.networkLock!, name: "x; flush ruleset" } };
      assert.throws(
        () => validateProcessEntry("process.cbor", forged),
        /malformed process entry \(networkLock\.name is text "x; flush ruleset", not tardigrade-/,
      );
      await sleep(500);
      assert.equal(peer.error, undefined, "the peer's side failed while locked");
      assert.deepEqual(await unlockNetwork(`${dir}/img`), { removed: [`${name} (nftables)`] });
      assert.ok(!(await nftHas(name)), "the nft table outlived unlockNetwork");
      // What the lock held back: no socket has the connection any more.
      await waitUntil(() => peer.error !== undefined, 30_000, "the peer to get a reset");
      assert.match(String(peer.error), /ConnectionReset|reset/i);
    });
  },
);
