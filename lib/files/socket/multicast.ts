/**
 * The IP multicast groups a UDP, UDP-Lite, ping or raw socket joined (IP_ADD_MEMBERSHIP,
 * IPV6_JOIN_GROUP, MCAST_JOIN_GROUP, MCAST_JOIN_SOURCE_GROUP …), with their source filters. No
 * socket call lists them, so the dump takes every group some socket of this network namespace
 * joined on some interface (/proc/net/igmp and igmp6) and asks the socket, from the tool's copy of
 * it, for its filter of each (getsockopt MCAST_MSFILTER says EADDRNOTAVAIL where it is no member).
 *
 * Restore, after bind(): MCAST_JOIN_GROUP on the interface of the same name, then the filter
 * (MCAST_MSFILTER) where it is not "every source". check() refuses an interface that is gone.
 */
import { AF, SOL, SYS } from "../../../ffi/mod.ts";
import type { FieldType } from "../../image/validate.ts";
import type { FileRestoreContext } from "../types.ts";
import { injectRaw } from "../util.ts";
import { interfaceIndex, interfaceName } from "./packet.ts";
import type { SocketReader } from "./socket_copy.ts";

/** One group a socket joined, with its filter. */
export interface MulticastMembership {
  /** The interface it joined on, by name (its index may differ at restore). */
  interface: string;
  /** The group, a raw sockaddr_in or sockaddr_in6. */
  group: Uint8Array;
  /** MCAST_EXCLUDE (0: every source but `sources`) or MCAST_INCLUDE (1: only `sources`). */
  mode: number;
  /** The filter's sources, raw sockaddrs. */
  sources: Uint8Array[];
}

/** The image fields of a socket's memberships. */
export const MULTICAST_STATE: FieldType = {
  optional: {
    list: {
      map: { interface: "text", group: "bytes", mode: "whole", sources: { list: "bytes" } },
    },
  },
};

/** `MCAST_*` socket options (RFC 3678), at SOL_IP or SOL_IPV6 as the socket's family. */
const MCAST = { JOIN_GROUP: 42, MSFILTER: 48 } as const;

/** Sources a filter is read with at most (the request fits where the target reads options). */
const MAX_SOURCES = 32;

/** sizeof(struct sockaddr_storage). */
const STORAGE = 128;

/** Where `struct group_filter`'s fields are (x86-64: the storage is 8-aligned). */
const GF = { GROUP: 8, FMODE: 136, NUMSRC: 140, SLIST: 144 } as const;

/** A sockaddr of `family` holding the raw address `addr` (4 or 16 bytes), port 0. */
function sockaddr(family: number, addr: Uint8Array): Uint8Array {
  const out = new Uint8Array(family === AF.INET ? 16 : 28);
  new DataView(out.buffer).setUint16(0, family, true);
  out.set(addr, family === AF.INET ? 4 : 8);
  return out;
}

/** The bytes of a hex string, in order. */
function hexBytes(hex: string): Uint8Array {
  return Uint8Array.from(hex.match(/../g) ?? [], (h) => parseInt(h, 16));
}

/** Every (interface index, group) some socket of this network namespace joined. */
function joinedGroups(family: number): { ifindex: number; group: Uint8Array }[] {
  const out: { ifindex: number; group: Uint8Array }[] = [];
  try {
    if (family === AF.INET) {
      // "1\tlo        :     2      V3" then "\t\t\t\t010000E0     1 0:00000000\t\t0" per group:
      // the group's 32 bits printed as the host (little-endian) number they make.
      let ifindex = 0;
      for (const line of Deno.readTextFileSync("/proc/net/igmp").split("\n").slice(1)) {
        const dev = /^(\d+)\s+\S+\s*:/.exec(line);
        if (dev) ifindex = Number(dev[1]);
        const g = /^\s+([0-9A-Fa-f]{8})\s/.exec(line);
        if (g && ifindex) out.push({ ifindex, group: hexBytes(g[1]).reverse() });
      }
    } else {
      // "1    lo              ff020000000000000000000000000001     1 0000000C 0"
      for (const line of Deno.readTextFileSync("/proc/net/igmp6").split("\n")) {
        const m = /^(\d+)\s+\S+\s+([0-9a-f]{32})\s/.exec(line);
        if (m) out.push({ ifindex: Number(m[1]), group: hexBytes(m[2]) });
      }
    }
  } catch { /* no IPv6, or no multicast at all */ }
  return out;
}

/** A `struct group_filter` asking for `group` on `ifindex`, with room for the sources. */
function groupFilter(ifindex: number, group: Uint8Array, sources: Uint8Array[] = []): Uint8Array {
  const out = new Uint8Array(GF.SLIST + STORAGE * Math.max(sources.length, MAX_SOURCES));
  const v = new DataView(out.buffer);
  v.setUint32(0, ifindex, true);
  out.set(group, GF.GROUP);
  v.setUint32(GF.NUMSRC, sources.length === 0 ? MAX_SOURCES : sources.length, true);
  sources.forEach((s, i) => out.set(s, GF.SLIST + STORAGE * i));
  return out;
}

/**
 * The groups socket `reader` (of `family`: AF_INET or AF_INET6) joined, with their filters;
 * `refuse` says why they cannot be kept.
 */
export function dumpMulticast(
  reader: SocketReader,
  family: number,
  refuse: (why: string) => never,
): MulticastMembership[] {
  const level = family === AF.INET ? SOL.IP : SOL.IPV6;
  const sockLen = family === AF.INET ? 16 : 28;
  const out: MulticastMembership[] = [];
  for (const { ifindex, group } of joinedGroups(family)) {
    const g = sockaddr(family, group);
    const req = groupFilter(ifindex, g);
    const got = reader.getsockopt(level, MCAST.MSFILTER, req.length, req);
    if (typeof got === "number") continue; // EADDRNOTAVAIL: not a member there
    const v = new DataView(got.buffer, got.byteOffset, got.byteLength);
    const count = v.getUint32(GF.NUMSRC, true);
    if (count > MAX_SOURCES) {
      refuse(
        `with a multicast source filter of ${count} sources (${MAX_SOURCES} are kept at most)`,
      );
    }
    const name = interfaceName(ifindex);
    if (!name) continue; // gone since /proc listed it
    out.push({
      interface: name,
      group: g,
      mode: v.getUint32(GF.FMODE, true),
      sources: Array.from(
        { length: count },
        (_, i) => got.slice(GF.SLIST + STORAGE * i, GF.SLIST + STORAGE * i + sockLen),
      ),
    });
  }
  return out;
}

/** A reason the memberships cannot come back here, or null. */
export function multicastProblem(list: MulticastMembership[]): string | null {
  const gone = list.find((m) => !interfaceIndex(m.interface));
  return gone ? `joined a multicast group on ${gone.interface}, which this machine lacks` : null;
}

/** Joins the groups again, on the interfaces of the same names, with their filters. */
export function restoreMulticast(
  ctx: FileRestoreContext,
  fd: number,
  family: number,
  list: MulticastMembership[],
): void {
  const level = family === AF.INET ? SOL.IP : SOL.IPV6;
  for (const m of list) {
    const ifindex = interfaceIndex(m.interface);
    // struct group_req: interface (u32, then 4 bytes of padding), the group's sockaddr_storage.
    const req = new Uint8Array(GF.GROUP + STORAGE);
    new DataView(req.buffer).setUint32(0, ifindex, true);
    req.set(m.group, GF.GROUP);
    const at = ctx.put(req);
    injectRaw(
      ctx,
      "setsockopt(MCAST_JOIN_GROUP)",
      SYS.setsockopt,
      fd,
      level,
      MCAST.JOIN_GROUP,
      at,
      req.length,
    );
    // Joined for every source (EXCLUDE, none): anything else is its filter.
    if (m.mode === 0 && m.sources.length === 0) continue;
    const filter = groupFilter(ifindex, m.group, m.sources).subarray(
      0,
      GF.SLIST + STORAGE * m.sources.length,
    );
    new DataView(filter.buffer).setUint32(GF.FMODE, m.mode, true);
    const f = ctx.put(filter);
    injectRaw(
      ctx,
      "setsockopt(MCAST_MSFILTER)",
      SYS.setsockopt,
      fd,
      level,
      MCAST.MSFILTER,
      f,
      filter.length,
    );
  }
}
