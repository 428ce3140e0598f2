/**
 * What a netlink socket (route, audit, generic … any protocol) has besides its options: its port
 * id (the address the kernel and other sockets send to), its multicast groups, and the port and
 * group it is connected to. standalone.ts makes the socket again (socket, options, bind to its
 * port id, connect); options.ts keeps its NETLINK_* flags (PKTINFO, NO_ENOBUFS, EXT_ACK …).
 *
 * Dump: the port id from getsockname (0: never bound, nor sent from), every group from
 * getsockopt(NETLINK_LIST_MEMBERSHIPS) (getsockname shows the first 32 only), the peer from
 * getpeername (all zero: the kernel, as a fresh socket). Refused: messages waiting to be read (a
 * route listener's notifications, the answer to a request: the kernel sent them and the tool cannot
 * send them again as the kernel), a dump under way, and a socket sock_diag cannot see (another
 * network namespace), whose queue could not be read.
 *
 * Restore: bind() to the port id with no groups, then NETLINK_ADD_MEMBERSHIP for each group
 * (also those above 32), then connect() where it was connected. A port id taken meanwhile fails
 * the bind with EADDRINUSE, named.
 */
import { NETLINK_OPT, SOL, SYS } from "../../../ffi/mod.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FieldType } from "../../image/validate.ts";
import type { FileRestoreContext } from "../types.ts";
import { i32, injectRaw, readU32 } from "../util.ts";
import { netlinkDiag } from "./diag.ts";
import type { SocketReader } from "./socket_copy.ts";

/** A netlink socket's multicast groups. */
export interface NetlinkState {
  /** The groups it is in, by number (1 and up). */
  groups: number[];
}

/** The image fields of a netlink socket's state. */
export const NETLINK_STATE: FieldType = { optional: { map: { groups: { list: "whole" } } } };

/** A sockaddr_nl with the port id of `address` and no groups; null when the port id is 0. */
export function netlinkBindAddress(address: Uint8Array): Uint8Array | null {
  if (address.length < 12 || readU32(address, 4) === 0) return null;
  const out = address.slice(0, 12);
  out.fill(0, 8, 12); // nl_groups: joined one by one after
  return out;
}

/** Whether a getpeername of a netlink socket names nothing but the kernel (port 0, no group). */
export function isKernelPeer(peer: Uint8Array): boolean {
  return peer.length < 12 || (readU32(peer, 4) === 0 && readU32(peer, 8) === 0);
}

/** Reads a netlink socket's groups; `refuse` says why it cannot be kept. */
export function dumpNetlink(
  fd: Fd,
  reader: SocketReader,
  address: Uint8Array | null,
  refuse: (why: string) => never,
): NetlinkState {
  // Never bound: no port, so nothing could have been sent to it (and sock_diag lists only
  // bound sockets).
  if (!address || !netlinkBindAddress(address)) return { groups: [] };
  const diag = netlinkDiag(fd.inode);
  if (!diag) {
    refuse(
      "which sock_diag does not show (another network namespace?): its queue could not be read",
    );
  }
  if (diag.dumping) refuse("in the middle of a dump it asked the kernel for");
  if (diag.queued > 0) {
    refuse(
      `with messages waiting to be read (${diag.queued} bytes), which only the kernel could ` +
        `send again`,
    );
  }
  const groups: number[] = [];
  const bitmap = reader.getsockopt(SOL.NETLINK, NETLINK_OPT.LIST_MEMBERSHIPS, 128);
  if (typeof bitmap !== "number") {
    for (let word = 0; word * 4 + 4 <= bitmap.length; word++) {
      const bits = readU32(bitmap, word * 4);
      for (let b = 0; b < 32; b++) if (bits & (1 << b)) groups.push(word * 32 + b + 1);
    }
  }
  return { groups };
}

/** Joins target fd `fd` to its groups again (after bind). */
export function restoreNetlink(ctx: FileRestoreContext, fd: number, state: NetlinkState): void {
  for (const group of state.groups) {
    injectRaw(
      ctx,
      `setsockopt(NETLINK_ADD_MEMBERSHIP, ${group})`,
      SYS.setsockopt,
      fd,
      SOL.NETLINK,
      NETLINK_OPT.ADD_MEMBERSHIP,
      ctx.put(i32(group)),
      4,
    );
  }
}
