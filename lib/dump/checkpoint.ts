/**
 * Checkpoint: freeze a process, write everything needed to bring it back into an image, then end
 * it (its life now lives in the image) or let it run on. Any failure removes the partial image
 * and leaves the target running as it was, detached.
 */
import { close, pidfdOpen, SIG, sigBit } from "../../ffi/mod.ts";
import { DumpError, explain, NoSuchProcess } from "../errors.ts";
import { type Fd, FileTable } from "../inspect/fds.ts";
import type { FileDumpContext } from "../files/types.ts";
import { freeze, type FrozenProcess, onInterrupt } from "../ptrace/freeze.ts";
import { ImageWriter, type PageSink } from "../image/mod.ts";
import { listMappings } from "../inspect/mappings.ts";
import { dumpFdTable } from "../files/fdtable.ts";
import { ParentImage } from "./incremental.ts";
import { dumpMemory, MemoryObjects } from "../memory/dump.ts";
import { PageCollector, STAGING_SIZE } from "./page_collector.ts";
import { type PreCopy, preCopy, type ProcessPreCopy } from "./precopy.ts";
import { dumpPosixTimers } from "../task/posix_timers.ts";
import { dumpTerminal } from "../task/terminal.ts";
import { unattainableCapabilities } from "../task/capabilities.ts";
import { dumpSeccomp } from "../task/seccomp.ts";
import { dumpTask } from "../task/task.ts";
import { dumpThread } from "../task/threads.ts";
import type { MappingDecision, Policy } from "../policy.ts";
import type { ProgressCallback } from "../progress.ts";
import { Process } from "../inspect/process.ts";
import { childrenOf, hexMask, processState, readProcLink, readStatus } from "../inspect/procfs.ts";
import { PROCESS_META, type ProcessEntry, processMetaName } from "../image/schema.ts";

/** Options of `checkpoint`. */
export interface CheckpointOptions {
  /** Directory to write the image to (must not exist, or be empty). */
  dir: string;
  /** Let the process run on after the dump instead of ending it. */
  leaveRunning?: boolean;
  /** Hooks that decide what is dumped. */
  policy?: Policy;
  /** Called as page data is written (the total is not known in advance). */
  onProgress?: ProgressCallback;
  /**
   * Dump only this process, not the processes it started. By default the whole tree below it
   * is dumped (and ended) with it, as its children would otherwise be orphaned.
   */
  single?: boolean;
  /**
   * Pre-copy: freeze only briefly to arm dirty tracking (userfaultfd write-protect), copy the
   * private anonymous memory while the processes run, then freeze for the real dump and copy
   * again only the pages written meanwhile. Cuts the time frozen; the image is the same kind.
   */
  preCopy?: boolean;
  /**
   * An earlier image of the same process to build on (an incremental dump): pages whose
   * contents equal the parent's copy at the same address are not written again but refer to
   * the parent (compared by a CRC-32 per page, then byte for byte). The image then needs its
   * parent, unchanged, to be restored or verified, and the parent its own, if it has one. A
   * parent of another process, or one whose memory moved, only finds fewer equal pages.
   */
  parent?: string;
}

/** What a checkpoint wrote. */
export interface CheckpointResult {
  /** The image directory. */
  dir: string;
  /** The process dumped (the root of the tree). */
  pid: number;
  /** Every process dumped, the root first, each after its parent. */
  processes: number[];
  /** Threads dumped. */
  threads: number;
  /** Mappings recorded (special ones aside). */
  mappings: number;
  /** Descriptors dumped. */
  fds: number;
  /** Bytes of page data written. */
  pageBytes: number;
  /** How long the process stayed frozen, in ms. */
  frozenMs: number;
  /** Whether the process was ended after the dump. */
  killed: boolean;
  /**
   * With `preCopy`: how long the brief freeze that armed the tracking lasted (part of
   * `frozenMs`), bytes copied while running, and how many of them the image reuses.
   */
  preCopy?: { armFrozenMs: number; copiedBytes: number; reusedBytes: number };
  /** With `parent`: the parent as given, and the bytes of page data that refer to it. */
  incremental?: { parent: string; reusedBytes: number };
}

/** Whether `pid` is gone, a zombie, or has a SIGKILL on its way (it cannot be stopped). */
function dying(pid: number): boolean {
  if (!isRunning(pid)) return true;
  try {
    const status = readStatus(pid);
    const pending = hexMask(status.get("SigPnd")) | hexMask(status.get("ShdPnd"));
    return (pending & sigBit(SIG.SIGKILL)) !== 0n;
  } catch {
    return true;
  }
}

/** Whether `pid` exists and is neither a zombie nor dead ("" when gone is in "ZX" too). */
const isRunning = (pid: number): boolean => !"ZX".includes(processState(pid));

/** Waits until `pid` is gone or a zombie. */
async function waitGone(pid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline && isRunning(pid)) {
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The live children of `pid` (zombies have nothing to dump; the tool never dumps itself). */
const liveChildrenOf = (pid: number): number[] =>
  childrenOf(pid).filter((c) => c !== Deno.pid && isRunning(c));

/** Namespaces whose difference changes what a restore would make (pids, paths, sockets …). */
const NAMESPACES = ["pid", "mnt", "net", "ipc", "user", "time"];

/**
 * Refuses a process that lives in other namespaces than the tool: a restore would bring it
 * back in the tool's, with other pids, paths and network, and namespaces are not dumped. Run in
 * its namespaces (`nsenter --target PID --all`) the tool sees it as one of its own.
 */
function checkNamespaces(pid: number): void {
  const differ: string[] = [];
  for (const ns of NAMESPACES) {
    try {
      if (readProcLink(pid, `ns/${ns}`) !== readProcLink(Deno.pid, `ns/${ns}`)) differ.push(ns);
    } catch { /* gone (the freeze says so) or a namespace this kernel lacks */ }
  }
  if (differ.length) {
    throw new DumpError(
      `process ${pid} lives in other namespaces than tardigrade (${differ.join(", ")}); ` +
        `namespaces are not dumped: run tardigrade inside them (nsenter --target ${pid} --all)`,
    );
  }
}

/**
 * Freezes `pid` and, unless `single`, every process below it: each parent is frozen before its
 * children are listed, so none can fork past the freeze. Parents come before their children.
 */
async function freezeTree(
  pid: number,
  single: boolean,
  stopped: Set<number>,
): Promise<FrozenProcess[]> {
  const frozen: FrozenProcess[] = [];
  // Stopped by a signal (^Z, SIGSTOP) before we came: it is to come back stopped.
  const note = (p: number) => {
    checkNamespaces(p);
    if (processState(p) === "T") stopped.add(p);
    return p;
  };
  try {
    frozen.push(await freeze(note(pid)));
    for (let i = 0; !single && i < frozen.length; i++) {
      for (const child of liveChildrenOf(frozen[i].pid)) {
        try {
          frozen.push(await freeze(note(child)));
        } catch (err) {
          if (!(err instanceof NoSuchProcess)) throw err; // it exited: nothing to dump
        }
      }
    }
    // Before a single syscall is injected into any of them: a seccomp filter we could not
    // suspend could make an injected syscall kill the process or lie to us.
    const refusal = frozen.find((f) => f.seccompRefusal)?.seccompRefusal;
    if (refusal) throw new DumpError(refusal);
    return frozen;
  } catch (err) {
    for (const f of frozen.reverse()) f.releaseSync();
    throw err;
  }
}

/** How the dump ends, for file handlers that hold something in the processes until then. */
interface DumpEnding {
  leaveRunning: boolean;
  /** What `FileDumpContext.atDumpEnd` registered, run once the dump is over. */
  hooks: ((ok: boolean) => void)[];
}

/** Everything one frozen process holds, its page data written through `sink`. */
async function dumpProcess(
  frozen: FrozenProcess,
  policy: Policy,
  files: FileTable,
  sink: PageSink,
  staging: Uint8Array,
  scope: object,
  pids: readonly number[],
  ending: DumpEnding,
  onProgress?: (bytes: number) => void,
  pre?: ProcessPreCopy,
  parent?: ParentImage,
): Promise<ProcessEntry> {
  const pid = frozen.pid;
  const proc = await Process.open(pid);
  // The layout first, before the injector maps its scratch page.
  const layout = listMappings(pid);
  const decisions = new Map<bigint, MappingDecision>();
  for (const m of layout) decisions.set(m.start, (await policy.mapping?.(m)) ?? "dump");

  const inj = frozen.injector;
  const task = await dumpTask(proc, inj);
  const posixTimers = dumpPosixTimers(pid, inj);
  const threads = frozen.threads.map((t) =>
    dumpThread(pid, t, t.tid === inj.tid ? inj : inj.forThread(t.tid))
  );
  const seccompFilters = dumpSeccomp(pid, threads);
  // No restore by this tool could give them back: say so now, not at restore.
  const caps = unattainableCapabilities(pid, threads);
  if (caps) throw new DumpError(caps);

  // Pre-copy hook: the collector that holds the pre-copied runs, and those still clean.
  if (pre) pre.progress = onProgress;
  const pages = pre?.pages ?? new PageCollector(sink, staging, onProgress);
  const precopied = pre?.reusable();
  // Incremental hook: pages equal to the parent's refer to it instead of being written.
  const incremental = await parent?.pagesFor(pid, pages);
  const objects = new MemoryObjects(pages, incremental && ((key) => incremental.object(key)));
  const pidfd = pidfdOpen(pid);
  try {
    const fdCtx: FileDumpContext = {
      pid,
      frozen,
      pidfd,
      scope,
      pids,
      leaveRunning: ending.leaveRunning,
      atDumpEnd: (fn) => void ending.hooks.push(fn),
      storeObject: (fd: Fd) =>
        objects.storeFile(
          `file:${fd.dev}:${fd.inode}`,
          fd.kind === "memfd" ? "memfd" : "deleted-file",
          fd.target.replace(/^\/memfd:/, "").replace(/ \(deleted\)$/, ""),
          `/proc/${pid}/fd/${fd.fd}`,
        ),
    };
    const { files: fileEntries, fds } = await dumpFdTable(fdCtx, policy, files);
    // For a restore as a shell job: which descriptors were on its terminal, was it in front.
    const tty = dumpTerminal(await proc.stat(), fileEntries);
    // Nothing below runs syscalls in the process: unmap the scratch page now, so that should the
    // tool be killed during the long copy, the process runs on without a page of ours.
    inj.release();
    const memory = await dumpMemory(
      pid,
      layout,
      (m) => decisions.get(m.start) ?? "dump",
      incremental?.memory() ?? pages,
      objects,
      precopied,
    );
    await pages.drain();
    if (pre) pre.reusedBytes = precopied?.reusedBytes ?? 0;
    return {
      ...task,
      ...(tty ? { tty } : {}),
      posixTimers,
      threads,
      ...(seccompFilters.length ? { seccompFilters } : {}),
      mappings: memory.mappings,
      special: memory.special,
      objects: objects.entries,
      files: fileEntries,
      fds,
      extents: pages.extents,
    };
  } finally {
    close(pidfd);
  }
}

/**
 * Dumps process `pid`, and the processes below it, into an image directory. By default they are
 * ended once the image is complete; with `leaveRunning` they run on unharmed.
 */
export async function checkpoint(pid: number, opts: CheckpointOptions): Promise<CheckpointResult> {
  if (pid === Deno.pid) throw new DumpError("a process cannot checkpoint itself");
  const policy = opts.policy ?? {};
  await policy.beforeFreeze?.(await Process.open(pid));
  using parent = opts.parent ? await ParentImage.open(opts.parent, opts.dir) : undefined;
  await using writer = await ImageWriter.create(opts.dir, { parent: parent?.link });
  const ending: DumpEnding = { leaveRunning: opts.leaveRunning ?? false, hooks: [] };
  const endDump = (ok: boolean) => {
    for (const fn of ending.hooks.splice(0)) {
      try {
        fn(ok);
      } catch { /* each handler puts back what it can */ }
    }
  };
  // SIGINT or SIGTERM while frozen releases the process and ends the tool: no partial image then.
  const unhook = onInterrupt(() => {
    endDump(false);
    void writer.abort().catch(() => {});
  });
  let killed = false;
  let started = performance.now();
  let frozenMs = 0;
  let tree: FrozenProcess[] = [];
  let pre: PreCopy | undefined;
  const release = () => {
    for (const f of [...tree].reverse()) f.releaseSync();
  };
  try {
    const sink = writer.pages();
    const staging = new Uint8Array(STAGING_SIZE);
    if (opts.preCopy) {
      // Pre-copy hook: a brief freeze to arm tracking, then a copy while the processes run.
      pre = await preCopy(
        () => freezeTree(pid, opts.single ?? false, new Set()),
        sink,
        staging,
        () => new Promise((r) => setTimeout(r, 0)),
      );
      started = performance.now() - pre.frozenMs; // frozenMs counts both freezes
    }
    const stopped = new Set<number>();
    tree = await freezeTree(pid, opts.single ?? false, stopped);
    const files = new FileTable();
    const entries: ProcessEntry[] = [];
    let before = 0;
    const scope = {}; // what spans the processes: a pipe's data is stored once
    for (const frozen of tree) {
      const entry = await dumpProcess(
        frozen,
        policy,
        files,
        sink,
        staging,
        scope,
        tree.map((f) => f.pid),
        ending,
        (bytes: number) => opts.onProgress?.(before + bytes),
        pre?.byPid.get(frozen.pid),
        parent,
      );
      before = sink.bytesWritten;
      if (stopped.has(entry.pid)) {
        entry.stopped = true;
        entry.stopSignal = frozen.stopSignal ?? SIG.SIGSTOP;
      }
      entries.push(entry);
    }
    // A process that ended while we read it (killed by someone else) has no image worth keeping.
    for (const f of tree) {
      if (dying(f.pid)) throw new NoSuchProcess(f.pid, "it ended during the dump");
    }
    const [root, ...descendants] = entries;
    root.tree = descendants.map((e) => ({ pid: e.pid, ppid: e.ppid }));
    await writer.writeMeta(PROCESS_META, root);
    for (const e of descendants) await writer.writeMeta(processMetaName(e.pid), e);
    if (opts.leaveRunning) {
      // Everything is captured: let them run while the image is checked and made durable.
      endDump(true);
      release();
      frozenMs = performance.now() - started;
    }
    await policy.afterDump?.({ dir: opts.dir, process: root, pageBytes: sink.bytesWritten });
    await writer.commit();
    if (!opts.leaveRunning) {
      // End them while still frozen (only once the image is safe), so none runs a single
      // instruction past the image; children first, so each parent is last to go.
      endDump(true);
      for (const f of [...tree].reverse()) f.kill();
      killed = true;
      frozenMs = performance.now() - started;
    }
    return {
      dir: opts.dir,
      pid,
      processes: entries.map((e) => e.pid),
      threads: entries.reduce((n, e) => n + e.threads.length, 0),
      mappings: entries.reduce((n, e) => n + e.mappings.length, 0),
      fds: entries.reduce((n, e) => n + e.fds.length, 0),
      pageBytes: sink.bytesWritten,
      frozenMs,
      killed,
      ...(pre
        ? {
          preCopy: {
            armFrozenMs: pre.frozenMs,
            copiedBytes: pre.copiedBytes,
            reusedBytes: pre.reusedBytes(),
          },
        }
        : {}),
      ...(parent && opts.parent
        ? { incremental: { parent: opts.parent, reusedBytes: parent.reusedBytes } }
        : {}),
    };
  } catch (err) {
    if (err instanceof NoSuchProcess || err instanceof DumpError) throw err;
    // Whatever failed first (pagemap, /proc/PID/mem, an fd), the reason is that it ended.
    // A process killed a moment ago may still be on its way out: give it a little time.
    let gone = tree.find((f) => !isRunning(f.pid));
    for (let i = 0; !gone && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 10));
      gone = tree.find((f) => !isRunning(f.pid));
    }
    if (!killed && gone) {
      throw new NoSuchProcess(gone.pid, "it ended during the dump", { cause: err });
    }
    throw explain(err, pid, "state");
  } finally {
    endDump(false); // a failed dump: what handlers hold in the processes is put back first
    release();
    try {
      pre?.close(); // closing the uffds unregisters everything in the targets
    } catch { /* each uffd was closed all the same */ }
    unhook();
    if (killed) { for (const f of tree) await waitGone(f.pid); }
  }
}
