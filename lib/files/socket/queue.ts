/**
 * A UNIX socket's receive queue, read without consuming it and put back at restore: shared by
 * connected pairs (unix_pair.ts) and named datagram sockets (unix_datagrams.ts).
 *
 * Dump, inside the frozen target: SO_PEEK_OFF set to 0 makes successive MSG_PEEK reads walk the
 * queue, and is put back as it was afterwards, also on error. Each peek can also take the
 * sender's address (msg_name) and, while SO_PASSCRED is on, its credentials (SCM_CREDENTIALS).
 * Restore: the tool sends the messages again from a socket of its own, with a send buffer large
 * enough for all of them at once, so nothing waits for a reader.
 */
import {
  CONTROL_ROOM,
  decodeControl,
  Errno,
  MSG,
  SO,
  SOCK,
  SOCK_IOCTL,
  SOL,
  SYS,
  tryGetsockopt,
  trySetsockoptInt,
  type Ucred,
} from "../../../ffi/mod.ts";
import { DumpError, RestoreError } from "../../errors.ts";
import type { Injector } from "../../ptrace/inject.ts";
import { i32, readI32, readU32 } from "../util.ts";
import type { OptionReader } from "./options.ts";
import type { TargetSocket } from "./target_socket.ts";

// Scratch layout while peeking (TargetSocket uses 0xe000 and up). A span's iovecs sit in the
// chunk they point at: the kernel has copied them in before it writes any data there.
const CHUNK = 0xc000;
const SPAN_IOVECS = 1024; // UIO_MAXIOV
const SPAN_LIMIT = SPAN_IOVECS * CHUNK;
const MSGHDR_AT = 0xc000, IOV_AT = 0xc040, NAME_AT = 0xc080, CONTROL_AT = 0xc100;
const NAME_SIZE = 128, CONTROL_SIZE = CONTROL_ROOM;
const MSG_NAMELEN = 8, MSG_CONTROLLEN = 40, MSG_FLAGS = 48; // offsets in struct msghdr

/** One message of a queue, as a peek saw it. */
export interface PeekedMessage {
  data: Uint8Array;
  /** The sender's raw address (msg_name), when asked for. */
  sender: Uint8Array | null;
  /** SCM_CREDENTIALS, when SO_PASSCRED was on while peeking. */
  credentials: Ucred | null;
  /**
   * SCM_RIGHTS: the descriptors it carries, as the peek installed copies of them in the target
   * (numbers there, closed again by `closeInstalled`).
   */
  fds: number[];
}

function sameCredentials(a: Ucred | null, b: Ucred | null): boolean {
  return a === b || (!!a && !!b && a.pid === b.pid && a.uid === b.uid && a.gid === b.gid);
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Reads the receive queue of a target socket with MSG_PEEK, walking it through SO_PEEK_OFF. */
export class QueuePeeker {
  readonly #msghdr: bigint;
  readonly #inj: Injector;
  readonly #installed: number[] = [];

  /** `name` describes the socket in messages; `withSender`: take each sender's address and
   * control messages too. */
  constructor(readonly socket: TargetSocket, readonly name: string, readonly withSender = false) {
    const inj = this.#inj = socket.inj;
    const iov = new BigUint64Array([inj.scratch(), BigInt(CHUNK)]); // the chunk at offset 0
    const msghdr = new BigUint64Array(7); // name, namelen, iov, iovlen, control, controllen, flags
    msghdr[2] = inj.put(new Uint8Array(iov.buffer), IOV_AT);
    msghdr[3] = 1n;
    if (withSender) {
      msghdr[0] = inj.scratch() + BigInt(NAME_AT);
      msghdr[4] = inj.scratch() + BigInt(CONTROL_AT);
    }
    this.#msghdr = inj.put(new Uint8Array(msghdr.buffer), MSGHDR_AT);
  }

  /** The descriptors the peeks installed in the target so far (SCM_RIGHTS). */
  get installed(): readonly number[] {
    return this.#installed;
  }

  /** Closes in the target every descriptor a peek installed there (SCM_RIGHTS). */
  closeInstalled(): void {
    for (const fd of this.#installed.splice(0)) this.#inj.raw(SYS.close, fd);
  }

  /** SO_PEEK_OFF, or an errno. */
  setPeekOffset(value: number): number {
    return this.socket.setsockopt(SOL.SOCKET, SO.PEEK_OFF, i32(value));
  }

  queued(): number {
    const n = this.socket.ioctlInt(SOCK_IOCTL.FIONREAD);
    if (n < 0) throw new DumpError(`${this.name}: FIONREAD failed (errno ${-n})`);
    return n;
  }

  /** Whether an out-of-band byte waits (a peek with MSG_OOB gets it; EINVAL when there is none). */
  hasOutOfBand(): boolean {
    const r = this.#inj.raw(
      SYS.recvmsg,
      this.socket.fd,
      this.#msghdr,
      MSG.OOB | MSG.PEEK | MSG.DONTWAIT,
    );
    return r > 0n;
  }

  /** The next chunk of at most `size` bytes (up to CHUNK), with whether its message goes on
   * (MSG_TRUNC); null when nothing is left. */
  next(size = CHUNK): { message: PeekedMessage; truncated: boolean } | null {
    const iov = new BigUint64Array([this.#inj.scratch(), BigInt(size)]);
    return this.#peek(this.#inj.put(new Uint8Array(iov.buffer), IOV_AT), 1, size);
  }

  /**
   * How far the stream reads from the peek offset on, up to `limit` bytes, in one read: a peek
   * asking for all of it stops after a write that carried descriptors (with them) or before a
   * writer with other credentials. The bytes land over each other in the chunk: read them with
   * `next`. Null when nothing is left.
   */
  span(limit: number): { length: number; message: PeekedMessage } | null {
    const count = Math.ceil(Math.min(limit, SPAN_LIMIT) / CHUNK);
    const iovs = new BigUint64Array(2 * count);
    for (let i = 0; i < count; i++) {
      iovs[2 * i] = this.#inj.scratch();
      iovs[2 * i + 1] = BigInt(i < count - 1 ? CHUNK : limit - (count - 1) * CHUNK);
    }
    const peeked = this.#peek(this.#inj.put(new Uint8Array(iovs.buffer), 0), count, 0);
    return peeked && { length: peeked.length, message: peeked.message };
  }

  /** Lets go at once of the copies a peek installed (a span's descriptors seen again). */
  drop(fds: readonly number[]): void {
    for (const fd of fds) {
      this.#inj.raw(SYS.close, fd);
      this.#installed.splice(this.#installed.indexOf(fd), 1);
    }
  }

  /** One MSG_PEEK into `count` iovecs at `iov`; `keep` bytes of the chunk are returned as data. */
  #peek(
    iov: bigint,
    count: number,
    keep: number,
  ): { message: PeekedMessage; truncated: boolean; length: number } | null {
    this.#inj.put(new Uint8Array(new BigUint64Array([iov, BigInt(count)]).buffer), MSGHDR_AT + 16);
    if (this.withSender) {
      // The kernel writes back how much of each it used: give the whole room again.
      this.#inj.put(
        new Uint8Array(new BigUint64Array([BigInt(NAME_SIZE)]).buffer),
        MSGHDR_AT + MSG_NAMELEN,
      );
      this.#inj.put(
        new Uint8Array(new BigUint64Array([BigInt(CONTROL_SIZE)]).buffer),
        MSGHDR_AT + MSG_CONTROLLEN,
      );
    }
    const r = Number(
      this.#inj.raw(SYS.recvmsg, this.socket.fd, this.#msghdr, MSG.PEEK | MSG.DONTWAIT),
    );
    if (r === -Errno.EAGAIN) return null;
    if (r < 0) throw new DumpError(`${this.name}: peeking at its queue failed (errno ${-r})`);
    const header = this.#inj.get(MSGHDR_AT, 56).slice();
    const flags = readU32(header, MSG_FLAGS);
    const message: PeekedMessage = {
      data: this.#inj.get(0, Math.min(r, keep)).slice(),
      sender: null,
      credentials: null,
      fds: [],
    };
    if (this.withSender) {
      const nameLen = Math.min(readU32(header, MSG_NAMELEN), NAME_SIZE);
      message.sender = this.#inj.get(NAME_AT, nameLen).slice();
      const controlLen = Math.min(readU32(header, MSG_CONTROLLEN), CONTROL_SIZE);
      const control = decodeControl(this.#inj.get(CONTROL_AT, controlLen).slice());
      message.credentials = control.credentials;
      message.fds = control.fds;
      this.#installed.push(...control.fds);
    }
    return { message, truncated: (flags & MSG.TRUNC) !== 0, length: r };
  }

  /**
   * Runs `peek` with SO_PEEK_OFF at 0 and, when the peeker takes senders, SO_PASSCRED on (so each
   * message shows its credentials), and puts both back (read through `reader`) however it ends;
   * returns what `peek` gave and the offset the process had.
   */
  walk<T>(reader: OptionReader, peek: () => T): { result: T; savedOffset: number } {
    const read = (option: number, name: string): number => {
      const v = reader.getsockopt(SOL.SOCKET, option, 4);
      if (typeof v === "number") {
        throw new DumpError(`${this.name}: getsockopt(${name}) failed (errno ${-v})`);
      }
      return readI32(v);
    };
    const savedOffset = read(SO.PEEK_OFF, "SO_PEEK_OFF");
    const passcred = this.withSender && read(SO.PASSCRED, "SO_PASSCRED") === 0;
    let r = this.setPeekOffset(0);
    if (r >= 0 && passcred) r = this.socket.setsockopt(SOL.SOCKET, SO.PASSCRED, i32(1));
    let result: T;
    try {
      if (r < 0) throw new DumpError(`${this.name}: setsockopt failed (errno ${-r})`);
      result = peek();
    } finally {
      // The process must find its socket as it was, whatever happened above.
      r = this.setPeekOffset(savedOffset);
      const p = passcred ? this.socket.setsockopt(SOL.SOCKET, SO.PASSCRED, i32(0)) : 0;
      if (r >= 0) r = p;
    }
    if (r < 0) throw new DumpError(`${this.name}: could not put its options back (errno ${-r})`);
    return { result, savedOffset };
  }
}

/**
 * The queue as stream bytes (one run) or messages; `shutRd`: receiving was shut down. Messages
 * that went on over several reads (MSG_TRUNC) are joined, with the first read's sender.
 */
export function peekQueue(p: QueuePeeker, type: number, shutRd: boolean): PeekedMessage[] {
  const expected = p.queued(); // stream and seqpacket: every byte queued; datagram: the first
  if (type === SOCK.STREAM) {
    // A peek walks over an out-of-band byte as if it were inline: ask for it on its own.
    if (p.hasOutOfBand()) {
      throw new DumpError(
        `${p.name} has an out-of-band byte (MSG_OOB) queued, which tardigrade cannot keep; ` +
          `a policy can skip it`,
      );
    }
    // One run of bytes for each writer's credentials, one in all without them, and a run up to
    // each write that carried descriptors, with them: a peek stops after such a write, or before
    // a writer with other credentials, but not between writes otherwise, so where a run of
    // several writes ends in one with descriptors, the copy is one write carrying them (as CRIU
    // keeps it too): a reader reading less than the run may get them a read earlier.
    const runs: PeekedMessage[][] = [];
    let total = 0;
    while (total < expected) {
      const asked = Math.min(expected - total, SPAN_LIMIT);
      const span = p.span(asked);
      if (!span || span.length === 0) break; // 0: end, the peer shut down sending
      if (span.message.fds.length && span.length === asked && total + asked < expected) {
        // A peek that fills its room goes on to take the descriptors of a later write.
        throw new DumpError(
          `${p.name} has more than ${SPAN_LIMIT} bytes queued before descriptors in flight`,
        );
      }
      const parts: Uint8Array[] = [];
      const r = p.setPeekOffset(total);
      if (r < 0) throw new DumpError(`${p.name}: setsockopt(SO_PEEK_OFF) failed (errno ${-r})`);
      for (let got = 0; got < span.length;) {
        const chunk = p.next(Math.min(CHUNK, span.length - got));
        if (!chunk?.message.data.length) break;
        p.drop(chunk.message.fds); // the span's, seen again
        parts.push(chunk.message.data);
        got += chunk.message.data.length;
      }
      const m = { ...span.message, data: concat(parts) };
      if (m.data.length !== span.length) {
        throw new DumpError(`${p.name}: its queue changed while it was read`);
      }
      const last = runs.at(-1);
      const joins = last && !last[0].fds.length && !m.fds.length &&
        sameCredentials(last[0].credentials, m.credentials);
      if (joins) last.push(m);
      else runs.push([m]);
      total += m.data.length;
    }
    if (total !== expected) {
      throw new DumpError(`${p.name}: ${expected} bytes are queued but ${total} could be peeked`);
    }
    return runs.map((run) => ({ ...run[0], data: concat(run.map((m) => m.data)) }));
  }
  const messages: PeekedMessage[] = [];
  let message: PeekedMessage[] = [];
  let total = 0;
  for (;;) {
    const chunk = p.next();
    if (!chunk) break;
    // A shut-down seqpacket socket reads 0 at its end, as it reads an empty message.
    const atEnd = type === SOCK.SEQPACKET && shutRd && total >= expected && !message.length;
    if (chunk.message.data.length === 0 && atEnd) break;
    message.push(chunk.message);
    total += chunk.message.data.length;
    if (!chunk.truncated) {
      messages.push({ ...message[0], data: concat(message.map((m) => m.data)) });
      message = [];
    }
  }
  return messages;
}

/** SO_SNDBUF of a tool fd, or a negative errno. */
function sendBuffer(fd: number): number {
  const size = tryGetsockopt(fd, SOL.SOCKET, SO.SNDBUF, 4);
  return typeof size === "number" ? size : readI32(size);
}

/** Sets SO_SNDBUF of a tool fd to `bytes` through SO_SNDBUFFORCE (which doubles what it gets). */
function forceSendBuffer(fd: number, bytes: number): void {
  trySetsockoptInt(fd, SOL.SOCKET, SO.SNDBUFFORCE, Math.min(Math.ceil(bytes / 2), 0x3fffffff));
}

/**
 * Runs `send` with the tool's socket `sender` given room for `messages` and their overhead at
 * once (nothing waits for a reader), then its own send buffer again.
 */
export function withRoomFor(
  sender: number,
  messages: readonly Uint8Array[],
  what: string,
  send: () => void,
): void {
  const size = sendBuffer(sender);
  if (size < 0) throw new RestoreError(`${what}: getsockopt(SO_SNDBUF): errno ${-size}`);
  forceSendBuffer(sender, 2 * messages.reduce((n, m) => n + m.length + 1024, 65536));
  try {
    send();
  } finally {
    forceSendBuffer(sender, size);
  }
}
