/**
 * The descriptor table: each open file stored once in an object table keyed by its file id and
 * referred to by every fd that shares it, as the Linux-CR object table did.
 *
 * What every kind of open file has besides its kind's state, its status flags, owner and signal
 * (owner.ts), is dumped and restored here for all of them: the flags a handler's open left
 * different are set with F_SETFL once every process and thread exists, the owner and signal once
 * the process has its credentials too.
 */
import {
  AT_FDCWD,
  close,
  F,
  FD_CLOEXEC,
  O,
  pidfdOpen,
  SETFL_MASK,
  SyscallError,
} from "../../ffi/mod.ts";
import { DumpError, RestoreError } from "../errors.ts";
import { assignFileIds, type Fd, fdFlags, type FileTable, readFd } from "../inspect/fds.ts";
import { externalEntry } from "./external.ts";
import { FdBatch } from "../ptrace/fd_batch.ts";
import { copyIsHarmless } from "./socket/socket_copy.ts";
import { readOwner, restoreOwner } from "./owner.ts";
import { abortScope, handlerForEntry, handlerForFd } from "./registry.ts";
import type { RegularEntry } from "./regular.ts";
import type {
  FdDecision,
  FileDumpContext,
  FileRestoreContext,
  PathOpen,
  RestoredTasks,
} from "./types.ts";
import { type Injector, SCRATCH_SIZE } from "../ptrace/inject.ts";
import type { RemoteMemory } from "../inspect/memory.ts";
import type { FdEntry, FileEntry, ProcessEntry } from "../image/schema.ts";
import type { MadeObjects } from "../memory/objects.ts";
import { FdTaker } from "../ptrace/fd_taker.ts";

/** Open files already restored in a process of the tree, by file id: where to take them from. */
export type SharedFiles = Map<number, { pid: number; fd: number }>;

/** The dumped descriptor table. */
export interface FdTableDump {
  files: FileEntry[];
  fds: FdEntry[];
}

function reopenEntry(fd: Fd, path: string): RegularEntry {
  const st = Deno.statSync(path);
  return {
    id: fd.fileId,
    kind: "regular",
    flags: fd.flags & ~(O.CREAT | O.TRUNC | O.EXCL),
    path,
    directory: st.isDirectory,
    position: 0n,
    size: st.size,
    mtimeMs: st.mtime?.getTime() ?? 0,
    inode: BigInt(st.ino ?? 0),
    dev: BigInt(st.dev),
  };
}

/** The entry of the open file behind `fd`, by its kind's handler, with its owner and signal. */
async function dumpFile(fd: Fd, ctx: FileDumpContext): Promise<FileEntry> {
  const handler = handlerForFd(fd);
  if (!handler) {
    throw new DumpError(
      `fd ${fd.fd} of process ${ctx.pid} is a ${fd.kind} (${fd.target}), which tardigrade ` +
        `cannot dump yet; a policy can skip it`,
    );
  }
  const entry = { ...(await handler.dump(fd, ctx)), id: fd.fileId };
  // From a copy but for a socket where taking one would change its net_cls (socket_copy.ts).
  const copyOk = copyIsHarmless(fd.kind);
  return Object.assign(
    entry,
    readOwner(ctx.frozen.injector, fd.fd, fd.flags, copyOk ? ctx.pidfd : undefined),
  );
}

// File ids of the descriptors in flight a dump kept (by its scope): each may be kept once.
const inFlightByDump = new WeakMap<object, Set<number>>();

/**
 * `FileDumpContext.dumpInFlight` for one process's table: the file at target fd `n` in `files`,
 * dumped once (an open file also at a descriptor, or carried twice, has one entry), refusing one
 * that a process dumped after this one has too (the restore would make it there, too late).
 */
async function dumpInFlight(
  ctx: FileDumpContext,
  table: FileTable,
  files: Map<number, FileEntry>,
  n: number,
  installed: readonly number[],
  carrier: string,
): Promise<number> {
  const pids = [...(ctx.pids ?? [ctx.pid])];
  const others = assignFileIds(pids, table)
    .filter((f) => !(f.pid === ctx.pid && installed.includes(f.fd)));
  const fd = readFd(ctx.pid, n, table);
  if (!fd) throw new DumpError(`${carrier}: a descriptor in flight vanished while read`);
  const what = `${carrier} has a ${fd.kind} in flight (${fd.target})`;
  const id = fd.fileId;
  if (handlerForFd(fd)?.deferred) {
    throw new DumpError(
      `${what}: a ${fd.kind} is made once every process exists, after the socket's queue; a ` +
        `policy can skip the socket`,
    );
  }
  // One open file, one entry: a file this process or one dumped before has already.
  const known = files.get(id) ?? ctx.dumpedFiles?.get(id);
  if (known) {
    files.set(id, known);
    return id;
  }
  const open = others.find((f) => f.fileId === id && f.pid === ctx.pid) ??
    others.find((f) => f.fileId === id);
  const kept = inFlightByDump.get(ctx.scope ?? ctx) ?? new Set<number>();
  inFlightByDump.set(ctx.scope ?? ctx, kept);
  // The restore makes processes in this order: the file must be made here, or before.
  if ((open && open.pid !== ctx.pid) || kept.has(id)) {
    throw new DumpError(
      `${what} that is ${
        open ? `also open at fd ${open.fd} of process ${open.pid}` : "in flight in another process"
      }, which this dump reaches after process ${ctx.pid}; tardigrade keeps a descriptor in ` +
        `flight that other processes share only where it is made first; a policy can skip the ` +
        `socket`,
    );
  }
  kept.add(id);
  const entry = await dumpFile(fd, ctx);
  files.set(id, entry);
  // Open at a descriptor of this process too: its own turn finds it dumped.
  if (open) ctx.dumpedFiles?.set(id, entry);
  return fd.fileId;
}

/**
 * Dumps every descriptor of the frozen process, each as decided (the policy's checked answers):
 * an external one as its key alone. `table` (the dump's ids of open files) lets the handlers keep
 * descriptors in flight in socket queues.
 */
export async function dumpFdTable(
  outer: FileDumpContext,
  decided: readonly { fd: Fd; decision: FdDecision }[],
  table?: FileTable,
): Promise<FdTableDump> {
  const files = new Map<number, FileEntry>();
  const fds: FdEntry[] = [];
  const ctx: FileDumpContext = table
    ? {
      ...outer,
      dumpInFlight: (n, installed, carrier) =>
        dumpInFlight(outer, table, files, n, installed, carrier),
    }
    : outer;
  for (const { fd, decision } of decided) {
    if (decision === "skip") continue;
    const reopen = typeof decision === "object" && "reopen" in decision;
    const known = reopen ? undefined : ctx.dumpedFiles?.get(fd.fileId);
    if (known) files.set(fd.fileId, known);
    if (!files.has(fd.fileId)) {
      let entry: FileEntry;
      if (typeof decision === "object" && "reopen" in decision) {
        entry = reopenEntry(fd, decision.reopen);
      } else if (typeof decision === "object") {
        entry = externalEntry(fd, decision.external, ctx.outside);
      } else {
        entry = await dumpFile(fd, ctx);
      }
      files.set(fd.fileId, entry);
      if (!reopen) ctx.dumpedFiles?.set(fd.fileId, entry);
      if (typeof decision === "object") {
        // From a copy but for a socket where taking one would change its net_cls.
        const copyOk = copyIsHarmless(fd.kind);
        Object.assign(
          entry,
          readOwner(ctx.frozen.injector, fd.fd, fd.flags, copyOk ? ctx.pidfd : undefined),
        );
      }
    }
    fds.push({ fd: fd.fd, file: fd.fileId, closeOnExec: fd.closeOnExec });
  }
  return { files: [...files.values()], fds };
}

/** Puts bytes in the scratch region above what the restorer itself uses, cycling. */
function scratchAllocator(inj: Injector) {
  const base = 16384;
  let at = base;
  return (data: Uint8Array): bigint => {
    if (at + data.length > Number(SCRATCH_SIZE)) at = base;
    const addr = inj.put(data, at);
    at += (data.length + 15) & ~15;
    return addr;
  };
}

/** Fewer shared files than this are taken one by one: a batch first hands the target a socket. */
const MIN_BATCH = 4;

/** Fewer files opened by path than this are made one by one: a run first lists the table. */
const MIN_PATH_RUN = 8;

/**
 * Queues the open of a file that is only its path opened again (`openByPath`), which lands at
 * `fd`, the lowest free number then, and its seek.
 */
function queuePathOpen(inj: Injector, how: PathOpen, fd: number): void {
  const path = inj.queueData(new TextEncoder().encode(how.path + "\0"));
  inj.queue("openat", [AT_FDCWD, path, how.flags, 0], (r) => {
    if (r < 0n) throw new SyscallError(`openat(${how.path}) in ${inj.pid}`, [], Number(-r));
    if (r !== BigInt(fd)) throw new RestoreError(`${how.path} opened at fd ${r}, not ${fd}`);
  });
  if (how.position === 0n) return;
  inj.queue("lseek", [fd, how.position, 0], how.seekMayFail ? () => {} : undefined);
}

/** A restored descriptor table whose last steps wait until every process and thread exists. */
export interface RestoredFdTable {
  /**
   * Once every process and thread of the restore exists: the files of deferred handlers (pidfds)
   * in place of their placeholders, then the status flags of every open file this process made.
   */
  afterTasks(): void;
  /**
   * After `afterTasks`, once the process has its credentials: the owner and signal of the I/O
   * signals of every open file it made. The kernel records the credentials of whoever sets an
   * owner and signals only the processes those may signal, so they must be the process's own.
   */
  restoreOwners(): void;
  /** Lets go of what the tool holds for it (alone, without a scope: what handlers hold too). */
  close(): void;
}

/** What restoring one process's descriptor table works with. */
export interface FdTableRestore {
  /** Runs syscalls in the process (its main thread). */
  inj: Injector;
  mem: RemoteMemory;
  /** Its memory objects (memfds, deleted files), which some files are reopened from. */
  objects: MadeObjects;
  /** Open files other processes of the tree made already (shared since a fork): taken from them. */
  shared?: SharedFiles;
  /** Shared by every process of the restore: what handlers keep until the tree is made. */
  scope?: object;
  /** The processes and threads of the restore (alone: this one, in the tool's pid namespace). */
  tasks?: RestoredTasks;
  /** The tool's descriptors handed in for external files, by key (checked: external.ts). */
  inherited?: ReadonlyMap<string, number>;
}

/**
 * Restores every descriptor at its number, each open file made once. Files are made in the order
 * of their lowest number: a new descriptor takes the lowest free number, which is then its own
 * (nothing to move) unless the table has a hole below it. Files of deferred handlers get a
 * placeholder until `afterTasks`.
 */
export function restoreFdTable(p: ProcessEntry, env: FdTableRestore): RestoredFdTable {
  const { inj, mem, objects, scope } = env;
  const shared = env.shared ?? new Map();
  const tasks = env.tasks ?? { restored: (id: number) => id === p.pid, ownNamespace: false };
  const put = scratchAllocator(inj);
  // Above every number of the table: the owners' pidfds, then the memory objects' fds.
  const high = Math.max(2, ...p.fds.map((f) => f.fd)) + 1;
  // The files the tool hands in, and those shared with processes made before, till it is made.
  const batch = new FdBatch(inj, high, put);
  const pidfd = pidfdOpen(inj.pid);
  const firstFd = new Map<number, number>();
  for (const f of p.fds) if (!firstFd.has(f.file)) firstFd.set(f.file, f.fd);
  const ctx: FileRestoreContext = {
    pid: inj.pid,
    injector: inj,
    memory: mem,
    pidfd,
    put,
    putString: (s) => put(new TextEncoder().encode(s + "\0")),
    handIn: (mine) => batch.handIn(mine),
    objectFd: (id) => objects.fd(id),
    fdOfFile: (id) => {
      const fd = firstFd.get(id);
      if (fd === undefined) throw new RestoreError(`no descriptor refers to open file ${id}`);
      return fd;
    },
    finalFds: new Map(p.fds.map((f) => [f.fd, f.fd])),
    scope,
    tasks,
    inherited: env.inherited,
    openInFlight: (id) => openInFlight(id),
  };
  let closed = false;
  const cleanup = () => {
    if (closed) return;
    closed = true;
    // Else the whole tree's restore releases them at its end. Alone, finish() settled or
    // resumed each file, unless the restore stopped early: what is left is dropped.
    if (!scope) abortScope(ctx);
    close(pidfd);
  };
  const taken = new Set<number>();
  const deferred: FileEntry[] = [];
  /** Files at their numbers already. */
  const made = new Set<number>();
  /**
   * Files made ahead of their turn, for a message in flight that carries them: held above the
   * table's numbers till their turn, as their numbers may be what the file being made holds for
   * the while (a socket whose queue is being filled).
   */
  const early = new Map<number, number>();
  /** Files only in flight (no descriptor), made once: their target fd until the table is done. */
  const inFlightOnly = new Map<number, number>();
  let takerNow: FdTaker | undefined;
  /** Numbers below `high` that hold a file already. */
  const placed = new Set<number>();
  /** Each open file's descriptors, in the table's order (one pass: a table may hold 10,000s). */
  const fdsOf = new Map<number, FdEntry[]>();
  for (const f of p.fds) {
    const list = fdsOf.get(f.file);
    if (list) list.push(f);
    else fdsOf.set(f.file, [f]);
  }
  const numbersOf = new Map([...fdsOf].map(([file, list]) => [file, list.map((f) => f.fd)]));
  /**
   * Puts the open file at `fd` at each of its numbers; `fd` itself goes unless it is one of
   * them. `cloexec` is what `fd` has (pidfd_getfd sets it), undefined when not known.
   */
  const placeAt = (file: number, fd: number, cloexec?: boolean) => {
    made.add(file);
    let kept = false;
    for (const n of numbersOf.get(file) ?? []) placed.add(n);
    for (const f of fdsOf.get(file) ?? []) {
      if (f.fd !== fd) {
        inj.queue("dup3", [fd, f.fd, f.closeOnExec ? O.CLOEXEC : 0]);
      } else {
        kept = true;
        // Not known: fdinfo tells, read from outside (an injected F_GETFD costs far more).
        cloexec ??= (fdFlags(inj.pid, fd) & O.CLOEXEC) !== 0;
        if (cloexec !== f.closeOnExec) {
          inj.queue("fcntl", [fd, F.SETFD, f.closeOnExec ? FD_CLOEXEC : 0]);
        }
      }
    }
    if (!kept) inj.queue("close", [fd]);
  };
  /** Whether `n` holds a file, or will once `more` are placed. */
  const holds = (n: number, more: Set<number>) => placed.has(n) || more.has(n);
  /**
   * The files from `order[i]` on that are only a path opened again, made by no process before,
   * each with the number its open will get (the lowest free one then): queued, they are made
   * together.
   */
  const pathRun = (order: FileEntry[], i: number): [FileEntry, PathOpen, number][] => {
    const run: [FileEntry, PathOpen, number][] = [];
    const more = new Set<number>();
    let next = 0;
    for (let k = i; k < order.length; k++) {
      const g = order[k];
      const handler = handlerForEntry(g)!;
      if (shared.has(g.id) || early.has(g.id) || handler.deferred) break;
      const how = handler.openByPath?.(g);
      if (!how) break;
      while (holds(next, more)) next++;
      run.push([g, how, next]);
      for (const n of numbersOf.get(g.id)!) more.add(n);
    }
    return run;
  };
  /**
   * Whether every descriptor below `high` the process has holds a placed file: then an open
   * takes the lowest number `placed` leaves free, as a path run counts on.
   */
  const onlyPlaced = (): boolean => {
    inj.flush();
    for (const e of Deno.readDirSync(`/proc/${inj.pid}/fd`)) {
      const n = Number(e.name);
      if (n < high && !placed.has(n)) return false;
    }
    return true;
  };
  /**
   * The files from `order[i]` on that a batch can move (fd_batch.ts): shared with a process made
   * before, not deferred, each with one number, the lowest free one when it arrives.
   */
  const sharedRun = (order: FileEntry[], i: number): FileEntry[] => {
    const run: FileEntry[] = [];
    let next = 0;
    while (placed.has(next)) next++;
    for (let k = i; k < order.length && run.length < FdBatch.MAX; k++) {
      const g = order[k];
      const numbers = numbersOf.get(g.id)!;
      if (!shared.has(g.id) || handlerForEntry(g)!.deferred) break;
      if (numbers.length !== 1 || numbers[0] !== next) break;
      run.push(g);
      next++;
      while (placed.has(next)) next++;
    }
    return run;
  };
  /** Makes one file at its numbers: taken from the process of the tree that made it, or opened. */
  const makeOne = (f: FileEntry, owner: { pid: number; fd: number } | undefined) => {
    if (owner) {
      // Shared since a fork with a process made already: the same open file, taken from it.
      taken.add(f.id);
      placeAt(f.id, takerNow!.take(owner.pid, owner.fd), true);
    } else {
      placeAt(f.id, handlerForEntry(f)!.open(f, ctx));
    }
  };
  /**
   * A target fd on open file `id`, carried by a message in flight, which the caller closes: the
   * file at its descriptor (made now if its turn has not come), taken from the process of the
   * tree that made it, or, only in flight, made once.
   */
  const openInFlight = (id: number): number => {
    const entry = p.files.find((f) => f.id === id);
    if (!entry) throw new RestoreError(`process ${p.pid}: no open file ${id} is in flight`);
    const handler = handlerForEntry(entry)!;
    if (handler.deferred) {
      throw new RestoreError(`process ${p.pid}: a ${entry.kind} in flight cannot be made yet`);
    }
    if (firstFd.has(id)) {
      let held = made.has(id) ? firstFd.get(id)! : early.get(id);
      if (held === undefined) {
        const owner = shared.get(id);
        const fd = owner ? takerNow!.take(owner.pid, owner.fd) : handler.open(entry, ctx);
        held = Number(inj.call("fcntl", fd, F.DUPFD_CLOEXEC, high));
        inj.call("close", fd);
        early.set(id, held);
      }
      return Number(inj.call("dup", held));
    }
    const owner = shared.get(id);
    if (owner) return takerNow!.take(owner.pid, owner.fd);
    let fd = inFlightOnly.get(id);
    if (fd === undefined) {
      const opened = handler.open(entry, ctx);
      handler.finish?.(entry, opened, ctx);
      restoreStatusFlags(inj, opened, entry.flags);
      // Kept above the table's numbers, which later files are put at (dup3 would close it).
      fd = Number(inj.call("fcntl", opened, F.DUPFD_CLOEXEC, high));
      inj.call("close", opened);
      inFlightOnly.set(id, fd);
    }
    return Number(inj.call("dup", fd));
  };
  try {
    using taker = new FdTaker(inj, high);
    takerNow = taker;
    using _batch = batch;
    objects.relocateFds(high + p.files.length + 1);
    const order = p.files.filter((f) => firstFd.has(f.id))
      .sort((a, b) => firstFd.get(a.id)! - firstFd.get(b.id)!);
    for (let i = 0; i < order.length; i++) {
      const f = order[i];
      const handler = handlerForEntry(f)!;
      const owner = shared.get(f.id);
      const run = handler.deferred ? [] : sharedRun(order, i);
      if (run.length >= MIN_BATCH) {
        // Files shared with processes made before, each at the next free number: one message.
        const got = batch.take(run.map((g) => shared.get(g.id)!));
        run.forEach((g, k) => {
          if (got[k] !== firstFd.get(g.id)) {
            throw new RestoreError(
              `open file ${g.id} arrived at fd ${got[k]}, not ${firstFd.get(g.id)}`,
            );
          }
          taken.add(g.id);
          placeAt(g.id, got[k], false);
        });
        i += run.length - 1;
      } else if (handler.deferred) {
        deferred.push(f);
        placeAt(f.id, Number(inj.call("eventfd2", 0, 0)), false); // holds the numbers till afterTasks
      } else if (early.has(f.id)) {
        if (owner) taken.add(f.id);
        placeAt(f.id, early.get(f.id)!);
        early.delete(f.id);
      } else {
        const paths = !owner && handler.openByPath?.(f) ? pathRun(order, i) : [];
        if (paths.length >= MIN_PATH_RUN && onlyPlaced()) {
          for (const [g, how, fd] of paths) {
            queuePathOpen(inj, how, fd);
            placeAt(g.id, fd, (how.flags & O.CLOEXEC) !== 0);
          }
          i += paths.length - 1;
        } else {
          makeOne(f, owner);
        }
      }
    }
    inj.flush(); // the files' finish reads some of them from outside
    for (const f of order) {
      if (taken.has(f.id) || deferred.includes(f)) continue;
      const fd = firstFd.get(f.id)!;
      handlerForEntry(f)!.finish?.(f, fd, ctx);
      shared.set(f.id, { pid: inj.pid, fd });
    }
    // Every message in flight is in its queue again: the files only they carry go from the table.
    for (const fd of inFlightOnly.values()) inj.call("close", fd);
    inFlightOnly.clear();
  } catch (err) {
    cleanup();
    throw err;
  }
  return {
    afterTasks(): void {
      using late = new FdTaker(inj, high);
      for (const f of deferred) {
        const owner = shared.get(f.id);
        if (owner) taken.add(f.id);
        const fd = owner ? late.take(owner.pid, owner.fd) : handlerForEntry(f)!.open(f, ctx);
        // Over the placeholders: every number of the file gets it.
        for (const d of fdsOf.get(f.id) ?? []) {
          inj.call("dup3", fd, d.fd, d.closeOnExec ? O.CLOEXEC : 0);
        }
        inj.call("close", fd);
      }
      // Every deferred file at its numbers, then their finish (an epoll may watch a pidfd).
      for (const f of deferred) {
        if (taken.has(f.id)) continue;
        const fd = firstFd.get(f.id)!;
        handlerForEntry(f)!.finish?.(f, fd, ctx);
        shared.set(f.id, { pid: inj.pid, fd });
      }
      const made = p.files.filter((f) => firstFd.has(f.id) && !taken.has(f.id));
      const now = statusFlags(inj, made.map((f) => firstFd.get(f.id)!));
      made.forEach((f, i) => restoreStatusFlags(inj, firstFd.get(f.id)!, f.flags, now[i]));
      inj.flush();
    },
    restoreOwners(): void {
      for (const f of p.files) {
        const fd = firstFd.get(f.id);
        if (fd === undefined || taken.has(f.id)) continue;
        restoreOwner(inj, fd, f, tasks, `fd ${fd} of process ${p.pid}`);
      }
    },
    close: cleanup,
  };
}

/**
 * Sets the status flags F_SETFL can change (O_APPEND, O_NONBLOCK, O_ASYNC, O_NOATIME) where the
 * file's open left them other than `flags`. O_ASYNC is armed again at `fd`, the file's lowest
 * number in the process that makes it, even where a handler set it: the kernel keeps the number
 * it was armed at and names it in each signal (si_fd), so it must be a descriptor's, not one the
 * file had while being made. (Which of several numbers the program armed it through, the kernel
 * does not tell.) O_PATH descriptors have no flags to set.
 */
function restoreStatusFlags(
  inj: Injector,
  fd: number,
  flags: number,
  now = statusFlags(inj, [fd])[0],
): void {
  if (flags & O.PATH) return;
  if (flags & now & O.ASYNC) {
    now &= ~O.ASYNC;
    inj.queue("fcntl", [fd, F.SETFL, now & SETFL_MASK]);
  }
  if ((now & SETFL_MASK) === (flags & SETFL_MASK)) return;
  inj.queue("fcntl", [fd, F.SETFL, flags & SETFL_MASK]);
}

/**
 * The status flags of descriptors `fds` of the process, as F_GETFL gives them: one injected
 * F_GETFL each, all in one run, where syscalls are queued (a process being restored: 10,000
 * descriptors cost one round trip); else read from outside (fdinfo), as an injected call each
 * would cost far more. What was queued before is made first.
 */
function statusFlags(inj: Injector, fds: number[]): number[] {
  const out: number[] = [];
  if (!inj.queues) {
    inj.flush();
    return fds.map((fd) => fdFlags(inj.pid, fd) & ~O.CLOEXEC);
  }
  fds.forEach((fd, i) =>
    inj.queue("fcntl", [fd, F.GETFL, 0], (r) => (out[i] = checkedFlags(r, fd)))
  );
  inj.flush();
  return out;
}

/** An F_GETFL result, or the failure it is. */
function checkedFlags(result: bigint, fd: number): number {
  if (result < 0n) throw new SyscallError(`fcntl(${fd}, F_GETFL)`, [], Number(-result));
  return Number(result);
}
