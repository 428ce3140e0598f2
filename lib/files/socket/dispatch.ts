/**
 * The one file handler of fd kind "socket": it reads what a socket is and hands it to the module
 * of its kind.
 *
 * Everything is read inside the frozen process through its fd number (target_socket.ts):
 * SO_DOMAIN/SO_TYPE/SO_PROTOCOL give the kind; SO_ACCEPTCONN, getsockname, getpeername and (TCP)
 * the state byte of TCP_INFO give the state. Then:
 * - a TCP client whose connection waits, not accepted yet, in the queue of a listener of the dump
 *   goes to tcp_pending.ts;
 * - TCP connections, established, connecting (SYN_SENT: sock_diag tells where to) or closing
 *   (FIN_WAIT1/2, CLOSING, CLOSE_WAIT, LAST_ACK), or ended (CLOSE, shut for reading: through
 *   TIME_WAIT or LAST_ACK; one with a reset not yet read is refused), go to tcp_stream.ts, which
 *   keeps them with their queues through TCP repair mode;
 * - connected UNIX stream and seqpacket sockets, and UNIX datagram sockets connected to an unnamed
 *   peer, go to unix_pair.ts, which keeps them with their queued data when their peer is in the
 *   dump too or was closed (sock_diag shows a closed peer with no inode and, for a stream, a full
 *   shutdown); but an unbound one whose peer was closed everywhere, with nothing queued, goes to
 *   standalone.ts and comes back as a socketpair with one end closed again; a stream or seqpacket
 *   client whose connection waits in a listener's queue, not accepted yet, goes to unix_pending.ts;
 * - every other TCP, UDP or UNIX socket (listening, bound, unconnected, a datagram socket
 *   connected to a named address), and UDP-Lite, ping, raw, packet (packet.ts) and netlink
 *   (netlink.ts) sockets, go to standalone.ts, which makes it again from its address.
 *
 * Refused at dump (a DumpError naming fd, family, type and state; a policy can skip them):
 * TCP sockets in a state no socket of a program stays in (SYN_RECV, TIME_WAIT: those belong to
 * the kernel, not to a descriptor), inet protocols other than TCP, UDP, UDP-Lite, ICMP (ping) and
 * raw (SCTP, MPTCP …), packet and netlink sockets of other types than raw and datagram, and every
 * other family (vsock, alg, XDP …); the
 * kinds' modules refuse more (a listener with connections waiting, a UNIX socket whose peer no
 * process of the dump holds …).
 *
 * Entries of kind "socket" are restored by standalone.ts, those of kinds "unix-pair" and
 * "tcp-stream" by their modules, found by entry kind.
 */
import {
  AF,
  Errno,
  IPPROTO,
  POLL,
  SK_SHUTDOWN,
  SO,
  SOCK,
  SOL,
  TCP,
  TCP_STATE,
  tcpStateName,
} from "../../../ffi/mod.ts";
import { DumpError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileDumpContext, FileHandler } from "../types.ts";
import { readI32 } from "../util.ts";
import { formatAddress, isUnbound } from "./address.ts";
import { connectingPeer, unixDiag } from "./diag.ts";
import { dumpStandalone, type SocketEntry, standaloneSocketHandler } from "./standalone.ts";
import {
  INET_PROTOCOLS,
  isPing,
  LINK_LEVEL_TYPES,
  NETLINK_PROTOCOLS,
  standaloneInet,
} from "./kinds.ts";
import { isKernelPeer } from "./netlink.ts";
import { procNetPeer } from "./proc_net.ts";
import { socketReader } from "./socket_copy.ts";
import { TargetSocket } from "./target_socket.ts";
import { dumpTcpStream, isTcpStreamState, type TcpStreamEntry } from "./tcp_stream.ts";
import { dumpTcpPending, type TcpPendingEntry, tcpPendingPlace } from "./tcp_pending.ts";
import { dumpUnixPair, type UnixPairEntry } from "./unix_pair.ts";
import { dumpUnixPending, type UnixPendingEntry, unixPendingPlace } from "./unix_pending.ts";

const FAMILIES: Record<number, string> = {
  [AF.UNIX]: "UNIX",
  [AF.INET]: "IPv4",
  [AF.INET6]: "IPv6",
  [AF.NETLINK]: "netlink",
  [AF.PACKET]: "packet",
  [AF.ALG]: "alg",
  [AF.VSOCK]: "vsock",
  [AF.XDP]: "XDP",
};
const TYPES: Record<number, string> = {
  [SOCK.STREAM]: "stream",
  [SOCK.DGRAM]: "datagram",
  [SOCK.RAW]: "raw",
  [SOCK.SEQPACKET]: "seqpacket",
};

const UNIX_TYPES: number[] = [SOCK.STREAM, SOCK.DGRAM, SOCK.SEQPACKET];

/** "IPv4 TCP", "UNIX stream", "IPv4 ICMP datagram (ping)", "IPv6 raw protocol 17" …, for messages. */
function protocolName(family: number, type: number, protocol: number): string {
  if (family === AF.UNIX) return `UNIX ${TYPES[type] ?? `type ${type}`}`;
  if (family === AF.INET || family === AF.INET6) {
    const name = INET_PROTOCOLS[protocol];
    if (type === SOCK.RAW) return `${FAMILIES[family]} raw ${name ?? `protocol ${protocol}`}`;
    if (name && isPing(type, protocol)) return `${FAMILIES[family]} ${name} datagram (ping)`;
    if (name) return `${FAMILIES[family]} ${name}`;
    return `${FAMILIES[family]} ${TYPES[type] ?? `type ${type}`} protocol ${protocol}`;
  }
  if (family === AF.NETLINK) {
    return `netlink ${NETLINK_PROTOCOLS[protocol] ?? `protocol ${protocol}`}`;
  }
  return `${FAMILIES[family] ?? `family ${family}`} ${TYPES[type] ?? `type ${type}`}`;
}

function refuse(fd: Fd, what: string, why: string): never {
  throw new DumpError(
    `fd ${fd.fd} of process ${fd.pid}: ${what} socket (${fd.target}) ${why}; tardigrade ` +
      `dumps only listening, bound and unconnected TCP, UDP, UDP-Lite, ping, raw, packet, ` +
      `netlink and UNIX sockets (and datagram sockets connected to an address, TCP ` +
      `connections, connected UNIX sockets); a policy can skip it`,
  );
}

// Async: the reader (a copy of the socket) must stay open until every part is read.
async function dumpSocket(
  fd: Fd,
  ctx: FileDumpContext,
): Promise<SocketEntry | UnixPairEntry | UnixPendingEntry | TcpStreamEntry | TcpPendingEntry> {
  const socket = new TargetSocket(ctx.frozen.injector, fd.fd);
  using reader = socketReader(ctx.pidfd, socket);
  const intOpt = (level: number, option: number): number => {
    const v = reader.getsockopt(level, option, 4);
    if (typeof v === "number") {
      throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: getsockopt failed (errno ${-v})`);
    }
    return readI32(v);
  };
  const family = intOpt(SOL.SOCKET, SO.DOMAIN);
  const type = intOpt(SOL.SOCKET, SO.TYPE);
  const protocol = intOpt(SOL.SOCKET, SO.PROTOCOL);
  const what = protocolName(family, type, protocol);
  const inet = family === AF.INET || family === AF.INET6;
  const linkLevel = family === AF.PACKET || family === AF.NETLINK;
  if (family !== AF.UNIX && !inet && !linkLevel) refuse(fd, what, "of an unsupported family");
  if (linkLevel && !LINK_LEVEL_TYPES.includes(type)) refuse(fd, what, "of an unsupported type");
  if (
    inet && !(protocol === IPPROTO.TCP && type === SOCK.STREAM) && !standaloneInet(type, protocol)
  ) {
    refuse(fd, what, "of an unsupported protocol");
  }
  if (family === AF.UNIX && !UNIX_TYPES.includes(type)) {
    refuse(fd, what, "of an unsupported type");
  }

  const nameOf = (which: "getsockname" | "getpeername"): Uint8Array | null => {
    const v = reader.name(which);
    if (typeof v !== "number") return v;
    // Packet sockets have no peers at all.
    if (which === "getpeername" && (-v === Errno.ENOTCONN || -v === Errno.EOPNOTSUPP)) return null;
    throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: ${which} failed (errno ${-v})`);
  };
  const own = nameOf("getsockname");
  const address = own && !isUnbound(own) ? own : null;
  const listening = intOpt(SOL.SOCKET, SO.ACCEPTCONN) !== 0;
  let peer = listening ? null : nameOf("getpeername");
  if (!peer && inet && (type === SOCK.RAW || isPing(type, protocol))) {
    peer = procNetPeer(fd.pid, family, type, fd.inode); // getpeername wants a port
  }
  if (peer && family === AF.NETLINK && isKernelPeer(peer)) peer = null; // as a fresh socket's
  const at = address ? `on ${formatAddress(address)}` : "unbound";

  let peerClosed = false;
  let tcpInfo: Uint8Array | null = null;
  if (protocol === IPPROTO.TCP && inet) {
    const info = reader.getsockopt(SOL.TCP, TCP.INFO, 32);
    if (typeof info === "number") {
      throw new DumpError(`fd ${fd.fd} of process ${fd.pid}: TCP_INFO failed (errno ${-info})`);
    }
    const state = info[0];
    // A connection, also one connecting or closing: tcp_stream.ts keeps it, with TCP repair.
    // getpeername does not tell where a connecting socket connects to; sock_diag does.
    const to = peer ?? (state === TCP_STATE.SYN_SENT ? connectingPeer(family, fd.inode) : null);
    if (state === TCP_STATE.CLOSE) {
      // Shut for reading in CLOSE: its connection ended (through TIME_WAIT, LAST_ACK or a
      // reset), which a read tells from a fresh socket (bytes left, then EOF, not ENOTCONN).
      const revents = socket.poll(POLL.RDHUP);
      const ended = revents > 0 && (revents & POLL.RDHUP) !== 0;
      if (ended && revents & POLL.ERR) {
        refuse(
          fd,
          what,
          `${at}: its connection ended with an error not yet read (SO_ERROR: ` +
            `a reset or a refused connect), which tardigrade cannot give again`,
        );
      }
      if (ended && address) {
        return dumpTcpStream(fd, ctx, { what, family, address, peer: address });
      }
    } else if (isTcpStreamState(state) && address && to) {
      // Its peer not accepted yet by a listener of the dump: it comes back waiting there.
      const waits = state === TCP_STATE.ESTABLISHED || state === TCP_STATE.FIN_WAIT2;
      const place = waits && peer ? tcpPendingPlace(ctx, address, peer) : undefined;
      if (place && peer) {
        return dumpTcpPending(fd, ctx, { what, family, address, peer, state, reader }, place);
      }
      return dumpTcpStream(fd, ctx, { what, family, address, peer: to });
    }
    if (state !== TCP_STATE.LISTEN && state !== TCP_STATE.CLOSE) {
      const to = peer ? `, peer ${formatAddress(peer)}` : "";
      refuse(fd, what, `in state ${tcpStateName(state)}, ${at}${to}`);
    }
    tcpInfo = info;
  } else if (family === AF.UNIX) {
    if (peer && type !== SOCK.DGRAM && peer.length <= 2 && !address) {
      // A socketpair whose other end was closed everywhere (the JVM keeps one as the fd it dup2s
      // over descriptors being closed): sock_diag shows a peer with no inode and a full shutdown.
      const d = unixDiag(fd.inode);
      if (d && d.peer === 0 && d.shutdown === (SK_SHUTDOWN.RCV | SK_SHUTDOWN.SEND)) {
        // With data still to read it is a pair whose peer is gone: unix_pair.ts keeps the data.
        if (d.rqueue > 0) return await dumpUnixPair(fd, ctx, { what, type, address, peer, reader });
        peerClosed = true;
      }
    }
    // Its peer not accepted yet: waiting in a listener's queue, which it comes back to.
    const place = peer && type !== SOCK.DGRAM ? unixPendingPlace(fd.inode, ctx) : undefined;
    if (peer && place) {
      return dumpUnixPending(fd, ctx, { what, type, address, peer, reader }, place);
    }
    if (peer && !peerClosed && (type !== SOCK.DGRAM || peer.length <= 2)) {
      // Kept with its peer when that is in the dump too; refused, naming the fd, otherwise.
      return await dumpUnixPair(fd, ctx, { what, type, address, peer, reader });
    }
  }
  return await dumpStandalone(fd, {
    socket,
    reader,
    what,
    family,
    type,
    protocol,
    address,
    peer,
    listening,
    peerClosed,
    tcpInfo,
    at,
    refuse: (why) => refuse(fd, what, why),
    ctx,
  });
}

/**
 * Every socket: dumped by its kind's module (standalone.ts, unix_pair.ts, unix_pending.ts,
 * tcp_stream.ts);
 * entries of kind "socket" restored by standalone.ts.
 */
export const socketHandler: FileHandler<
  SocketEntry,
  SocketEntry | UnixPairEntry | UnixPendingEntry | TcpStreamEntry | TcpPendingEntry
> = {
  ...standaloneSocketHandler,
  fdKinds: ["socket"],
  dump: dumpSocket,
};
