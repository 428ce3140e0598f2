/**
 * Reading a frozen process's socket from a copy the tool takes with pidfd_getfd: its options and
 * names with a syscall of the tool's each, not an injected one (a socket has some thirty options
 * to read, and an injected syscall costs two ptrace stops).
 *
 * Receiving a socket makes the kernel set its net_cls class id and net_prio index to the
 * receiver's (cgroup v1): the copy is taken only when the tool's cgroups have neither controller,
 * when the values it would set are those of the root, which every socket has there. Elsewhere the
 * socket is read where it is (`TargetSocket`), as it is peeked at and adjusted anyway.
 */
import { close, pidfdGetfd, tryGetName } from "../../../ffi/mod.ts";
import { readProcText } from "../../inspect/procfs.ts";
import { type OptionReader, toolSocketOptions } from "./options.ts";
import type { TargetSocket } from "./target_socket.ts";

/** What a dump reads of a socket: options and names; each gives a negative errno on failure. */
export interface SocketReader extends OptionReader, Disposable {
  /** The raw sockaddr getsockname or getpeername gives, or a negative errno. */
  name(which: "getsockname" | "getpeername"): Uint8Array | number;
}

let copiesHarmless: boolean | undefined;

/**
 * Whether taking a copy of a socket changes nothing of it: no cgroup v1 hierarchy of the tool has
 * net_cls or net_prio (see the top).
 */
export function copiesAreHarmless(): boolean {
  if (copiesHarmless === undefined) {
    const lines = readProcText(Deno.pid, "cgroup").split("\n");
    copiesHarmless = !lines.some((l) => /^\d+:[^:]*\bnet_(cls|prio)\b/.test(l));
  }
  return copiesHarmless;
}

/** Whether a copy of an open file of this kind, taken with pidfd_getfd, changes nothing of it. */
export function copyIsHarmless(kind: string): boolean {
  return kind !== "socket" || copiesAreHarmless();
}

/**
 * A reader of the socket `socket` is on: a copy in the tool (closed on dispose) where taking one
 * changes nothing, else `socket` itself.
 */
export function socketReader(pidfd: number, socket: TargetSocket): SocketReader {
  let fd = -1;
  if (copiesAreHarmless()) {
    try {
      fd = pidfdGetfd(pidfd, socket.fd);
    } catch { /* read it where it is */ }
  }
  if (fd < 0) {
    return {
      getsockopt: (level, option, size, input) => socket.getsockopt(level, option, size, input),
      filter: () => socket.filter(),
      name: (which) => socket.name(which),
      [Symbol.dispose]: () => {},
    };
  }
  return {
    ...toolSocketOptions(fd, true),
    name: (which) => tryGetName(fd, which),
    [Symbol.dispose]: () => close(fd),
  };
}
