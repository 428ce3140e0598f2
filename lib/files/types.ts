/**
 * The contract between the dumper/restorer and the handlers of each kind of open file, one file
 * per kind in this folder (regular files, pipes, eventfd …), each with its dump and restore side
 * and its image entry, as CRIU splits them.
 */
import type { Fd, FdKind } from "../inspect/fds.ts";
import type { FrozenProcess } from "../ptrace/freeze.ts";
import type { Injector } from "../ptrace/inject.ts";
import type { RemoteMemory } from "../inspect/memory.ts";
import type { FileEntry } from "../image/schema.ts";
import type { Fields } from "../image/validate.ts";
import type { OutsideProcesses } from "./outside_peers.ts";

/**
 * What to do with one descriptor: dump it, leave it out (closed after restore), restore it as the
 * file at another path (opened with the same flags, at position 0 unless appending), or leave it
 * outside the image as external file `external` (a name such as `pipe:[12345]`, `fd.target`),
 * which the restore then needs handed in (`--inherit-fd fd[N]:KEY`, external.ts).
 */
export type FdDecision = "dump" | "skip" | { reopen: string } | { external: string };

/** What a handler may use while the target is frozen. */
export interface FileDumpContext {
  readonly pid: number;
  readonly frozen: FrozenProcess;
  /** A pidfd of the target, for `pidfdGetfd` (to peek at a pipe, read an eventfd …). */
  readonly pidfd: number;
  /** Stores the contents of a memfd or deleted file once; returns the memory object id. */
  storeObject(fd: Fd): number;
  /** Shared by every process of one dump, for state that spans processes (a pipe's data). */
  readonly scope?: object;
  /**
   * Open files already dumped by a process of this dump, by file id: an open file shared since a
   * fork (a socket, a pipe, a file) is dumped once and its entry reused, not read again.
   */
  readonly dumpedFiles?: Map<number, FileEntry>;
  /**
   * Every process of this dump (the target alone when absent), so a handler can tell whether
   * the other end of a connection is dumped too.
   */
  readonly pids?: readonly number[];
  /**
   * Every descriptor of every process of this dump, as read before anything was dumped (the
   * processes frozen), in the order of `pids` and of their numbers; absent: read when needed.
   */
  readonly heldFds?: readonly Fd[];
  /**
   * The processes outside this dump and what they hold, read once when first asked: who holds
   * the other end of a connection (outside_peers.ts).
   */
  readonly outside?: OutsideProcesses;
  /** The processes run on after the dump (`leaveRunning`); else they are killed once it is safe. */
  readonly leaveRunning?: boolean;
  /**
   * Registers `fn` to run once when the dump is over, while the processes are still frozen: with
   * `ok` true once the image is complete, just before they are let go or killed; with `ok` false
   * when the dump failed, to put back what the handler changed in them (a TCP connection held in
   * repair mode). Absent: a handler must leave the process as it found it before returning.
   */
  readonly atDumpEnd?: (fn: (ok: boolean) => void) => void;
  /**
   * The dump's network lock (lib/network/lock.ts): `add` has netfilter drop the packets of the
   * TCP connection between the raw sockaddrs `local` and `peer` from now until its restore, or
   * calls `fail` with the reason it cannot. Absent: nothing is locked.
   */
  readonly networkLock?: {
    add(local: Uint8Array, peer: Uint8Array, fail: (why: string) => never): void;
  };
  /**
   * The dumped container's net namespace, when the tree lives in another than the tool's: `own`,
   * made again at restore (it ends with the dumped processes, its packets with it), or `joined`,
   * left out and joined at restore (`--external net`: it outlives the dump).
   */
  readonly containerNet?: "own" | "joined";
  /**
   * Dumps the open file at target fd `fd`, a copy a peek installed of a descriptor in flight in
   * a socket's queue (SCM_RIGHTS), as an open file of this process (one that no descriptor refers
   * to, or the same entry as the descriptor's where it is open too), and returns its file id;
   * refuses one that a process dumped later has too. `installed`: every copy the peeks installed, which
   * are no descriptors of the process; `carrier` names the socket in refusals. Absent where files
   * in flight cannot be kept.
   */
  readonly dumpInFlight?: (
    fd: number,
    installed: readonly number[],
    carrier: string,
  ) => Promise<number>;
}

/**
 * The processes and threads of a restore. Every process exists before any descriptor is made,
 * its threads once it is built, and all of them when deferred handlers open their files.
 */
export interface RestoredTasks {
  /** Whether `id`, a pid or tid as the image has it, is a process or thread the restore makes. */
  restored(id: number): boolean;
  /**
   * The restore is in a new pid namespace: the image's ids are those of the restored processes
   * there, and an id from outside the image names nothing (or another process) there.
   */
  readonly ownNamespace: boolean;
}

/** What a handler may use while restoring, inside the process being made. */
export interface FileRestoreContext {
  readonly pid: number;
  /** Runs syscalls in the restored process's main thread. */
  readonly injector: Injector;
  readonly memory: RemoteMemory;
  /** A pidfd of the restored process. */
  readonly pidfd: number;
  /** Copies bytes into the target's scratch memory and returns their address there. */
  put(data: Uint8Array): bigint;
  /** Copies a NUL-terminated string into scratch memory and returns its address. */
  putString(s: string): bigint;
  /** An fd in the target opened on a stored memory object (memfd, deleted file). */
  objectFd(id: number): number;
  /**
   * Gives the target the tool's descriptor `mine`, the very open file, at the lowest free number
   * without FD_CLOEXEC (sent over a socketpair the target made: a target in a user namespace of
   * its own may not take it from the tool): that number, or why the target could not take it.
   */
  handIn(mine: number): number | string;
  /** The target fd number that a restored open file (by FileEntry id) now has. */
  fdOfFile(id: number): number;
  /** Target fd numbers as they will be once every descriptor is in place (for epoll). */
  readonly finalFds: ReadonlyMap<number, number>;
  /**
   * Shared by every process of one restore, for state that spans processes (a pipe whose ends
   * are in two processes). Each handler keeps its own state for a scope (in a WeakMap keyed by
   * it) and lets go of it in its scope hooks (`release`, `resume`, `abort`). Absent when one
   * process is restored alone: handlers then key their state by this context, settle each file
   * in finish(), and the fd table aborts what is left with the context as the scope.
   */
  readonly scope?: object;
  /** The processes and threads of the restore (absent when restoring a table alone). */
  readonly tasks?: RestoredTasks;
  /**
   * The tool's descriptors handed in for the image's external files, by key (`--inherit-fd
   * fd[N]:KEY`; external.ts), checked before anything was made.
   */
  readonly inherited?: ReadonlyMap<string, number>;
  /**
   * Makes open file `id` of this process, which no descriptor refers to (one in flight in a
   * socket's queue: `FileDumpContext.dumpInFlight`), and returns a target fd on it, which the
   * caller closes once it has sent it.
   */
  readonly openInFlight?: (id: number) => number;
}

/** The fields every open file's entry has (`FileEntry`), with those of its kind. */
export const FILE_ENTRY_FIELDS: Fields = {
  id: "whole",
  kind: "text",
  flags: "whole",
  owner: { optional: { map: { type: "whole", pid: "whole" } } },
  signal: { optional: "whole" },
};

/** How to make an open file that is only a path opened again (`FileHandler.openByPath`). */
export interface PathOpen {
  path: string;
  /** openat's flags. */
  flags: number;
  /** The file position to seek to (0: none). */
  position: bigint;
  /** A failed seek is no error (a character device without a position). */
  seekMayFail?: boolean;
}

/**
 * Dump and restore of one kind of open file. `D`, what `dump` returns, is wider than `E` where a
 * handler hands some files to another kind's handler (a connected UNIX socket to unix_pair.ts).
 *
 * The scope hooks run once per restore (registry.ts calls them for every handler), with the
 * restore's scope (see `FileRestoreContext.scope`).
 */
export interface FileHandler<E extends FileEntry = FileEntry, D extends FileEntry = E> {
  /** The `kind` of the entries this handler writes. */
  readonly kind: string;
  /**
   * The fields of its entries besides those every open file has (`FILE_ENTRY_FIELDS`): checked,
   * closed, before a restore makes anything, so a damaged entry is refused naming the field.
   */
  readonly fields: Fields;
  /** The inspection SDK kinds it dumps. */
  readonly fdKinds: readonly FdKind[];
  /** Describes the open file behind `fd` (called once per shared open file). */
  dump(fd: Fd, ctx: FileDumpContext): D | Promise<D>;
  /**
   * Before anything is made: a reason to refuse the restore, or null. The entry's paths are found
   * under `root` (lib/inspect/mount_root.ts): "" (the default) in the tool's mount tree, the
   * restored init's /proc/PID/root in a container's, checked once its mounts are made.
   */
  check?(entry: E, root?: string): string | null;
  /**
   * Its files are made only once every process and thread of the restore exists (a pidfd names
   * one of them): `open` then runs with `tasks` in its context, and `finish` once every deferred
   * file is at its numbers (an epoll watches them). Meanwhile a placeholder holds the numbers.
   */
  readonly deferred?: boolean;
  /** Makes the open file in the target; returns the target fd it got (any number). */
  open(entry: E, ctx: FileRestoreContext): number;
  /**
   * When making this file is no more than an `openat` of a path and an `lseek`: those, so that
   * the descriptor table makes runs of such files together (queued syscalls, one ptrace round
   * trip for hundreds); null when `open` must do it.
   */
  openByPath?(entry: E): PathOpen | null;
  /** After every fd is at its number: state that refers to other fds (epoll), buffered data. */
  finish?(entry: E, fd: number, ctx: FileRestoreContext): void;
  /**
   * Once every process of the tree is made: lets go of what the tool still holds for `scope` so
   * that a later process could take it (pipe ends, socketpair halves).
   */
  release?(scope: object): void;
  /**
   * After every handler's `release`, once every end of every connection exists: lets what was
   * held still run (TCP connections out of repair mode).
   */
  resume?(scope: object): void;
  /**
   * The restore failed or stopped early: lets go of everything still held for `scope` without
   * letting it run. Where absent, `release` is called instead.
   */
  abort?(scope: object): void;
}
