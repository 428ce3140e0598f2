/**
 * The devices and routes of a network namespace as `ip -j` shows them, and a veth's end outside
 * a container. That end lives in the dumping tool's network namespace (the host's), maybe a port
 * of a bridge: the dump records its name, MTU, hardware address, state, bridge, addresses and
 * the routes through it; the restore makes the pair again (`ip link add … type veth peer … netns
 * PID`: the container's end straight into the container's fresh namespace, with its index),
 * attaches the outside end to the same bridge, which must exist (named in an error otherwise),
 * and gives it back its addresses and routes. An end in another namespace than the tool's is
 * refused at dump time, naming it. The pair goes when the container's namespace goes, so a failed
 * restore leaves nothing of it.
 */
import { DumpError, RestoreError } from "../errors.ts";
import type { NetLinkEntry, NetRouteEntry, VethPeerEntry } from "../image/schema.ts";
import { runInNetns } from "./netns_command.ts";
import { pauseThread } from "../ptrace/bounded_wait.ts";
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

/**
 * The outside end of veth `link` of container `pid`, found among the tool's devices `host`
 * (with `hostRoutes`); refuses one that is not there.
 */
export function dumpPeer(
  pid: number,
  link: ReadLink,
  host: ReadLink[],
  hostRoutes: NetRouteEntry[],
): VethPeerEntry {
  const peer = link.linkNetnsid === undefined
    ? undefined
    : host.find((h) =>
      h.kind === "veth" && h.ifindex === link.linkIndex && h.linkIndex === link.ifindex &&
      h.linkNetnsid !== undefined
    );
  if (!peer) {
    throw new DumpError(
      `the other end of veth ${link.name} of container ${pid} is not in tardigrade's network ` +
        `namespace (${
          link.linkNetnsid === undefined ? "it is in the container's own" : "it " +
            `is in namespace ${link.linkNetnsid} as the container numbers them`
        }): only an end ` +
        `outside on the host is made again`,
    );
  }
  return {
    name: peer.name,
    mtu: peer.mtu,
    mac: peer.mac,
    up: peer.up,
    ...(peer.master ? { master: peer.master } : {}),
    addresses: peer.addresses,
    routes: hostRoutes.filter((r) => r.dev === peer.name),
  };
}

/** The tool's device named `name`, or undefined. */
const hostLink = (name: string) => readLinks(null).find((l) => l.name === name);

/**
 * Makes veth `link` of the container whose init is `pid` (in its fresh namespace) with its end
 * outside. Waits a little for the dumped pair to go
 * (its namespace is torn down after its last process) before calling the name taken.
 */
export function makePeer(pid: number, link: NetLinkEntry): void {
  const peer = link.peer!;
  const name = word(peer.name, "veth peer");
  const deadline = Date.now() + 5000;
  while (hostLink(name)) {
    if (Date.now() > deadline) {
      throw new RestoreError(
        `the outside end of its veth ${link.name} is to be ${name}, which tardigrade's network ` +
          `namespace has already (is the dumped container still running?)`,
      );
    }
    pauseThread(50);
  }
  const master = peer.master && word(peer.master, "bridge");
  if (master && !hostLink(master)) {
    throw new RestoreError(
      `the outside end ${name} of its veth ${link.name} was a port of ${master}, which ` +
        `tardigrade's network namespace no longer has: make the bridge again, then restore`,
    );
  }
  runInNetns(null, "ip", [
    "link",
    "add",
    name,
    "address",
    word(peer.mac, "hardware address"),
    "mtu",
    word(peer.mtu, "MTU"),
    "type",
    "veth",
    "peer",
    "name",
    word(link.name, "device"),
    "address",
    word(link.mac, "hardware address"),
    "mtu",
    word(link.mtu, "MTU"),
    "netns",
    String(pid),
  ]);
  if (master) runInNetns(null, "ip", ["link", "set", name, "master", master]);
  for (const a of peer.addresses) runInNetns(null, "ip", addressArgs(a, name));
}

/**
 * Brings up the outside end of veth `link` made by `makePeer` (if it was up) and gives it its
 * routes (which a device that is down cannot take). Once the container's TCP connections are
 * made again and resumed: until then no packet from outside reaches the namespace, where one for
 * a connection not made yet would be answered with a reset.
 */
export function raisePeer(link: NetLinkEntry): void {
  const peer = link.peer!;
  const name = word(peer.name, "veth peer");
  if (peer.up) runInNetns(null, "ip", ["link", "set", name, "up"]);
  for (const r of inAddOrder(peer.routes)) runInNetns(null, "ip", routeArgs(r));
}

/** How the outside end `peer` of a restored veth differs from its image, or null. */
export function peerDiffers(peer: VethPeerEntry): string | null {
  const have = hostLink(peer.name);
  if (!have) return `the outside end ${peer.name} of its veth is missing`;
  for (const key of ["mtu", "mac", "up", "master"] as const) {
    if (have[key] !== peer[key]) {
      return `the outside end ${peer.name} of its veth has ${key} ${have[key]}, not ${peer[key]}`;
    }
  }
  return setDiffers(
    `on ${peer.name} the address`,
    peer.addresses.map(addressKey),
    have.addresses.map(addressKey),
  ) ?? setDiffers(
    "the route",
    peer.routes.map(routeKey),
    readRoutes(null).filter((r) => r.dev === peer.name).map(routeKey),
  );
}
