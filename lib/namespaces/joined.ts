/**
 * Namespaces a dump leaves out (`--external net`, `--external user`) and a restore joins instead of
 * making: the tool hands one in as a descriptor open on it (/run/netns/NAME, /proc/PID/ns/KIND),
 * which the process that joins it takes with pidfd_getfd on the tool and enters with setns.
 */
import { CLONE } from "../../ffi/mod.ts";
import type { Injector } from "../ptrace/inject.ts";

/** The kinds a dump may leave out for the restore to join one handed in. */
export const JOINABLE_KINDS = ["net", "user"] as const;

/** A kind of namespace a restore may join. */
export type JoinableKind = typeof JOINABLE_KINDS[number];

const FLAG: Record<JoinableKind, bigint> = { net: CLONE.NEWNET, user: CLONE.NEWUSER };

/**
 * The namespace (`net:[N]`) tool descriptor `fd` is open on (through /proc/PID/ns/KIND or a
 * bind mount of it, as /run/netns/NAME), or null when it is not a namespace; setns then refuses
 * one of another kind.
 */
export function namespaceOfFd(fd: number, kind: JoinableKind): string | null {
  try {
    const st = Deno.statSync(`/proc/self/fd/${fd}`);
    return st.dev === Deno.statSync(`/proc/self/ns/${kind}`).dev ? `${kind}:[${st.ino}]` : null;
  } catch {
    return null;
  }
}

/**
 * Moves the process `inj` runs in into the namespace of `kind` the tool's descriptor `fd` is open
 * on; `toolPidfd`, its descriptor of a pidfd of the tool, when it has one (in a pid namespace of
 * its own it cannot name the tool).
 */
export function joinHandedIn(
  inj: Injector,
  fd: number,
  kind: JoinableKind,
  toolPidfd?: number,
): void {
  const pidfd = toolPidfd ?? inj.call("pidfd_open", Deno.pid, 0);
  try {
    const taken = inj.call("pidfd_getfd", pidfd, fd, 0);
    try {
      inj.call("setns", taken, FLAG[kind]);
    } finally {
      inj.call("close", taken);
    }
  } finally {
    if (toolPidfd === undefined) inj.call("close", pidfd);
  }
}
