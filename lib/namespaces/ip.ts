/**
 * A network namespace as `ip` shows and makes it: its devices with their addresses and the routes
 * it was given, read as JSON (`ip -j`), and the `ip` arguments that make an address or a route
 * again, every value of an image checked to be one plain word first.
 */
import { RestoreError } from "../errors.ts";
import type { NetAddressEntry, NetRouteEntry } from "../image/schema.ts";
import { runInNetns } from "./netns_command.ts";

/** What the restore hands `ip` as one word: no spaces, quotes or option-looking text. */
const WORD = /^[A-Za-z0-9_.:@/-]+$/;

/** A device as read: its entry's fields and what finds a veth's other end. */
export interface ReadLink {
  name: string;
  kind: string;
  mtu: number;
  mac: string;
  up: boolean;
  addresses: NetAddressEntry[];
  ifindex: number;
  /** A veth's other end: its index in the namespace `linkNetnsid` names (absent: this one). */
  linkIndex?: number;
  linkNetnsid?: number;
  master?: string;
}

// deno-lint-ignore no-explicit-any
type Json = any;

/** The devices of the net namespace of process `pid` (null: the tool's), with their addresses. */
export function readLinks(pid: number | null): ReadLink[] {
  const links: Json[] = JSON.parse(runInNetns(pid, "ip", ["-j", "-d", "addr", "show"]) || "[]");
  return links.map((l) => ({
    name: l.ifname,
    kind: l.link_type === "loopback" ? "loopback" : l.linkinfo?.info_kind ?? l.link_type,
    mtu: l.mtu,
    mac: l.address ?? "",
    up: (l.flags ?? []).includes("UP"),
    addresses: (l.addr_info ?? []).map((a: Json): NetAddressEntry => ({
      family: a.family,
      local: a.local,
      prefixlen: a.prefixlen,
      scope: a.scope,
      ...(a.broadcast ? { broadcast: a.broadcast } : {}),
      ...(a.label && a.label !== l.ifname ? { label: a.label } : {}),
    })),
    ifindex: l.ifindex,
    ...(l.link_index !== undefined ? { linkIndex: l.link_index } : {}),
    ...(l.link_netnsid !== undefined ? { linkNetnsid: l.link_netnsid } : {}),
    ...(l.master ? { master: l.master } : {}),
  }));
}

/**
 * The routes the net namespace of process `pid` (null: the tool's) was given: every table, both
 * families, without those the kernel makes itself for addresses and devices.
 */
export function readRoutes(pid: number | null): NetRouteEntry[] {
  const routes: NetRouteEntry[] = [];
  for (const family of ["inet", "inet6"]) {
    const flag = family === "inet" ? "-4" : "-6";
    const read: Json[] = JSON.parse(
      runInNetns(pid, "ip", [flag, "-j", "route", "show", "table", "all"]) || "[]",
    );
    for (const r of read) {
      if (r.protocol === "kernel") continue;
      const e: NetRouteEntry = { family, dst: r.dst };
      if (r.type && r.type !== "unicast") e.type = r.type;
      for (const key of ["gateway", "dev", "table", "protocol", "scope", "prefsrc"] as const) {
        if (r[key] !== undefined && r[key] !== "main") e[key] = String(r[key]);
      }
      if (r.metric !== undefined) e.metric = Number(r.metric);
      routes.push(e);
    }
  }
  return routes;
}

/** Refuses a value of an image that would not be one word of an `ip` command. */
export function word(v: string | number, what: string): string {
  const s = String(v);
  if (!WORD.test(s) || s.startsWith("-")) {
    throw new RestoreError(`the image's ${what} ${JSON.stringify(s)} is not a plain name`);
  }
  return s;
}

/** `ip addr add` arguments of `a` on device `dev`. */
export function addressArgs(a: NetAddressEntry, dev: string): string[] {
  const args = ["addr", "replace", `${word(a.local, "address")}/${word(a.prefixlen, "prefix")}`];
  args.push("dev", word(dev, "device"), "scope", word(a.scope, "scope"));
  if (a.broadcast) args.push("broadcast", word(a.broadcast, "broadcast address"));
  if (a.label) args.push("label", word(a.label, "label"));
  // Usable at once, as it was: no duplicate address detection keeping it tentative.
  if (a.family === "inet6") args.push("nodad");
  return args;
}

/** `ip route add` arguments of `r`. */
export function routeArgs(r: NetRouteEntry): string[] {
  const args = [r.family === "inet6" ? "-6" : "-4", "route", "add"];
  if (r.type) args.push(word(r.type, "route type"));
  args.push(word(r.dst, "route destination"));
  const opt = (key: string, v: string | number | undefined) => {
    if (v !== undefined) args.push(key, word(v, `route ${key}`));
  };
  opt("via", r.gateway);
  opt("dev", r.dev);
  opt("table", r.table);
  opt("metric", r.metric);
  opt("proto", r.protocol);
  opt("scope", r.scope);
  opt("src", r.prefsrc);
  return args;
}

/** Routes in the order they can be added: those through a gateway after those on a link. */
export const inAddOrder = (routes: readonly NetRouteEntry[]) =>
  [...routes].sort((a, b) => Number(a.gateway !== undefined) - Number(b.gateway !== undefined));

/** An address as two compare it. */
export const addressKey = (a: NetAddressEntry) => `${a.family} ${a.local}/${a.prefixlen}`;

/** What of `want` and `have` differs (sets of texts), named, or null. */
export function setDiffers(what: string, want: string[], have: string[]): string | null {
  const lacking = want.find((w) => !have.includes(w));
  if (lacking) return `${what} ${lacking} is missing`;
  const extra = have.find((h) => !want.includes(h));
  if (extra) return `it has ${what} ${extra} its image has not`;
  return null;
}

/** A route as two compare it. */
export const routeKey = (r: NetRouteEntry) => routeArgs(r).slice(3).join(" ");
