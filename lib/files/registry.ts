/**
 * Every file handler, and lookups by inspection kind (dump) and by entry kind (restore).
 * Kinds with no handler (userfaultfd, "other"): the dumper stops with an error
 * naming the fd and its kind, unless a policy skips it.
 */
import type { Fd } from "../inspect/fds.ts";
import type { FileEntry } from "../image/schema.ts";
import { deviceHandler } from "./device.ts";
import { epollHandler } from "./epoll.ts";
import { eventfdHandler } from "./eventfd.ts";
import { externalHandler } from "./external.ts";
import { fanotifyHandler } from "./fanotify.ts";
import { inotifyHandler } from "./inotify.ts";
import { memfdHandler } from "./memfd.ts";
import { mqueueHandler } from "./mqueue.ts";
import { pidfdHandler } from "./pidfd.ts";
import { fifoHandler, pipeHandler } from "./pipe.ts";
import { ptyHandler } from "./pty.ts";
import { regularHandler } from "./regular.ts";
import { removeRecreated } from "./removed.ts";
import { signalfdHandler } from "./signalfd.ts";
import { socketHandler } from "./socket/dispatch.ts";
import { tcpStreamHandler } from "./socket/tcp_stream.ts";
import { timerfdHandler } from "./timerfd.ts";
import type { FileHandler } from "./types.ts";
import { unixPairHandler } from "./socket/unix_pair.ts";
import { unixPendingHandler } from "./socket/unix_pending.ts";
import { tcpPendingHandler } from "./socket/tcp_pending.ts";

/** All handlers, one per entry kind. */
export const FILE_HANDLERS: readonly FileHandler[] = [
  regularHandler,
  deviceHandler,
  ptyHandler,
  pipeHandler,
  fifoHandler,
  eventfdHandler,
  epollHandler,
  signalfdHandler,
  timerfdHandler,
  inotifyHandler,
  fanotifyHandler,
  pidfdHandler,
  memfdHandler,
  mqueueHandler,
  // Before socketHandler: its clients connect on release, before a ghost listener's path goes.
  unixPendingHandler,
  socketHandler,
  unixPairHandler,
  tcpStreamHandler,
  tcpPendingHandler,
  externalHandler,
] as FileHandler[];

const byFdKind = new Map(FILE_HANDLERS.flatMap((h) => h.fdKinds.map((k) => [k, h] as const)));
const byEntryKind = new Map(FILE_HANDLERS.map((h) => [h.kind, h] as const));

/** The handler that dumps `fd`, or undefined for a kind tardigrade does not handle. */
export function handlerForFd(fd: Fd): FileHandler | undefined {
  return byFdKind.get(fd.kind);
}

/** The handler that restores `entry`, or undefined for an unknown kind. */
export function handlerForEntry(entry: FileEntry): FileHandler | undefined {
  return byEntryKind.get(entry.kind);
}

/** Once every process of a restore is made: every handler lets go of what it holds for `scope`. */
export function releaseScope(scope: object): void {
  for (const h of FILE_HANDLERS) h.release?.(scope);
  removeRecreated(scope); // every process has the removed files and directories it had
}

/** After `releaseScope`, once every process is made: what was held still may run (TCP). */
export function resumeScope(scope: object): void {
  for (const h of FILE_HANDLERS) h.resume?.(scope);
}

/** A restore that failed or stopped early: every handler drops what it holds for `scope`. */
export function abortScope(scope: object): void {
  for (const h of FILE_HANDLERS) h.abort ? h.abort(scope) : h.release?.(scope);
  removeRecreated(scope);
}
