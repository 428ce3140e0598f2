/**
 * Open files a process of a tree shares since a fork with a process made before it, moved into it
 * many at a time, as SCM_RIGHTS: the tool takes its copies from their owners (pidfd_getfd in the
 * tool, no injection), sends them over a socketpair whose other end the target holds, and one
 * injected recvmsg puts up to 253 of them at the lowest free numbers, in the order sent, without
 * FD_CLOEXEC. Taken one by one, each cost an injected pidfd_getfd and an fcntl to clear the
 * FD_CLOEXEC it sets: two ptrace round trips a descriptor, and a tree's children inherit hundreds.
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
  trySocketpair,
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
  readonly #pidfds = new Map<number, number>();

  /**
   * `floor`: the lowest number the target's end may have (above every number being restored);
   * `toolPidfd` opens a pidfd of the tool inside the target; `put` copies bytes into its scratch.
   */
  constructor(
    readonly inj: Injector,
    readonly floor: number,
    readonly toolPidfd: () => bigint,
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
      this.#open();
      const sent = trySendFds(this.#mine, copies);
      if (sent < 0) {
        throw new RestoreError(`sending ${copies.length} descriptors failed (errno ${-sent})`);
      }
    } finally {
      for (const fd of copies) close(fd);
    }
    const space = rightsSpace(files.length);
    const control = this.put(new Uint8Array(space));
    const byte = this.put(new Uint8Array(16)); // the one byte of data the message carries
    const iov = this.put(new Uint8Array(new BigUint64Array([byte, 1n]).buffer));
    const msghdr = this.put(encodeMsghdr(iov, control, space));
    const r = this.inj.raw(SYS.recvmsg, this.#theirs, msghdr, 0);
    if (r < 0n) throw new RestoreError(`receiving descriptors failed (errno ${-r})`);
    const fds = decodeRights(this.inj.mem.read(control, space));
    if (fds.length !== files.length) {
      throw new RestoreError(`${files.length} descriptors sent, ${fds.length} received`);
    }
    return fds;
  }

  /** The socketpair, its other end handed to the target above `floor`. */
  #open(): void {
    if (this.#theirs >= 0) return;
    const pair = trySocketpair(AF.UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC);
    if (typeof pair === "number") throw new RestoreError(`socketpair failed (errno ${-pair})`);
    this.#mine = pair[0];
    try {
      const tool = this.toolPidfd();
      if (tool < 0n) throw new RestoreError(`pidfd_open of the tool failed (errno ${-tool})`);
      let end: number;
      try {
        end = Number(this.inj.call("pidfd_getfd", tool, pair[1], 0));
      } finally {
        this.inj.queue("close", [tool]); // made with the next call
      }
      this.#theirs = Number(this.inj.call("fcntl", end, F.DUPFD_CLOEXEC, this.floor));
      this.inj.queue("close", [end]);
    } finally {
      close(pair[1]);
    }
  }

  #pidfdOf(pid: number): number {
    let pidfd = this.#pidfds.get(pid);
    if (pidfd === undefined) this.#pidfds.set(pid, pidfd = pidfdOpen(pid));
    return pidfd;
  }

  /** Closes the tool's pidfds and end, and the target's end (a dead target's needs no closing). */
  [Symbol.dispose](): void {
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
