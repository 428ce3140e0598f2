/**
 * Taking descriptors of other processes into the one an injector runs in, as a fork would have
 * shared them: the same open file, by an injected `pidfd_getfd`. Each owner's pidfd is opened in
 * the target once and kept at or above a floor, out of the way of the numbers being restored.
 */
import { F } from "../../ffi/mod.ts";
import { innermostPid } from "../inspect/procfs.ts";
import type { Injector } from "./inject.ts";

/** Takes descriptors into the process `inj` runs in; `using` closes the pidfds it opened there. */
export class FdTaker implements Disposable {
  readonly #pidfds = new Map<number, number>();

  /** `floor`: the lowest number the pidfds of owners may have in the target. */
  constructor(readonly inj: Injector, readonly floor = 0) {}

  /** A duplicate of descriptor `fd` of process `pid` (a tool pid); it has FD_CLOEXEC set. */
  take(pid: number, fd: number): number {
    return Number(this.inj.call("pidfd_getfd", this.#pidfdOf(pid), fd, 0));
  }

  #pidfdOf(pid: number): number {
    let pidfd = this.#pidfds.get(pid);
    if (pidfd === undefined) {
      // The owner's pid as the target names it: they share the innermost pid namespace.
      pidfd = Number(this.inj.call("pidfd_open", innermostPid(pid), 0));
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
