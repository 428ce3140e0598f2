/**
 * Checkpoint: freeze a process, write everything needed to bring it back into an image, then end
 * it (its life now lives in the image) or let it run on. Any failure removes the partial image
 * and leaves the target running as it was, detached.
 */
import { alignedBytes, close, pidfdOpen, SIG, sigBit } from "../../ffi/mod.ts";
import { DumpError, explain, NoSuchProcess, PolicyError, SyscallError } from "../errors.ts";
import { assignFileIds, type Fd, FileTable } from "../inspect/fds.ts";
import type { FileDumpContext } from "../files/types.ts";
import { freeze, type FrozenProcess, onInterrupt } from "../ptrace/freeze.ts";
import { ImageWriter, type PageSink, SHARED_PAGES_FORMAT_VERSION } from "../image/mod.ts";
import { listMappings, type Mapping } from "../inspect/mappings.ts";
import { dumpFdTable, type FdTableDump } from "../files/fdtable.ts";
import { OutsideProcesses, refuseOutsidePeers } from "../files/outside_peers.ts";
import { ParentImage } from "./incremental.ts";
import { type ContentsDecision, dumpAddressSpace } from "../memory/address_space.ts";
import { inheritsMemory, type ParentMemory } from "../memory/cow.ts";
import { MemoryObjects } from "../memory/objects.ts";
import { STAGING_SIZE } from "../memory/page_data.ts";
import { storeFile } from "../memory/stored_file.ts";
import type { SysvSegment } from "../memory/sysv_shm.ts";
import { PageCollector } from "./page_collector.ts";
import { DumpLock } from "./dump_lock.ts";
import { NetworkLock } from "../network/lock.ts";
import { type PreCopy, preCopy } from "./precopy.ts";
import { MemoryHolder } from "../ptrace/memory_holder.ts";
import { touchedBeforeRunning } from "../memory/lazy.ts";
import { dumpPosixTimers } from "../task/posix_timers.ts";
import { dumpTerminal } from "../task/terminal.ts";
import { unattainableCapabilities } from "../task/capabilities.ts";
import { dumpSeccomp } from "../task/seccomp.ts";
import { dumpTask } from "../task/task.ts";
import { dumpThread, threadPending } from "../task/threads.ts";
import { dumpSharedPending } from "../task/signals.ts";
import { checkPolicy, type Policy } from "../policy.ts";
import {
  type DecidedFd,
  decideFds,
  decideMappings,
  ExternalDeclarations,
  settleExternal,
} from "./decisions.ts";
import type { ProgressCallback } from "../progress.ts";
import { mark } from "../timeline.ts";
import { Process } from "../inspect/process.ts";
import { childrenOf, hexMask, processState, readStatus, tryReadStat } from "../inspect/procfs.ts";
import { treeSharing } from "../ptrace/stub.ts";
import { zombieChildren } from "../task/zombies.ts";
import { dumpCgroupGroups, freezerDirsOf } from "../task/cgroups.ts";
import { FreezerThaw } from "../task/cgroup_freezer.ts";
import {
  checkSameNamespaces,
  containerKinds,
  refuseMountedHolders,
  refuseOutsideHolders,
} from "../namespaces/kinds.ts";
import { InnerPids } from "../namespaces/pids.ts";
import { NestedPids } from "../namespaces/nested_pid.ts";
import { readNestedMounts } from "../namespaces/nested_mounts.ts";
import { inOwnUserNamespace } from "../namespaces/user.ts";
import { dumpNamespaces } from "../namespaces/container.ts";
import { JOINABLE_KINDS } from "../namespaces/joined.ts";
import { segmentTable } from "../namespaces/shm_segments.ts";
import { diagInNamespaceOf } from "../namespaces/net_diag.ts";
import {
  type FileEntry,
  PROCESS_META,
  type ProcessEntry,
  processMetaName,
} from "../image/schema.ts";

/** Options of `checkpoint`. */
export interface CheckpointOptions {
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
  /**
   * Open files to leave outside the image, to be handed in at restore (`inheritFds`): each a key,
   * `pipe:[12345]`, `socket:[6789]`, a FIFO's or terminal's path (as `fd.target` reads), or `fd:N`
   * for fd N of `pid`. A pipe, FIFO, pseudo-terminal or connected UNIX socket whose other side a
   * process outside the dump holds is refused unless declared so (or skipped by a policy); a key
   * that names no descriptor is refused too. `net` leaves a container's net namespace out: the
   * restore joins one handed in (`inheritFds: { net: N }`, N open on a net namespace); `user`
   * its user namespace (`inheritFds: { user: N }`, one with the same maps).
   */
  external?: string[];
  /**
   * How long each thread may take to stop, in ms (default 10 s, as CRIU's `--timeout`): a
   * thread asleep where no signal reaches it (a vfork parent waiting for its child,
   * uninterruptible I/O) fails the dump with `FreezeTimeout`, and the processes run on.
   */
  freezeTimeoutMs?: number;
  /**
   * Called once the image is committed while the processes are still frozen (not with
   * `leaveRunning`): a migration hands the image over here. When it returns, the processes end
   * as usual; when it throws, they run on as they were (the image stays) and the checkpoint
   * fails with its error. `end()` ends them at once, as a receiver on the same machine needs
   * their pids; after it the processes are gone whatever the hook does.
   */
  handOver?: (image: HandOver) => Promise<void>;
  /**
   * With `preCopy`: called once memory is copied, while the processes still run, before the
   * freeze for the rest (a migration waits here until its stream has caught up with the copy,
   * and copies again what was written meanwhile, `again`, until little is left).
   */
  afterPreCopy?: (copy: PreCopyPass) => Promise<void>;
  /**
   * Whether the image is flushed to disk before the processes end (default true). A migration's
   * local image, a copy on its way to a receiver, skips it: the flush of a large image would
   * lengthen the freeze.
   */
  durable?: boolean;
}

/** What `CheckpointOptions.afterPreCopy` is given. */
export interface PreCopyPass {
  /** Copies again the pages written since their last copy; resolves to the bytes copied. */
  again(): Promise<number>;
}

/** What `CheckpointOptions.handOver` is given. */
export interface HandOver {
  /** The committed image. */
  dir: string;
  /** Every process dumped, the root first. */
  processes: number[];
  /** Ends the frozen processes now and waits until they are gone. */
  end(): Promise<void>;
}

/** What a checkpoint wrote. */
export interface CheckpointResult {
  /** The image directory. */
  dir: string;
  /** The process dumped (the root of the tree). */
  pid: number;
  /** Every process dumped (as the tool sees them), the root first, each after its parent. */
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

/**
 * Freezes `pid` and, unless `single`, every process below it: each parent is frozen before its
 * children are listed, so none can fork past the freeze. Parents come before their children.
 */
async function freezeTree(
  pid: number,
  opts: CheckpointOptions,
  stopped: Set<number>,
  thawed?: FreezerThaw,
): Promise<FrozenProcess[]> {
  const single = opts.single ?? false;
  const options = { timeoutMs: opts.freezeTimeoutMs, seized: thawed?.seized };
  const frozen: FrozenProcess[] = [];
  // Stopped by a signal (^Z, SIGSTOP) before we came: it is to come back stopped.
  const note = (p: number) => {
    checkSameNamespaces(p, pid);
    if (processState(p) === "T") stopped.add(p);
    return p;
  };
  try {
    frozen.push(await freeze(note(pid), options));
    for (let i = 0; !single && i < frozen.length; i++) {
      for (const child of liveChildrenOf(frozen[i].pid)) {
        try {
          frozen.push(await freeze(note(child), options));
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
    thawed?.refreeze(); // before they are let go: they stay frozen as they were
    for (const f of frozen.reverse()) f.releaseSync();
    throw err;
  }
}

/** Each process of the tree of `pid` (only it when `single`) with its groups that can freeze. */
function freezerGroupsOf(pid: number, single: boolean): { pid: number; dirs: string[] }[] {
  const pids = [pid];
  for (let i = 0; !single && i < pids.length; i++) pids.push(...liveChildrenOf(pids[i]));
  return pids.map((p) => ({ pid: p, dirs: freezerDirsOf(p) }));
}

/** The descriptor table of the entry of process `pid` among `entries`, if any. */
function tableOf(entries: ProcessEntry[], pid: number | undefined): FdTableDump | undefined {
  const e = pid === undefined ? undefined : entries.find((x) => x.pid === pid);
  return e && { files: e.files, fds: e.fds };
}

/** How the dump ends, for file handlers that hold something in the processes until then. */
interface DumpEnding {
  leaveRunning: boolean;
  /** What `FileDumpContext.atDumpEnd` registered, run once the dump is over. */
  hooks: ((ok: boolean) => void)[];
}

/** What every process of one dump shares. */
interface DumpRun {
  policy: Policy;
  /** Open files by identity across the tree: each is stored once. */
  files: FileTable;
  /** Where page data goes, through `staging`. */
  sink: PageSink;
  staging: Uint8Array;
  /** What spans the processes (a pipe's data is stored once). */
  scope: object;
  /** Open files dumped so far, by file id: one shared by several processes is dumped once. */
  dumpedFiles: Map<number, FileEntry>;
  /** Every process of the dump. */
  pids: readonly number[];
  /** Every descriptor of every process, as planned (in the order of `pids`). */
  heldFds?: readonly Fd[];
  /** The processes outside the dump, for the other ends of its connections. */
  outside: OutsideProcesses;
  /** The descriptors declared external (`external`). */
  external: ExternalDeclarations;
  ending: DumpEnding;
  /** Drops the packets of its TCP connections until their restore. */
  networkLock: NetworkLock;
  /** Incremental dump: the parent image. */
  parent?: ParentImage;
  /** Pre-copy: what was copied while the processes ran. */
  pre?: PreCopy;
  /** Told the bytes written so far for the process being dumped. */
  onProgress?: (bytes: number) => void;
  /** A container's System V segments, by id, when it has an IPC namespace of its own. */
  segments?: Map<number, SysvSegment>;
  /** A container's net namespace: its own, or one joined at restore (`--external net`). */
  containerNet?: "own" | "joined";
}

/**
 * What the policy decided for one frozen process, asked and checked for every process of the
 * tree before anything is dumped (a wrong answer changes nothing).
 */
interface ProcessPlan {
  frozen: FrozenProcess;
  /** Its mappings, listed before the injector maps its scratch page. */
  layout: Mapping[];
  contents: Map<bigint, ContentsDecision>;
  fds: DecidedFd[];
}

async function planProcess(frozen: FrozenProcess, run: DumpRun): Promise<ProcessPlan> {
  const pid = frozen.pid;
  const layout = listMappings(pid);
  return {
    frozen,
    layout,
    contents: await decideMappings(run.policy, pid, layout, frozen.threads),
    fds: await decideFds(run.policy, pid, assignFileIds([pid], run.files), run.external),
  };
}

/**
 * Once every process is planned: the external files checked and spread to every descriptor of
 * theirs, then the dump refused if a file it would dump has a peer outside it (outside_peers.ts).
 */
function checkPeers(plans: readonly ProcessPlan[], run: DumpRun): void {
  const decided = plans.flatMap((p) => p.fds);
  run.external.checkAllMatched(decided);
  settleExternal(decided);
  refuseOutsidePeers(
    plans.map((p) => ({
      pid: p.frozen.pid,
      ctty: tryReadStat(p.frozen.pid)?.ttyNr ?? 0,
      fds: p.fds.filter((d) => d.decision === "dump").map((d) => d.fd),
    })),
    run.outside,
  );
}

/**
 * The parent of `pid` in the dump, dumped before it, if the restore forks `pid` from it (not from
 * the sibling it shares a descriptor table or fs context with): the memory they share is then
 * stored once (memory/cow.ts).
 */
function parentMemory(
  pid: number,
  sharing: { sharesFilesWith?: number; sharesFsWith?: number } | undefined,
  entries: readonly ProcessEntry[],
  plans: readonly ProcessPlan[],
): ParentMemory | undefined {
  const ppid = tryReadStat(pid)?.ppid;
  const maker = sharing?.sharesFilesWith ?? sharing?.sharesFsWith ?? ppid;
  const entry = entries.find((e) => e.pid === ppid);
  const plan = plans.find((p) => p.frozen.pid === ppid);
  // Its injector, inherited, runs from the vdso: a parent without one keeps its pages apart.
  if (!entry || !plan || maker !== ppid || !entry.special.vdso) return undefined;
  const dumped = entry.mappings.filter((m) => (plan.contents.get(m.start) ?? "dump") === "dump");
  return { pid: entry.pid, dumped: new Map(dumped.map((m) => [m.start, m])) };
}

/** Everything one frozen process holds, its page data written through the run's sink. */
async function dumpProcess(
  plan: ProcessPlan,
  run: DumpRun,
  sharedTable?: FdTableDump,
  parent?: ParentMemory,
): Promise<ProcessEntry> {
  const { frozen, layout } = plan;
  const pid = frozen.pid;
  const proc = await Process.open(pid);
  const inj = frozen.injector;
  const task = await dumpTask(proc, inj);
  mark("dump: task");
  // Read on another thread while the rest is dumped: the read walks every present page (30 ms
  // a GiB) and holds off changes to the mappings meanwhile, which nothing injected from here on
  // makes (its brk was read, the scratch mapping is there) until the scratch goes.
  const smaps = Deno.readFile(`/proc/${pid}/smaps`).catch(() => undefined);
  const posixTimers = dumpPosixTimers(pid, inj);
  const frozenThreads = frozen.threads;
  const threads = frozenThreads.map((t) => dumpThread(pid, t, frozen.injectorFor(t.tid)));
  const seccompFilters = dumpSeccomp(pid, threads);
  // No restore by this tool could give them back: say so now, not at restore.
  const caps = unattainableCapabilities(pid, threads, inOwnUserNamespace(pid));
  if (caps) throw new DumpError(caps);

  // Pre-copy hook: the collector that holds the pre-copied runs, and those still clean.
  const pre = run.pre?.byPid.get(pid);
  if (pre) pre.progress = run.onProgress;
  const pages = pre?.pages ?? new PageCollector(run.sink, run.staging, run.onProgress);
  // The few pages a lazy restore writes before the process runs are copied again: its restore
  // then reads them from the last extents, not from a large pre-copied one each.
  const precopied = pre?.reusable(touchedBeforeRunning({ threads, mm: task.mm }));
  // Incremental hook: pages equal to the parent's refer to it instead of being written.
  const incremental = await run.parent?.pagesFor(pid, pages);
  const objects = new MemoryObjects(pages, incremental && ((key) => incremental.object(key)));
  const pidfd = pidfdOpen(pid);
  try {
    const fdCtx: FileDumpContext = {
      pid,
      frozen,
      pidfd,
      scope: run.scope,
      dumpedFiles: run.dumpedFiles,
      pids: run.pids,
      heldFds: run.heldFds,
      outside: run.outside,
      leaveRunning: run.ending.leaveRunning,
      containerNet: run.containerNet,
      atDumpEnd: (fn) => void run.ending.hooks.push(fn),
      networkLock: run.networkLock,
      storeObject: (fd: Fd) =>
        storeFile(
          objects,
          fd.kind === "memfd" ? "memfd" : "deleted-file",
          fd.target,
          `/proc/${pid}/fd/${fd.fd}`,
        ),
    };
    // A table shared with a process dumped before (CLONE_FILES) is that process's, dumped once.
    const { files: fileEntries, fds } = sharedTable ??
      await dumpFdTable(fdCtx, plan.fds, run.files);
    // For a restore as a shell job: which descriptors were on its terminal, was it in front.
    const tty = dumpTerminal(await proc.stat(), fileEntries);
    mark("dump: threads and files");
    // Nothing below runs syscalls in the process: unmap the scratch page now, so that should the
    // tool be killed during the long copy, the process runs on without a page of ours.
    inj.release();
    // Pending signals once more, now that no syscall runs in the process any more: a signal
    // that arrived meanwhile was taken from its queue into a thread's held signals.
    const sharedPending = dumpSharedPending(pid);
    frozenThreads.forEach((t, i) => threads[i].pending = threadPending(t));
    const memory = await dumpAddressSpace({
      pid,
      smaps: await smaps,
      mappings: layout,
      decide: (m) => plan.contents.get(m.start) ?? "dump",
      pages: incremental?.memory() ?? pages,
      objects,
      precopied,
      parent,
      segments: run.segments,
    });
    await pages.drain();
    mark("dump: memory");
    if (pre) pre.reusedBytes = precopied?.reusedBytes ?? 0;
    return {
      ...task,
      sharedPending,
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
 * A zombie has no memory, threads or files left, only an exit status for its parent: refused as
 * such (the tree's own checks would misname it: its pid namespace, its fds, gone).
 */
function refuseExited(pid: number): void {
  let stat: string;
  try {
    stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
  } catch {
    return; // no such process: the steps below say so
  }
  const comm = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"));
  const state = stat[stat.lastIndexOf(")") + 2];
  if (state === "Z" || state === "X") {
    throw new DumpError(
      `process ${pid} (${comm}) has exited (a zombie): nothing is left of it but the exit status ` +
        `its parent ${parentPid(stat)} has yet to wait for; dump that parent, which keeps it as ` +
        `a zombie child`,
    );
  }
}

/** The ppid field of a /proc/PID/stat line. */
function parentPid(stat: string): number {
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
}

/**
 * Dumps process `pid`, and the processes below it, into an image directory. By default they are
 * ended once the image is complete; with `leaveRunning` they run on unharmed. A process in other
 * namespaces than the tool's is dumped as a container: it must be the init of its pid namespace,
 * and its pid, mount, UTS, IPC, time, net, user and cgroup namespaces are dumped with it (what
 * cannot be carried is refused, naming it). Every process's cgroups are recorded, and the limits of those the tool is not in.
 */
export async function checkpoint(
  pid: number,
  dir: string,
  opts: CheckpointOptions = {},
): Promise<CheckpointResult> {
  if (pid === Deno.pid) throw new DumpError("a process cannot checkpoint itself");
  refuseExited(pid);
  // Before anything else: a second dump of the same process is refused, naming the first.
  using _lock = DumpLock.take(pid);
  const policy = checkPolicy(opts.policy ?? {}, "the checkpoint's policy");
  // `net` and `user` name no file: the container's namespaces, left out and joined at restore.
  const joined = JOINABLE_KINDS.filter((k) => opts.external?.includes(k));
  const external = new ExternalDeclarations(
    (opts.external ?? []).filter((k) => !(joined as string[]).includes(k)),
    pid,
  );
  // A container: the namespaces its init lives in are dumped with it (or refused, named).
  const kinds = containerKinds(pid, joined);
  refuseMountedHolders(pid, kinds);
  await policy.beforeFreeze?.(await Process.open(pid));
  using parent = opts.parent ? await ParentImage.open(opts.parent, dir) : undefined;
  await using writer = await ImageWriter.create(dir, {
    parent: parent?.link,
    sync: opts.durable ?? true,
  });
  const ending: DumpEnding = { leaveRunning: opts.leaveRunning ?? false, hooks: [] };
  const endDump = (ok: boolean) => {
    for (const fn of ending.hooks.splice(0)) {
      try {
        fn(ok);
      } catch { /* each handler puts back what it can */ }
    }
  };
  const networkLock = new NetworkLock(dir);
  // Once the image is safe and the processes are to end, their connections stay locked; once
  // they run on, the lock was removed (or said why not).
  let lockSettled = false;
  /** The tree's frozen groups (v1 freezer, v2), thawed for the dump. */
  let thawed: FreezerThaw | undefined;
  // SIGINT or SIGTERM while frozen releases the process and ends the tool: no partial image then.
  const unhook = onInterrupt(() => {
    endDump(false);
    thawed?.refreeze();
    networkLock.remove();
    void writer.abort().catch(() => {});
  });
  let killed = false;
  /** Whether the ended processes were seen gone (`handOver`'s `end`). */
  let gone = false;
  let started = performance.now();
  let frozenMs = 0;
  let tree: FrozenProcess[] = [];
  let pre: PreCopy | undefined;
  const holders: MemoryHolder[] = [];
  const release = () => {
    for (const f of [...tree].reverse()) f.releaseSync();
  };
  try {
    const sink = writer.pages();
    const staging = alignedBytes(STAGING_SIZE);
    if (opts.preCopy) {
      // Pre-copy hook: a brief freeze to arm tracking, then a copy while the processes run.
      const breathe = () => new Promise<void>((r) => setTimeout(r, 0));
      pre = await preCopy(() => freezeTree(pid, opts, new Set()), sink, staging, breathe);
      // The processes still run: whatever waits for the copy (a migration's stream) goes first.
      const copy = pre;
      await opts.afterPreCopy?.({ again: () => copy.again(breathe) });
      started = performance.now() - pre.frozenMs; // frozenMs counts both freezes
    }
    const stopped = new Set<number>();
    // Seized while frozen, thawed for the dump, frozen again before they are let go.
    mark("dump: freeze");
    thawed = FreezerThaw.thaw(freezerGroupsOf(pid, opts.single ?? false));
    tree = await freezeTree(pid, opts, stopped, thawed);
    mark("dump: frozen");
    refuseOutsideHolders(pid, tree.map((f) => f.pid), kinds);
    // A container's sockets are asked of its own net namespace.
    using _diag = kinds.includes("net") || joined.includes("net")
      ? diagInNamespaceOf(tree[0].injector)
      : undefined;
    const run: DumpRun = {
      policy,
      files: new FileTable(),
      sink,
      staging,
      scope: {},
      dumpedFiles: new Map(),
      pids: tree.map((f) => f.pid),
      outside: new OutsideProcesses(tree.map((f) => f.pid)),
      external,
      ending,
      networkLock,
      parent,
      pre,
      containerNet: kinds.includes("net") ? "own" : joined.includes("net") ? "joined" : undefined,
    };
    // Descriptor tables and fs contexts shared between processes (CLONE_FILES, CLONE_FS).
    const sharing = treeSharing(
      tree.map((f) => ({ pid: f.pid, ppid: tryReadStat(f.pid)?.ppid ?? 0 })),
    );
    // Every answer of the policy, for every process, before anything is dumped.
    const plans: ProcessPlan[] = [];
    for (const frozen of tree) plans.push(await planProcess(frozen, run));
    run.heldFds = plans.flatMap((p) => p.fds.map((d) => d.fd));
    checkPeers(plans, run);
    mark("dump: planned");
    // Inside a container, asked of its processes before the long copy.
    const namespaces = kinds.length || joined.length
      ? dumpNamespaces(pid, tree[0].injector, kinds, joined, run.pids)
      : undefined;
    // Its processes attach the segments of its IPC namespace, not of the tool's.
    if (kinds.includes("ipc")) run.segments = segmentTable(namespaces?.ipc?.shm ?? []);
    const zombiePids = (p: number) => zombieChildren(p).map((z) => z.pid);
    const innerPids = kinds.includes("pid") ? InnerPids.read(tree, zombiePids) : undefined;
    // Pid namespaces nested below the dump's: each process's pids at every level.
    const nested = NestedPids.read(tree.map((f) => f.pid), zombiePids);
    // Mount namespaces made with them (unshare --mount-proc): the mounts added on each.
    const nestedMounts = nested ? readNestedMounts(tree.map((f) => f.pid)) : undefined;
    const entries: ProcessEntry[] = [];
    for (const plan of plans) {
      const pid = plan.frozen.pid;
      const before = sink.bytesWritten;
      run.onProgress = (bytes: number) => opts.onProgress?.(before + bytes);
      const entry = await dumpProcess(
        plan,
        run,
        tableOf(entries, sharing.get(pid)?.sharesFilesWith),
        parentMemory(pid, sharing.get(pid), entries, plans),
      );
      Object.assign(entry, sharing.get(entry.pid));
      nested?.describe(entry);
      const mounts = nestedMounts?.get(entry.pid);
      if (mounts) entry.mountNamespace = { mounts };
      if (stopped.has(entry.pid)) {
        entry.stopped = true;
        entry.stopSignal = plan.frozen.stopSignal ?? SIG.SIGSTOP;
      }
      entries.push(entry);
      mark(`dump: process ${pid} dumped`);
    }
    // A process that ended while we read it (killed by someone else) has no image worth keeping.
    for (const f of tree) {
      if (dying(f.pid)) throw new NoSuchProcess(f.pid, "it ended during the dump");
    }
    // The image keeps the pids the processes see (the container's init is 1).
    entries.forEach((e, i) => innerPids?.translate(e, i === 0));
    const [root, ...descendants] = entries;
    root.tree = descendants.map((e) => ({ pid: e.pid, ppid: e.ppid }));
    if (networkLock.entry && !opts.leaveRunning) root.networkLock = networkLock.entry;
    if (namespaces) root.namespaces = namespaces;
    const cgroupGroups = dumpCgroupGroups(
      entries.flatMap((e) => [e.cgroups ?? [], ...e.threads.map((t) => t.cgroups ?? [])]),
      thawed?.groups,
    );
    if (cgroupGroups.length) root.cgroupGroups = cgroupGroups;
    if (descendants.some(inheritsMemory)) writer.needsFormat(SHARED_PAGES_FORMAT_VERSION);
    await writer.writeMeta(PROCESS_META, root);
    for (const e of descendants) await writer.writeMeta(processMetaName(e.pid), e);
    if (opts.leaveRunning) {
      // Everything is captured: let them run while the image is checked and made durable.
      endDump(true);
      thawed?.refreeze();
      release();
      frozenMs = performance.now() - started;
      // Their connections are theirs again: nothing of the lock may stay.
      lockSettled = true;
      const left = networkLock.remove();
      if (left) throw new DumpError(left);
    }
    await policy.afterDump?.({ dir, process: root, pageBytes: sink.bytesWritten });
    mark("dump: metadata written");
    await writer.commit();
    mark("dump: committed");
    /** Ends them while still frozen, so none runs a single instruction past the image. */
    const end = () => {
      if (killed) return;
      lockSettled = true;
      // Children first, so each parent is last to go.
      endDump(true);
      // All at once: the init of a nested pid namespace ends only once every process in it is
      // reaped, also one whose parent is outside it (unshare --pid, then another fork).
      for (const f of tree) f.doom();
      for (const f of [...tree].reverse()) f.kill();
      thawed?.refreeze(); // the group as it was, now empty (a v1 frozen task cannot die)
      killed = true;
      frozenMs = performance.now() - started;
    };
    if (!opts.leaveRunning) {
      await opts.handOver?.({
        dir,
        processes: entries.map((e) => e.pid),
        end: async () => {
          // Their memory is held meanwhile: freeing it is most of an exit, and their pids are
          // wanted now. It is freed once the hand-over is over.
          for (const f of tree) {
            const holder = MemoryHolder.take(f);
            if (holder) holders.push(holder);
          }
          end();
          mark("dump: killed");
          for (const f of tree) await waitGone(f.pid);
          mark("dump: gone");
          gone = true; // their pids may be a restored copy's from now on
        },
      });
      end(); // only once the image is safe (and handed over)
    }
    return {
      dir,
      pid,
      processes: tree.map((f) => f.pid),
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
    const reported = await failureOf(err);
    // A failed dump leaves its processes as they were: their connections unlocked too.
    const left = lockSettled ? null : networkLock.remove();
    if (!left) throw reported;
    throw new DumpError(`${(reported as Error).message}; and ${left}`, { cause: reported });
  } finally {
    endDump(false); // a failed dump: what handlers hold in the processes is put back first
    thawed?.refreeze();
    release();
    thawed?.letGo();
    try {
      pre?.close(); // closing the uffds unregisters everything in the targets
    } catch { /* each uffd was closed all the same */ }
    unhook();
    for (const h of holders) h.drop();
    if (killed && !gone) { for (const f of tree) await waitGone(f.pid); }
  }

  /** What a failure of the dump is reported as. */
  async function failureOf(err: unknown): Promise<unknown> {
    // A refusal says what happened: it is reported as itself.
    if (err instanceof DumpError || err instanceof PolicyError) return err;
    // Anything else (pagemap, /proc/PID/mem, an fd) may fail because a process ended: then that
    // is the reason. One killed a moment ago may still be on its way out: give it a little time.
    let gone = tree.find((f) => !isRunning(f.pid));
    for (let i = 0; !gone && i < 20; i++) {
      await new Promise((r) => setTimeout(r, 10));
      gone = tree.find((f) => !isRunning(f.pid));
    }
    if (!killed && gone) {
      return new NoSuchProcess(gone.pid, "it ended during the dump", { cause: err });
    }
    return err instanceof SyscallError ? explain(err, pid, "state") : err;
  }
}
