/**
 * Taking descriptors of other processes into the one an injector runs in, as a fork would have
 * shared them: the same open file, by an injected `pidfd_getfd`. Each owner's pidfd is opened in
 * the target once and kept at or above a floor, out of the way of the numbers being restored.
 * An owner the target cannot name (it lives in a pid namespace around the target's: a nested
 * namespace's init taking what its maker outside shares with it) is taken by the tool and pushed
 * over a socketpair the target makes (fd_batch.ts).
 */
import { F, FD_CLOEXEC } from "../../ffi/mod.ts";
import { namespaceIds, parseKeyValues, readProcText } from "../inspect/procfs.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "./inject.ts";
import { FdBatch } from "./fd_batch.ts";

/**
 * The pid of host pid `pid` in the pid namespace of host pid `viewer`: its NSpid at the
 * viewer's level (NSpid lists the tool's namespace first, the innermost last); undefined when it
 * lives in a namespace around the viewer's.
 */
function pidSeenBy(pid: number, viewer: number): number | undefined {
  return namespaceIds(pid)[namespaceIds(viewer).length - 1];
}

/** Where the pushes of a taker put their bytes in the target's scratch (above what others use). */
const PUSH_SCRATCH = { base: 12288, end: 16384 };

/** Takes descriptors into the process `inj` runs in; `using` closes the pidfds it opened there. */
export class FdTaker implements Disposable {
  readonly #pidfds = new Map<number, number>();
  #push?: FdBatch;

  /** `floor`: the lowest number the pidfds of owners may have in the target. */
  constructor(readonly inj: Injector, readonly floor = 0) {}

  /** A duplicate of descriptor `fd` of process `pid` (a tool pid); it has FD_CLOEXEC set. */
  take(pid: number, fd: number): number {
    const pidfd = this.#pidfdOf(pid);
    if (pidfd !== null) return Number(this.inj.call("pidfd_getfd", pidfd, fd, 0));
    // Pushed by the tool: it arrives without FD_CLOEXEC, which a taken one has.
    const [got] = this.#pusher().take([{ pid, fd }]);
    this.inj.call("fcntl", got, F.SETFD, FD_CLOEXEC);
    return got;
  }

  #pusher(): FdBatch {
    if (this.#push) return this.#push;
    let at = PUSH_SCRATCH.base;
    const put = (data: Uint8Array): bigint => {
      if (at + data.length > PUSH_SCRATCH.end) at = PUSH_SCRATCH.base;
      const addr = this.inj.put(data, at);
      at += (data.length + 15) & ~15;
      return addr;
    };
    return this.#push = new FdBatch(this.inj, this.floor, put);
  }

  #pidfdOf(pid: number): number | null {
    let pidfd = this.#pidfds.get(pid);
    if (pidfd === undefined) {
      const seen = pidSeenBy(pid, this.inj.pid);
      if (seen === undefined) return null; // around its namespace: pushed instead
      pidfd = Number(this.inj.call("pidfd_open", seen, 0));
      // The same number may name another process in a sibling namespace: the tool's /proc
      // shows whom the pidfd opened (by host pid).
      const opened = Number(
        parseKeyValues(readProcText(this.inj.pid, `fdinfo/${pidfd}`)).get("Pid"),
      );
      if (opened !== pid) {
        this.inj.call("close", pidfd);
        throw new RestoreError(
          `process ${this.inj.pid} cannot take a descriptor of process ${pid}: ${pid} is not ` +
            `in its pid namespace nor one nested in it`,
        );
      }
      if (pidfd < this.floor) {
        const moved = Number(this.inj.call("fcntl", pidfd, F.DUPFD_CLOEXEC, this.floor));
        this.inj.queue("close", [pidfd]); // made with the next call
        pidfd = moved;
      }
      this.#pidfds.set(pid, pidfd);
    }
    return pidfd;
  }

  /** Closes the owners' pidfds in the target (what a dead target held needs no closing). */
  [Symbol.dispose](): void {
    this.#push?.[Symbol.dispose]();
    this.#push = undefined;
    for (const pidfd of this.#pidfds.values()) {
      try {
        this.inj.call("close", pidfd);
      } catch { /* gone with the process */ }
    }
    this.#pidfds.clear();
  }
}

/** One descriptor of process `pid` taken into the process `inj` runs in (see `FdTaker`). */
export function takeFd(inj: Injector, pid: number, fd: number): number {
  using taker = new FdTaker(inj);
  return taker.take(pid, fd);
}
