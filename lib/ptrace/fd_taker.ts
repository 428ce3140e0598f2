/**
 * Taking descriptors of other processes into the one an injector runs in, as a fork would have
 * shared them: the same open file, by an injected `pidfd_getfd`. Each owner's pidfd is opened in
 * the target once and kept at or above a floor, out of the way of the numbers being restored.
 */
import { F } from "../../ffi/mod.ts";
import { namespaceIds, parseKeyValues, readProcText } from "../inspect/procfs.ts";
import { RestoreError } from "../errors.ts";
import type { Injector } from "./inject.ts";

/**
 * The pid of host pid `pid` in the pid namespace of host pid `viewer`: its NSpid at the
 * viewer's level (NSpid lists the tool's namespace first, the innermost last).
 */
function pidSeenBy(pid: number, viewer: number): number {
  const seen = namespaceIds(pid)[namespaceIds(viewer).length - 1];
  if (seen === undefined) {
    throw new RestoreError(
      `process ${viewer} cannot take a descriptor of process ${pid}, which lives in a pid ` +
        `namespace around its own`,
    );
  }
  return seen;
}

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
      pidfd = Number(this.inj.call("pidfd_open", pidSeenBy(pid, this.inj.pid), 0));
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
