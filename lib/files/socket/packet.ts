/**
 * What a packet socket (AF_PACKET, SOCK_RAW or SOCK_DGRAM) has besides its address and options:
 * its memberships (PACKET_ADD_MEMBERSHIP: promiscuous, all-multicast, a multicast address, on one
 * interface) and its fanout group. standalone.ts makes the socket again from its protocol and
 * address (sockaddr_ll: the protocol and interface index bind() takes); options.ts keeps its
 * PACKET_* options (version, reserve, auxdata, timestamps …).
 *
 * Dump: memberships and rings come from sock_diag (PACKET_DIAG_MCLIST, the ring configuration),
 * the fanout group from getsockopt(PACKET_FANOUT). Refused: a socket with a ring buffer
 * (PACKET_RX_RING, PACKET_TX_RING: mapped into the process, with frames the kernel and the program
 * hand each other), and one sock_diag cannot see (another network namespace), whose memberships
 * and rings could not be read. Packets waiting to be read are let go, as a network may drop them.
 *
 * Restore, after bind(): PACKET_FANOUT (it wants a bound, running socket), then each membership.
 * check() refuses an interface index that no longer names the interface it named at dump.
 */
import { PACKET, SOL, SYS } from "../../../ffi/mod.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FieldType } from "../../image/validate.ts";
import type { FileRestoreContext } from "../types.ts";
import { i32, injectRaw, readI32 } from "../util.ts";
import { packetDiag } from "./diag.ts";
import type { SocketReader } from "./socket_copy.ts";

/** A packet socket's memberships and fanout group. */
export interface PacketState {
  /** PACKET_ADD_MEMBERSHIP, each as often as it was added. */
  memberships: { ifindex: number; type: number; address: Uint8Array }[];
  /** getsockopt(PACKET_FANOUT): group id | type and flags << 16; 0 when in no group. */
  fanout: number;
  /** The interface the socket is bound to, by name (null: every interface). */
  interface: string | null;
}

/** The image fields of a packet socket's state. */
export const PACKET_STATE: FieldType = {
  optional: {
    map: {
      memberships: { list: { map: { ifindex: "whole", type: "whole", address: "bytes" } } },
      fanout: "whole",
      interface: { nullable: "text" },
    },
  },
};

/** The interface index of a sockaddr_ll (at byte 4). */
const ifindexOf = (address: Uint8Array | null) =>
  address && address.length >= 8 ? readI32(address, 4) : 0;

/** The sockaddr_ll bind() takes (20 bytes) for a getsockname's: its protocol and interface. */
export function packetBindAddress(address: Uint8Array): Uint8Array {
  const out = new Uint8Array(20);
  out.set(address.subarray(0, 8)); // family, protocol, ifindex
  return out;
}

/** The name of the interface with index `ifindex` in the tool's network namespace, or null. */
export function interfaceName(ifindex: number): string | null {
  if (!ifindex) return null;
  try {
    for (const e of Deno.readDirSync("/sys/class/net")) {
      const n = Number(Deno.readTextFileSync(`/sys/class/net/${e.name}/ifindex`).trim());
      if (n === ifindex) return e.name;
    }
  } catch { /* no sysfs */ }
  return null;
}

/** The index of the interface named `name` in the tool's network namespace, or 0. */
export function interfaceIndex(name: string): number {
  try {
    return Number(Deno.readTextFileSync(`/sys/class/net/${name}/ifindex`).trim());
  } catch {
    return 0;
  }
}

/** Reads a packet socket's state; `refuse` says why it cannot be kept. */
export function dumpPacket(
  fd: Fd,
  reader: SocketReader,
  address: Uint8Array | null,
  refuse: (why: string) => never,
): PacketState {
  const diag = packetDiag(fd.inode);
  if (!diag) {
    refuse(
      "which sock_diag does not show (another network namespace?): its memberships and rings " +
        "could not be read",
    );
  }
  if (diag.rings.length) {
    refuse(`with a ring buffer (${diag.rings.join(", ")}), which tardigrade cannot keep`);
  }
  const fanout = reader.getsockopt(SOL.PACKET, PACKET.FANOUT, 4);
  return {
    memberships: diag.memberships,
    fanout: typeof fanout === "number" ? 0 : readI32(fanout),
    interface: interfaceName(ifindexOf(address)),
  };
}

/** A reason the state cannot come back on this machine, or null. */
export function packetProblem(state: PacketState, address: Uint8Array | null): string | null {
  const ifindex = ifindexOf(address);
  if (state.interface !== null && interfaceName(ifindex) !== state.interface) {
    return `interface ${ifindex} is no longer ${state.interface}`;
  }
  return null;
}

/** Joins the fanout group and adds the memberships of target fd `fd` again (after bind). */
export function restorePacket(ctx: FileRestoreContext, fd: number, state: PacketState): void {
  if (state.fanout) {
    const v = ctx.put(i32(state.fanout));
    injectRaw(
      ctx,
      "setsockopt(PACKET_FANOUT)",
      SYS.setsockopt,
      fd,
      SOL.PACKET,
      PACKET.FANOUT,
      v,
      4,
    );
  }
  for (const m of state.memberships) {
    // struct packet_mreq: ifindex, type (u16), alen (u16), address[8]
    const mreq = new Uint8Array(16);
    const v = new DataView(mreq.buffer);
    v.setInt32(0, m.ifindex, true);
    v.setUint16(4, m.type, true);
    v.setUint16(6, Math.min(m.address.length, 8), true);
    mreq.set(m.address.subarray(0, 8), 8);
    injectRaw(
      ctx,
      "setsockopt(PACKET_ADD_MEMBERSHIP)",
      SYS.setsockopt,
      fd,
      SOL.PACKET,
      PACKET.ADD_MEMBERSHIP,
      ctx.put(mreq),
      mreq.length,
    );
  }
}
