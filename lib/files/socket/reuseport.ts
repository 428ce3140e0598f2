/**
 * SO_REUSEPORT groups. Sockets bound to one address with
 * SO_REUSEPORT (and one uid) form a group; a TCP listener joins it at listen(), a UDP socket at
 * bind(), so a restored group is whole again once its sockets are made (standalone.ts), in
 * whichever processes of the image they are. The kernel gives a new connection to the member at
 * a hash of its addresses taken modulo the group's size, in the order the members joined: the
 * restored group joins in the restore's order, so which member gets a given connection may
 * differ from before the dump (each member still gets its share).
 *
 * A listener of a group with connections not accepted yet (tcp_pending.ts tells at dump that
 * they wait in this member's queue) gets them back in its own queue: while its clients connect,
 * the group has a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) that sends every new connection
 * to the member at the listener's index, its place in the order of listen() calls of the
 * restore; then the program goes (SO_DETACH_REUSEPORT_BPF) and the group balances by hash again.
 * The listener's accept queue must then hold as many more connections as clients connected: a
 * connection that went to another member (a socket outside the image that joined the group
 * first) fails the restore rather than wait in the wrong queue.
 *
 * A group's own BPF program (SO_ATTACH_REUSEPORT_CBPF/EBPF), which chooses the member instead of
 * the hash, cannot be read back: a dump refuses a member of such a group, where BPF iterators
 * show it (accept_queues.ts); where they do not, nothing shows it and the restored group
 * balances by hash.
 */
import {
  close,
  pidfdGetfd,
  SOL,
  TCP,
  tryAttachReuseportProgram,
  tryDetachReuseportProgram,
  tryGetsockopt,
} from "../../../ffi/mod.ts";
import { RestoreError } from "../../errors.ts";
import type { Fd } from "../../inspect/fds.ts";
import type { FileDumpContext, FileRestoreContext } from "../types.ts";
import { readU32 } from "../util.ts";
import { udpReuseportPrograms } from "./accept_queues.ts";
import { kernelQueues } from "./tcp_pending.ts";

// ---- Dump ----

const udpProgramsByDump = new WeakMap<object, Set<bigint> | string>();

/** Whether the SO_REUSEPORT group of TCP or UDP socket `fd` has a BPF program, where seen. */
function hasProgram(fd: Fd, ctx: FileDumpContext, tcp: boolean): boolean {
  if (tcp) {
    const queues = kernelQueues(ctx);
    return typeof queues !== "string" && !!queues.get(fd.inode)?.reuseportProgram;
  }
  const key = ctx.scope ?? ctx;
  let programs = udpProgramsByDump.get(key);
  if (programs === undefined) udpProgramsByDump.set(key, programs = udpReuseportPrograms());
  return typeof programs !== "string" && programs.has(fd.inode);
}

/**
 * Refuses (through `refuse`) a TCP listener or UDP socket with SO_REUSEPORT whose group has a
 * BPF program choosing which member gets a connection or datagram.
 */
export function refuseReuseportProgram(
  fd: Fd,
  ctx: FileDumpContext,
  tcp: boolean,
  refuse: (why: string) => never,
): void {
  if (!hasProgram(fd, ctx, tcp)) return;
  refuse(
    `whose SO_REUSEPORT group has a BPF program choosing which member gets ` +
      `${tcp ? "a connection" : "a datagram"} (SO_ATTACH_REUSEPORT_CBPF/EBPF), which cannot be ` +
      `read back: the restored group would balance by hash instead`,
  );
}

// ---- Restore ----

/** How many listeners of each group (by `groupKey`) listen() made so far, by restore scope. */
const joinedByScope = new WeakMap<object, Map<string, number>>();

/** A group's identity: family, address and port, and the device it is bound to (if any). */
export function groupKey(family: number, address: Uint8Array, device?: Uint8Array): string {
  const hex = (b: Uint8Array) => [...b].map((x) => x.toString(16).padStart(2, "0")).join("");
  return `${family}:${hex(address)}:${device ? hex(device) : ""}`;
}

/**
 * Records that a restored TCP listener with SO_REUSEPORT called listen() and so joined group
 * `key`: its index in the group, which a reuseport program names it by.
 */
export function joinGroup(ctx: FileRestoreContext, key: string): number {
  const scope = ctx.scope ?? ctx;
  let joined = joinedByScope.get(scope);
  if (!joined) joinedByScope.set(scope, joined = new Map());
  const index = joined.get(key) ?? 0;
  joined.set(key, index + 1);
  return index;
}

/** A classic BPF program of one instruction, `ret #index`: the member at `index` gets it. */
function chooseMember(index: number): Uint8Array {
  const program = new Uint8Array(8); // struct sock_filter { u16 code; u8 jt, jf; u32 k }
  const v = new DataView(program.buffer);
  v.setUint16(0, 0x06, true); // BPF_RET | BPF_K
  v.setUint32(4, index, true);
  return program;
}

/** The accept queue's length of a TCP listener (TCP_INFO's tcpi_unacked), or -1. */
function acceptQueue(fd: number): number {
  const info = tryGetsockopt(fd, SOL.TCP, TCP.INFO, 32);
  return typeof info === "number" ? -1 : readU32(info, 24);
}

/**
 * Runs `connectAll` (which connects a listener's clients and says how many) while every new
 * connection to the SO_REUSEPORT group of the listener at target fd `fd` goes to that listener,
 * its member at `index`; fails unless they all wait in its queue then.
 */
export function steerToMember(
  ctx: FileRestoreContext,
  fd: number,
  index: number,
  description: string,
  connectAll: () => number,
): void {
  const copy = pidfdGetfd(ctx.pidfd, fd);
  try {
    const before = acceptQueue(copy);
    const r = tryAttachReuseportProgram(copy, chooseMember(index));
    if (r < 0) {
      throw new RestoreError(
        `${description}: cannot steer its clients to it in its SO_REUSEPORT group ` +
          `(SO_ATTACH_REUSEPORT_CBPF: errno ${-r})`,
      );
    }
    let connected: number;
    try {
      connected = connectAll();
    } finally {
      tryDetachReuseportProgram(copy);
    }
    const after = acceptQueue(copy);
    if (after - before !== connected) {
      throw new RestoreError(
        `${description}: ${connected} client(s) connected again but ${after - before} wait in ` +
          `its queue: the others went to another socket of its SO_REUSEPORT group (one ` +
          `outside the image, bound to the port before the restore?)`,
      );
    }
  } finally {
    close(copy);
  }
}
