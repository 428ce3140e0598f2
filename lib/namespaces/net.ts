/**
 * A container's network namespace: its devices (the loopback and veths, with their MTU, hardware
 * address, up state and addresses), the routes it was given and its sysctls under
 * net.ipv4.conf and net.ipv6.conf. Read and made with `ip` and a shell run in the namespace
 * (netns_command.ts: short-lived children of the tool, which never enters it); a veth's end
 * outside the container is veth.ts's, its firewall firewall.ts's. What is not carried is
 * refused at dump time, naming it: other kinds of device. Neighbour caches, qdiscs and queue lengths
 * are the fresh namespace's. The restore gives the container's init a fresh namespace (an
 * injected unshare), sets its `all` and `default` sysctls, makes the veth pairs (their outside
 * ends down until `openNet`, once its connections run again), then gives
 * every device its state, addresses and sysctls, then the routes, then the firewall; the restore's check reads the
 * namespace again as the dump did.
 */
import { CLONE } from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { NetEntry, NetLinkEntry } from "../image/schema.ts";
import { NetnsCommandError, runInNetns } from "./netns_command.ts";
import { dumpFirewall, firewallDiffers, makeFirewall } from "./firewall.ts";
import {
  addressArgs,
  addressKey,
  inAddOrder,
  type ReadLink,
  readLinks,
  readRoutes,
  routeArgs,
  routeKey,
  setDiffers,
  word,
} from "./ip.ts";
import { dumpPeer, makePeer, peerDiffers, raisePeer } from "./veth.ts";

/** The sysctls carried: those under these directories of /proc/sys/net. */
const SYSCTL_DIRS = ["ipv4/conf", "ipv6/conf"];

/** A sysctl path below /proc/sys/net the restore writes: one file of a conf directory. */
const SYSCTL_PATH = /^ipv[46]\/conf\/[A-Za-z0-9_.:@-]+\/[a-z0-9_]+$/;

/** The sysctls of the net namespace of process `pid`, by path below /proc/sys/net. */
function readSysctls(pid: number): { path: string; value: string }[] {
  const out = runInNetns(pid, "sh", [
    "-c",
    `cd /proc/sys/net && grep -rs . ${SYSCTL_DIRS.join(" ")}; true`,
  ]);
  return out.split("\n").filter((l) => l).map((l) => {
    const at = l.indexOf(":");
    return { path: l.slice(0, at), value: l.slice(at + 1) };
  }).sort((a, b) => a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
}

/** Its entry of a device as read. */
function linkEntry(l: ReadLink): NetLinkEntry {
  return { name: l.name, kind: l.kind, mtu: l.mtu, mac: l.mac, up: l.up, addresses: l.addresses };
}

/** The network namespace of container `pid` (frozen); refuses what a restore would not make. */
export function dumpNet(pid: number): NetEntry {
  try {
    const firewall = dumpFirewall(pid);
    const links = readLinks(pid);
    const kinds = links.find((l) => l.kind !== "loopback" && l.kind !== "veth");
    if (kinds) {
      throw new DumpError(
        `the net namespace of container ${pid} has a ${kinds.kind} device ${kinds.name}, which ` +
          `tardigrade does not dump yet (it carries the loopback and veth devices)`,
      );
    }
    const host = links.some((l) => l.kind === "veth") ? readLinks(null) : [];
    const hostRoutes = host.length ? readRoutes(null) : [];
    return {
      links: links.map((l) => {
        const e = linkEntry(l);
        if (l.kind === "veth") e.peer = dumpPeer(pid, l, host, hostRoutes);
        return e;
      }),
      routes: readRoutes(pid),
      sysctls: readSysctls(pid),
      ...(firewall ? { firewall } : {}),
    };
  } catch (err) {
    if (err instanceof NetnsCommandError) {
      throw new DumpError(`cannot read the net namespace of container ${pid}: ${err.message}`);
    }
    throw err;
  }
}

/** Writes the sysctls of `sysctls` that differ from those the namespace of `pid` has now. */
function writeSysctls(pid: number, sysctls: readonly { path: string; value: string }[]): void {
  const now = new Map(readSysctls(pid).map((s) => [s.path, s.value]));
  for (const s of sysctls) {
    if (!SYSCTL_PATH.test(s.path) || s.path.includes("..")) {
      throw new RestoreError(`the image's sysctl ${JSON.stringify(s.path)} is not a conf file`);
    }
    if (now.get(s.path) === s.value) continue;
    runInNetns(pid, "sh", [
      "-c",
      `printf '%s\\n' "$2" > "/proc/sys/net/$1"`,
      "sh",
      s.path,
      s.value,
    ]);
  }
}

const isAllOrDefault = (s: { path: string }) => /^ipv[46]\/conf\/(all|default)\//.test(s.path);

/**
 * Gives the process `inj` runs in (the container's init, before it forks) a fresh network
 * namespace made as `net` says.
 */
export function makeNet(inj: Injector, net: NetEntry): void {
  const pid = inj.pid;
  try {
    inj.call("unshare", CLONE.NEWNET);
    // Before the devices are made: a new device takes its conf from `default`.
    writeSysctls(pid, net.sysctls.filter(isAllOrDefault));
    for (const l of net.links) {
      if (l.peer) makePeer(pid, l);
    }
    for (const l of net.links) {
      const name = word(l.name, "device");
      runInNetns(pid, "ip", ["link", "set", name, "mtu", word(l.mtu, "MTU")]);
      if (l.up) runInNetns(pid, "ip", ["link", "set", name, "up"]);
      for (const a of l.addresses) runInNetns(pid, "ip", addressArgs(a, l.name));
    }
    writeSysctls(pid, net.sysctls.filter((s) => !isAllOrDefault(s)));
    for (const r of inAddOrder(net.routes)) runInNetns(pid, "ip", routeArgs(r));
    // Last: a rule may name a device or an address.
    if (net.firewall) makeFirewall(pid, net.firewall);
  } catch (err) {
    if (err instanceof NetnsCommandError) {
      throw new RestoreError(`cannot make its net namespace: ${err.message}`);
    }
    throw err;
  }
}

/**
 * Opens the network namespace made by `makeNet` to the outside, once the restored connections
 * run: the outside ends of its veths come up with their routes (veth.ts).
 */
export function openNet(net: NetEntry): void {
  try {
    for (const l of net.links) {
      if (l.peer) raisePeer(l);
    }
  } catch (err) {
    if (err instanceof NetnsCommandError) {
      throw new RestoreError(`cannot bring up its veths: ${err.message}`);
    }
    throw err;
  }
}

/**
 * How the network namespace of restored container `pid` differs from `net`, or null: read
 * again as the dump read it.
 */
export function netDiffers(pid: number, net: NetEntry): string | null {
  const links = readLinks(pid);
  for (const want of net.links) {
    const have = links.find((l) => l.name === want.name);
    if (!have) return `its device ${want.name} is missing`;
    for (const key of ["kind", "mtu", "mac", "up"] as const) {
      if (have[key] !== want[key]) {
        return `its device ${want.name} has ${key} ${have[key]}, not ${want[key]}`;
      }
    }
    const why = setDiffers(
      `on ${want.name} the address`,
      want.addresses.map(addressKey),
      have.addresses.map(addressKey),
    );
    if (why) return why;
    if (want.peer) {
      const peer = peerDiffers(want.peer);
      if (peer) return peer;
    }
  }
  const extra = links.find((l) => !net.links.some((w) => w.name === l.name));
  if (extra) return `it has a device ${extra.name} its image has not`;
  const routes = setDiffers(
    "the route",
    net.routes.map(routeKey),
    readRoutes(pid).map(routeKey),
  );
  if (routes) return routes;
  const now = new Map(readSysctls(pid).map((s) => [s.path, s.value]));
  for (const s of net.sysctls) {
    if (now.get(s.path) !== s.value) {
      return `its sysctl net.${s.path.replaceAll("/", ".")} is ${now.get(s.path)}, not ${s.value}`;
    }
  }
  return firewallDiffers(pid, net.firewall);
}
