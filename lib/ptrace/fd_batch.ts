/**
 * Open files moved into a process being restored as SCM_RIGHTS, over a socketpair the process
 * makes itself (an injected socketpair) and whose other end the tool takes (pidfd_getfd in the
 * tool, which may take from any process it restores). The push goes this way round because the
 * other (the process taking the tool's copy with pidfd_getfd) needs ptrace rights over the tool,
 * which a process in a user namespace of its own never has.
 *
 * Files a process shares since a fork with a process made before it go many at a time: the tool
 * takes its copies from their owners and one injected recvmsg puts up to 253 of them at the
 * lowest free numbers, in the order sent, without FD_CLOEXEC (taken one by one, each cost an
 * injected pidfd_getfd and an fcntl: a tree's children inherit hundreds). The tool's own files
 * (a socket it made, a terminal handed in) go one at a time (`handIn`).
 */
import {
  AF,
  close,
  decodeRights,
  encodeMsghdr,
  F,
  pidfdGetfd,
  pidfdOpen,
  rightsSpace,
  SCM_MAX_FD,
  SOCK,
  SYS,
  trySendFds,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "./inject.ts";

/** One open file to move: descriptor `fd` of process `pid` (a pid of the tool's). */
export interface HeldFile {
  pid: number;
  fd: number;
}

/** Moves open files into the process `inj` runs in; `using` closes what it opened on both sides. */
export class FdBatch implements Disposable {
  /** The tool's end of the socketpair, and the target's fd of the other end (-1: not yet). */
  #mine = -1;
  #theirs = -1;
  #disposed = false;
  readonly #pidfds = new Map<number, number>();

  /**
   * `floor`: the lowest number the target's end may have (above every number being restored);
   * `put` copies bytes into its scratch.
   */
  constructor(
    readonly inj: Injector,
    readonly floor: number,
    readonly put: (data: Uint8Array) => bigint,
  ) {}

  /** The largest batch one `take` moves. */
  static readonly MAX = SCM_MAX_FD;

  /**
   * Moves `files` (at most `FdBatch.MAX`) into the target: their numbers there, in order (each
   * the lowest free one when it arrived).
   */
  take(files: HeldFile[]): number[] {
    const copies: number[] = [];
    try {
      for (const f of files) copies.push(pidfdGetfd(this.#pidfdOf(f.pid), f.fd));
      return this.#send(copies);
    } finally {
      for (const fd of copies) close(fd);
    }
  }

  /**
   * Gives the target the tool's descriptor `mine`, the very open file, at the lowest free number
   * without FD_CLOEXEC: that number, or why the target could not take it.
   */
  handIn(mine: number): number | string {
    try {
      return this.#send([mine])[0];
    } catch (err) {
      return (err as Error).message;
    }
  }

  /** Sends the tool's descriptors `fds` and receives them in the target: their numbers there. */
  #send(fds: number[]): number[] {
    this.#open();
    const sent = trySendFds(this.#mine, fds);
    if (sent < 0) {
      throw new RestoreError(`sending ${fds.length} descriptors failed (errno ${-sent})`);
    }
    const space = rightsSpace(fds.length);
    const control = this.put(new Uint8Array(space));
    const byte = this.put(new Uint8Array(16)); // the one byte of data the message carries
    const iov = this.put(new Uint8Array(new BigUint64Array([byte, 1n]).buffer));
    const msghdr = this.put(encodeMsghdr(iov, control, space));
    const r = this.inj.raw(SYS.recvmsg, this.#theirs, msghdr, 0);
    if (r < 0n) throw new RestoreError(`receiving descriptors failed (errno ${-r})`);
    const got = decodeRights(this.inj.mem.read(control, space));
    if (got.length !== fds.length) {
      throw new RestoreError(`${fds.length} descriptors sent, ${got.length} received`);
    }
    return got;
  }

  /** The socketpair, made by the target: its end kept above `floor`, the other taken here. */
  #open(): void {
    if (this.#theirs >= 0) return;
    if (this.#disposed) throw new RestoreError("the descriptor batch was already closed");
    const sv = this.put(new Uint8Array(8));
    this.inj.call("socketpair", AF.UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC, 0, sv);
    const [a, b] = new Int32Array(this.inj.mem.read(sv, 8).slice().buffer);
    try {
      this.#mine = pidfdGetfd(this.#pidfdOf(this.inj.pid), b);
      this.#theirs = Number(this.inj.call("fcntl", a, F.DUPFD_CLOEXEC, this.floor));
    } finally {
      this.inj.queue("close", [a]);
      this.inj.queue("close", [b]); // made with the next call
    }
  }

  #pidfdOf(pid: number): number {
    let pidfd = this.#pidfds.get(pid);
    if (pidfd === undefined) this.#pidfds.set(pid, pidfd = pidfdOpen(pid));
    return pidfd;
  }

  /** Closes the tool's pidfds and end, and the target's end (a dead target's needs no closing). */
  [Symbol.dispose](): void {
    this.#disposed = true;
    for (const pidfd of this.#pidfds.values()) close(pidfd);
    this.#pidfds.clear();
    if (this.#mine >= 0) close(this.#mine);
    this.#mine = -1;
    if (this.#theirs >= 0) {
      try {
        this.inj.call("close", this.#theirs);
      } catch { /* gone with the process */ }
      this.#theirs = -1;
    }
  }
}
