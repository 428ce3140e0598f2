/**
 * Real programs on the socket kinds besides TCP, UDP and UNIX: `ping` over an ICMP "ping" socket
 * (when net.ipv4.ping_group_range lets it make one) and over a raw socket (when it does not), each
 * dumped, killed, restored, and seen to go on getting its replies; `ip monitor` (a netlink route
 * socket bound to multicast groups) seen to go on reporting changes after a restore.
 */
import assert from "node:assert/strict";
import { checkpoint, DumpError, restore } from "../mod.ts";
import {
  needs,
  notInstalled,
  PING_GROUPS,
  setSysctls,
  spawnTarget,
  type Target,
  waitUntil,
} from "./helpers.ts";

/** The inodes of the sockets process `pid` holds. */
function socketInodes(pid: number): string[] {
  return [...Deno.readDirSync(`/proc/${pid}/fd`)].flatMap((e) => {
    try {
      const m = Deno.readLinkSync(`/proc/${pid}/fd/${e.name}`).match(/^socket:\[(\d+)\]$/);
      return m ? [m[1]] : [];
    } catch {
      return [];
    }
  });
}

/** Whether /proc/PID/net/TABLE lists one of process `pid`'s sockets. */
function listedIn(pid: number, table: string): boolean {
  const inodes = socketInodes(pid);
  return Deno.readTextFileSync(`/proc/${pid}/net/${table}`).split("\n").slice(1)
    .some((line) => inodes.includes(line.trim().split(/\s+/)[9]));
}

const lastSeq = (t: Target) =>
  Math.max(0, ...[...t.output().matchAll(/icmp_seq=(\d+)/g)].map((m) => Number(m[1])));

/** Dumps `ping` once it has had replies, restores it, and waits for replies to later requests. */
async function pingGoesOn(table: string): Promise<void> {
  const t = await spawnTarget("ping", ["-n", "-i", "0.2", "127.0.0.1"], { ready: /icmp_seq=3 / });
  const img = await Deno.makeTempDir({ prefix: "tardigrade-kinds-" });
  try {
    assert.ok(listedIn(t.pid, table), `ping holds no socket of /proc/net/${table}`);
    await checkpoint(t.pid, `${img}/image`);
    const atDump = lastSeq(t);
    const r = await restore(`${img}/image`);
    assert.equal(r.pid, t.pid);
    await waitUntil(
      () => lastSeq(t) >= atDump + 3,
      10000,
      () => `replies after ${atDump}:\n${t.output()}`,
    );
    assert.doesNotMatch(t.output(), /unreachable|error|denied/i, t.output());
  } finally {
    await t.kill();
    await Deno.remove(img, { recursive: true }).catch(() => {});
    await Deno.remove(t.outPath).catch(() => {});
  }
}

Deno.test(
  needs("socket kinds: ping over a ping socket goes on after a restore", notInstalled("ping")),
  async () => {
    using _sysctls = setSysctls(PING_GROUPS);
    await pingGoesOn("icmp");
  },
);

Deno.test(
  needs("socket kinds: ping over a raw socket goes on after a restore", notInstalled("ping")),
  async () => {
    using _sysctls = setSysctls({ "net/ipv4/ping_group_range": "1 0" });
    await pingGoesOn("raw");
  },
);

Deno.test(
  needs("socket kinds: ip monitor goes on reporting after a restore", notInstalled("ip")),
  async () => {
    const t = await spawnTarget("ip", ["-o", "monitor", "address"]);
    const img = await Deno.makeTempDir({ prefix: "tardigrade-kinds-" });
    // An address of the loopback range, on lo, for a moment: nothing else sees it.
    const address = `127.77.${(Deno.pid >> 8) & 255}.${Deno.pid & 255}/32`;
    const ip = (...args: string[]) => new Deno.Command("ip", { args, stderr: "null" }).output();
    try {
      await waitUntil(() => listedInNetlink(t.pid), 5000, () => `ip monitor's netlink socket`);
      // A change elsewhere on the machine may wait unread at the freeze: refused, it reads on.
      for (let attempt = 1;; attempt++) {
        try {
          await checkpoint(t.pid, `${img}/image`);
          break;
        } catch (err) {
          if (attempt === 5 || !/messages waiting to be read/.test(String(err))) throw err;
          await new Promise((r) => setTimeout(r, 200));
        }
      }
      const r = await restore(`${img}/image`);
      assert.equal(r.pid, t.pid);
      assert.ok((await ip("addr", "add", address, "dev", "lo")).success, `ip addr add ${address}`);
      await ip("addr", "del", address, "dev", "lo");
      await waitUntil(
        () => t.output().includes(address.replace("/32", "")) && /Deleted/.test(t.output()),
        10000,
        () => `ip monitor to report ${address} added and deleted:\n${t.output()}`,
      );
    } finally {
      await ip("addr", "del", address, "dev", "lo");
      await t.kill();
      await Deno.remove(img, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);

/** Whether process `pid` holds a bound netlink socket (it has subscribed). */
function listedInNetlink(pid: number): boolean {
  const inodes = socketInodes(pid);
  return Deno.readTextFileSync(`/proc/${pid}/net/netlink`).split("\n").slice(1)
    .some((line) => inodes.includes(line.trim().split(/\s+/).at(-1)!));
}

/** Holds a packet socket with a receive ring, and a netlink socket with an answer unread. */
const UNKEEPABLE_PY = `import os, socket, struct, time
ring = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
ring.setsockopt(263, 5, struct.pack("IIII", 4096, 1, 2048, 2))  # PACKET_RX_RING
rtnl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
rtnl.bind((0, 0))
# RTM_GETLINK dump, never read: the kernel's answer waits in the queue.
rtnl.send(struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16))
print("READY", os.getpid(), ring.fileno(), rtnl.fileno(), flush=True)
while True:
    time.sleep(1)
`;

Deno.test(
  needs(
    "socket kinds: a packet ring and a netlink answer unread are refused, naming them",
    notInstalled("python3"),
  ),
  async () => {
    const base = await Deno.makeTempDir({ prefix: "tardigrade-kinds-" });
    await Deno.writeTextFile(`${base}/u.py`, UNKEEPABLE_PY);
    const t = await spawnTarget("python3", [`${base}/u.py`], { ready: /^READY /m });
    try {
      const [, ring, rtnl] = t.output().match(/^READY \d+ (\d+) (\d+)/m)!.map(Number);
      const refused = (fd: number, what: RegExp) => (err: Error) => {
        assert.ok(err instanceof DumpError, String(err));
        assert.match(err.message, new RegExp(`^fd ${fd} of process ${t.pid}: `));
        assert.match(err.message, what);
        return true;
      };
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, {
          leaveRunning: true,
          policy: { fd: (f) => f.fd === rtnl ? "skip" : "dump" },
        }),
        refused(ring, /packet raw socket .* with a ring buffer \(PACKET_RX_RING\)/),
      );
      await assert.rejects(
        checkpoint(t.pid, `${base}/img`, {
          leaveRunning: true,
          policy: { fd: (f) => f.fd === ring ? "skip" : "dump" },
        }),
        refused(
          rtnl,
          /netlink route socket .* (in the middle of a dump|with messages waiting to be read)/,
        ),
      );
      assert.ok(t.alive(), "the process did not survive the refused dumps");
    } finally {
      await t.kill();
      await Deno.remove(base, { recursive: true }).catch(() => {});
      await Deno.remove(t.outPath).catch(() => {});
    }
  },
);
