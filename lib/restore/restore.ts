/**
 * Restore: bring a dumped process back with its pid, memory, threads, registers, descriptors and
 * signals, with no kernel module and no compiled helper. A stub (`cat`) forks the new process with
 * clone3/set_tid; every step inside it is an injected syscall. A restore that fails midway kills
 * what it made: no half-restored process is left.
 */
import {
  alignedBytes,
  close,
  detach,
  kill,
  PAGE_SIZE,
  pidfdOpen,
  type Regs,
  setRegs,
  setSigMask,
  SIG,
  tgkill,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import { ImageError, RestoreError } from "../errors.ts";
import { abortScope, handlerForEntry, releaseScope, resumeScope } from "../files/registry.ts";
import { ImageReader } from "../image/mod.ts";
import { validateFields } from "../image/validate.ts";
import { Injector } from "../ptrace/inject.ts";
import { releaseNetworkLock } from "../network/lock.ts";
import { onInterrupt } from "../ptrace/freeze.ts";
import { checkInherited } from "../files/external.ts";
import { makePtys } from "../files/pty.ts";
import { type RestoredFdTable, restoreFdTable, type SharedFiles } from "../files/fdtable.ts";
import { FILE_ENTRY_FIELDS, type RestoredTasks } from "../files/types.ts";
import { AddressSpaceBuilder } from "../memory/address_space.ts";
import { inheritedRanges, inheritsMemory } from "../memory/cow.ts";
import { hugePageProblem } from "../memory/mapping.ts";
import { SharedObjects } from "../memory/objects.ts";
import { armLazyPages, type LazyPlan, planLazy } from "../memory/lazy.ts";
import { takeUserfaultfd } from "../ptrace/userfaultfd.ts";
import { RestoreHead } from "./restore_head.ts";
import { runsOfSpec } from "./page_server_process.ts";
import { checkFiles } from "./file_checks.ts";
import { eagerPagesIn, type LatePagesArrival } from "./late_pages.ts";
import { vdsoMismatch } from "../memory/special.ts";
import { checkNamespacePids, PidMap, PidNamespace } from "./pid_namespace.ts";
import {
  checkJoined,
  type JoinedFds,
  makeNamespaces,
  namespacesDiffer,
  openNamespaces,
} from "../namespaces/container.ts";
import { enterUserNamespace, groupsProblem } from "../namespaces/user.ts";
import { NestedPlan, setChildPidNamespace } from "../namespaces/nested_pid.ts";
import {
  checkNestedMounts,
  type LateMounts,
  makeLateMounts,
  makeNestedMountNamespace,
  nestedMountsDiffer,
} from "../namespaces/nested_mounts.ts";
import { restorePosixTimers } from "../task/posix_timers.ts";
import {
  needsSeccompSuspended,
  restoreSeccomp,
  seccompBeforeCreds,
  suspendSeccompFor,
} from "../task/seccomp.ts";
import {
  adoptOrphans,
  joinAsJob,
  moveToTerminal,
  ShellJob,
  type ToolTerminal,
  toolTerminal,
} from "./shell_job.ts";
import { restoreForegroundGroup, takeControllingPty } from "../task/terminal.ts";
import {
  restoreAttributes,
  restoreAttributesAfterCredentials,
  restoreThpDisable,
} from "../task/attributes.ts";
import { restoreAudit } from "../task/audit.ts";
import { CgroupRestore } from "../task/cgroups.ts";
import { unattainableCapabilities } from "../task/capabilities.ts";
import { restoreCredentials } from "../task/credentials.ts";
import { awaitStop, restoreStop, stopWouldBeLost } from "../task/job_stop.ts";
import { restoreScheduling } from "../task/scheduler.ts";
import { restoreFsState } from "../task/fs_state.ts";
import { restoreItimers } from "../task/itimers.ts";
import { restoreMm } from "../task/mm.ts";
import { restoreRlimits } from "../task/rlimits.ts";
import { restoreSession } from "../task/session.ts";
import { restoreSharedPending, restoreSigactions } from "../task/signals.ts";
import { cloneThreads, finalRegs, queueThreadState } from "../task/threads.ts";
import { restoreZombies } from "../task/zombies.ts";
import type { RestorePolicy, RestoreStage } from "../policy.ts";
import type { ProgressCallback } from "../progress.ts";
import { RemoteMemory } from "../inspect/memory.ts";
import { mountRoot } from "../inspect/mount_root.ts";
import { innermostPid, threadIds, tryReadStat } from "../inspect/procfs.ts";
import { compareWithImage, describeDifference, type Difference } from "./verify.ts";
import {
  type NamespacesEntry,
  PROCESS_META,
  type ProcessEntry,
  processMetaName,
} from "../image/schema.ts";
import {
  type CloneOptions,
  clonePlan,
  forkWithPid,
  RESTORE_TRACE_OPTIONS,
} from "../ptrace/stub.ts";
import { mark } from "../timeline.ts";

/** Options of `restore`. */
export interface RestoreOptions {
  /** Hooks the restore calls (`restoreStage` is told each stage and may stop it). */
  policy?: RestorePolicy;
  /** Called as page data is written, with the total. */
  onProgress?: ProgressCallback;
  /**
   * Restore into a new pid namespace (and a new mount namespace with its own /proc), where every
   * process and thread gets exactly its dumped pid and tid, however the host uses those numbers:
   * an image dumped with `leaveRunning` can be restored beside its original, as often as wanted.
   * The namespace's init (pid 1 inside) is the restored root's parent, not the original parent;
   * it reaps orphans and exits once the tree is gone. Network, IPC and the rest stay shared: a
   * listening address the original still holds is refused, a System V segment it still has is
   * shared with the copy. An image with pid 1 is refused. Not with `shellJob`.
   */
  pidNamespace?: boolean;
  /**
   * Differences between the image and the restored processes that are accepted: `true` for all,
   * or a function saying which. By default any difference the restore's own comparison finds
   * (verify.ts) fails the restore, killing what it made.
   */
  allowDifferences?: boolean | ((difference: Difference) => boolean);
  /**
   * Restore a program that was run from an interactive shell on this process's terminal (its
   * stdin, which must be its controlling terminal, in the foreground), as CRIU's `--shell-job`:
   * descriptors that were open on the dumped process's controlling terminal are opened on this
   * one (the old one may be gone); the process stays in this process's session, even if it led
   * its own, and leads a process group of its own, which gets the terminal if the process was
   * the foreground job when dumped, set to the modes it had then (the terminal's own come back
   * when it is taken back). It becomes this process's child: `RestoreResult.job.wait()` waits
   * for it like a shell's `fg` and takes the terminal back.
   */
  shellJob?: boolean;
  /**
   * The image's external files (dumped with `external`, or a policy's `{ external: KEY }`), each
   * handed in as one of this process's descriptors: key → fd number, as CRIU's `--inherit-fd`.
   * Every descriptor of the file gets that very open file (and the dumped status flags): so
   * `{ "pipe:[12345]": 1 }` gives the restored writer this process's stdout. An external file
   * not handed in, a key the image has no external file of, and an fd not open with the file's
   * access mode are refused before anything is made. `net` hands in the net namespace a
   * container dumped with `external: ["net"]` joins (an fd open on it, as /run/netns/NAME), `user`
   * the user namespace one dumped with `external: ["user"]` joins (open on /proc/PID/ns/user).
   */
  inheritFds?: Readonly<Record<string, number>>;
  /**
   * Lazy (post-copy) restore: the processes run as soon as they are made, before their memory
   * is in. Their private anonymous memory (heap, stacks, anonymous mappings) is registered with
   * a userfaultfd each, which one detached page server of the tool holds for the tree: a page a
   * process touches is filled from the image at once, the rest in the background, and the
   * server ends once every page is in or the processes are gone (it follows forks, mremap,
   * madvise(DONTNEED) and munmap). Other memory is written before they run, as without `lazy`,
   * and so are the pages a child shares with its parent copy-on-write (the parent's are in
   * before the child is forked). The image must stay readable until the server ends: one it
   * cannot read gets the processes (and whatever they forked) killed, with the reason in the
   * log and on the root's stderr. Not with `pidNamespace` or `shellJob`.
   */
  lazy?: boolean;
  /** With `lazy`: the page server's log file (default `$TMPDIR/tardigrade-lazy-PID.log`). */
  lazyLog?: string;
  /**
   * Removes the image directory once the restored processes no longer need it: when the restore
   * returns or, with `lazy`, when the page server ends. For an image made to be restored once (a
   * migration's, received into a temporary directory). A failed restore leaves it.
   */
  discardImage?: boolean;
  /**
   * With `lazy`, post-copy (a migration's receiver): page-file bytes that are not in the image
   * yet but come while the restore runs and after. Pages written before the processes run wait
   * for theirs (`arrival`); the page server serves the rest once they come, told through
   * `PageServerProcess.tell` (the caller's, from the restore head it hands in).
   */
  late?: LatePagesArrival;
  /**
   * The image's processes are ending as the restore starts (a migration on one machine): their
   * pids are waited for up to this long, in ms, instead of being refused as in use at once.
   */
  pidsFreedWithinMs?: number;
}

/** With `lazy`: the page server left running. */
export interface LazyPages {
  /** The page server's pid. */
  server: number;
  /** Its log file. */
  log: string;
  /** Bytes it serves (the rest was written before the process ran). */
  bytes: number;
}

/** What a restore made. */
export interface RestoreResult {
  /**
   * The restored process (the root of the tree) as the tool sees it: the dumped pid, or with
   * `pidNamespace` its pid on the host (what to signal or watch from outside).
   */
  pid: number;
  /** The root's pid as the restored processes see it: the dumped pid. */
  namespacePid: number;
  /** Every process restored (pids as the tool sees them, like `pid`), the root first. */
  processes: number[];
  /**
   * Dumped pid or tid of every process and thread restored → its pid or tid as the tool sees
   * it; the identity without `pidNamespace`.
   */
  pidMap: Map<number, number>;
  /**
   * With `pidNamespace`: the host pid of the namespace's init, the root's parent; for a
   * container's image, the root itself (pid 1 of its fresh pid namespace). Killing it (SIGKILL)
   * ends every process of the restored tree.
   */
  namespaceInit?: number;
  /** Threads restored. */
  threads: number;
  /** Bytes of page data written into it. */
  pageBytes: number;
  /** Things that could not be restored exactly (a hard rlimit this machine cannot raise …). */
  warnings: string[];
  /** Differences from the image that were allowed (`allowDifferences`); empty otherwise. */
  differences: Difference[];
  /** With `shellJob`: the restored process as a job of this terminal, to wait for. */
  job?: ShellJob;
  /** With `lazy`: the page server that fills the rest of the memory. */
  lazy?: LazyPages;
}

/** Waits for a killed tracee until it is gone (not one of ours any more: nothing to do). */
function reap(tid: number): void {
  for (;;) {
    try {
      const st = waitpid(tid);
      if (!st || st.exited || st.signaled) return;
    } catch {
      return; // ECHILD: reaped, or neither our child nor our tracee
    }
  }
}

/**
 * Waits a little for a zombie that init will reap; a live pid or a kept zombie is "in use". A
 * live one is waited for too, up to `liveMs`, when the caller knows it is ending (a migration on
 * one machine hands over while the original exits).
 */
async function requireFreePid(pid: number, what: string, liveMs = 0): Promise<void> {
  const started = Date.now();
  for (;;) {
    const st = tryReadStat(pid);
    if (!st) return;
    try {
      waitpid(pid, 1 /* WNOHANG */); // our own zombie: reap it
    } catch { /* not ours */ }
    const waited = Date.now() - started;
    if (st.state === "Z" ? waited > 4000 : waited >= liveMs) {
      throw new RestoreError(
        `${what} ${pid} is in use (is the dumped process still running? ` +
          `--pid-namespace restores a copy beside it)`,
      );
    }
    await new Promise((r) => setTimeout(r, 2));
  }
}

/**
 * Checks everything that can be checked before anything is made; the files a container of its
 * own mounts names by path (`ownMounts`) once they are made (file_checks.ts).
 */
async function preflight(
  p: ProcessEntry,
  file: string,
  inNewPidNamespace: boolean,
  ownUserNamespace: boolean,
  liveMs = 0,
  ownMounts = false,
): Promise<void> {
  if (!p || typeof p.pid !== "number" || !Array.isArray(p.threads)) {
    throw new ImageError("process.cbor: not a process entry");
  }
  const huge = hugePageProblem(p);
  if (huge) throw new RestoreError(`cannot restore: ${huge}`);
  // Old images have the process's credentials only: they serve every thread.
  const caps = unattainableCapabilities(
    p.pid,
    p.threads.map((t) => ({ ...t, creds: t.creds ?? p.creds })),
    ownUserNamespace,
  );
  if (caps) throw new RestoreError(`cannot restore: ${caps}`);
  const vdso = vdsoMismatch(p.special);
  if (vdso) throw new RestoreError(`cannot restore: ${vdso}`);
  for (const [i, f] of p.files.entries()) {
    const handler = handlerForEntry(f);
    if (!handler) throw new ImageError(`process.cbor: unknown file kind "${f.kind}"`);
    validateFields(file, f, `files[${i}]`, { ...FILE_ENTRY_FIELDS, ...handler.fields });
  }
  if (!ownMounts) checkFiles(p, "");
  if (inNewPidNamespace) return; // every pid is free there
  await requireFreePid(p.pid, "pid", liveMs);
  for (const t of p.threads) {
    if (t.tid !== p.pid) await requireFreePid(t.tid, "thread id", liveMs);
  }
  for (const z of p.zombies ?? []) await requireFreePid(z.pid, "pid of zombie child", liveMs);
}

/** Why an image cannot be restored lazily with `opts`: refused before anything is made. */
function checkLazy(opts: RestoreOptions): void {
  if (opts.late && !opts.lazy) throw new RestoreError("pages still on their way need `lazy`");
  const why = opts.pidNamespace
    ? "not into a new pid namespace"
    : opts.shellJob
    ? "not as a shell job"
    : null;
  if (why) throw new RestoreError(`cannot restore lazily: ${why}`);
}

let staging: Uint8Array | undefined;

/**
 * Two page-data buffers as large as the largest extent (one is read into while the other is
 * written out), kept for every restore of this process: fresh memory is slow to touch.
 */
function stagingBuffers(largest: number): [Uint8Array, Uint8Array] {
  // In whole pages; a dump's extents are half its staging buffer (16 MiB).
  const size = Math.ceil(largest / PAGE_SIZE) * PAGE_SIZE;
  // Page-aligned: an extent read from the disk (not the page cache) goes straight into it.
  if (!staging || staging.length < 2 * size) staging = alignedBytes(2 * size);
  return [staging.subarray(0, size), staging.subarray(size, 2 * size)];
}

/** One process of the tree while it is being made. */
interface Making {
  entry: ProcessEntry;
  pid: number;
  mem: RemoteMemory;
  inj: Injector;
  asb?: AddressSpaceBuilder;
  /** Bytes of page data written into it, once its memory is in. */
  pageBytes?: number;
  /** Its descriptor table, until its last steps are done (absent when it shares another's). */
  files?: RestoredFdTable;
  /** Injectors of its threads, once made. */
  injectors?: Map<number, Injector>;
  /** The registers each thread resumes with. */
  regs?: Map<number, Regs>;
  /** Each thread's securebits once made (the tool's), by dumped tid. */
  securebits?: Map<number, number>;
  /** With `lazy`: what is served later, and the userfaultfd (in the tool) it is served through. */
  lazy?: { plan: LazyPlan; uffd?: number };
  /** When (performance.now()) its timers began to be armed: they run from then on. */
  timersArmedAt?: number;
}

/** Reads the root entry and the entries of the rest of the tree, parents first. */
async function readTree(reader: ImageReader): Promise<ProcessEntry[]> {
  const root = await reader.readMeta<ProcessEntry>(PROCESS_META);
  const entries = [root];
  for (const t of root?.tree ?? []) {
    entries.push(await reader.readMeta<ProcessEntry>(processMetaName(t.pid)));
  }
  return entries;
}

/** What every process of one restore shares. */
interface Shares {
  objects: SharedObjects;
  files: SharedFiles;
  scope: object;
  /** Dumped pid/tid → host pid/tid of everything made. */
  pids: PidMap;
  /** The new pid namespace the tree is made in, with `pidNamespace`. */
  namespace?: PidNamespace;
  /** Every process, thread and zombie of the image, for descriptors that name them. */
  tasks: RestoredTasks;
  /** The tool's descriptors handed in for external files, by key. */
  inherited: ReadonlyMap<string, number>;
  /** In a container's IPC namespace: its init made the System V segments, each process attaches. */
  containerIpc: boolean;
  /** The pid namespaces nested below the image's, which the tree is made into. */
  nested: NestedPlan;
}

/** The processes, threads and zombies `entries` make. */
function tasksOf(entries: ProcessEntry[], ownNamespace: boolean): RestoredTasks {
  const ids = new Set<number>();
  for (const p of entries) {
    ids.add(p.pid);
    for (const t of p.threads) ids.add(t.tid);
    for (const z of p.zombies ?? []) ids.add(z.pid);
  }
  return { restored: (id) => ids.has(id), ownNamespace };
}

/** What building each process of one restore uses. */
interface RestoreRun {
  reader: ImageReader;
  shares: Shares;
  /** Tells the policy (and the debug log) which stage of which process begins. */
  stage: (name: RestoreStage, p: ProcessEntry) => void;
  /** Every process and thread made so far, to kill if the restore fails. */
  made: number[];
  warnings: string[];
  /** Puts the threads in their groups. */
  cgroups: CgroupRestore;
  /** Post-copy: page-file bytes still on their way. */
  late?: LatePagesArrival;
}

/**
 * The address space of one process, emptied first unless it was; returns the bytes of page data
 * written. One save and settle of the main thread serve the hundreds of syscalls (`batch`): the
 * process dies with the tool (PTRACE_O_EXITKILL), so injected registers left behind cannot harm it.
 */
function buildMemory(
  m: Making,
  run: RestoreRun,
  progress: (bytes: number) => void,
): Promise<number> {
  if (!m.asb) {
    m.asb = new AddressSpaceBuilder(m.pid, m.inj, m.entry, run.shares.containerIpc);
    m.asb.empty(run.shares.namespace?.keptFd(m.pid));
  }
  return m.inj.batch(() => buildAddressSpace(m, run, progress));
}

async function buildAddressSpace(
  m: Making,
  run: RestoreRun,
  progress: (bytes: number) => void,
): Promise<number> {
  const { reader, shares, stage } = run;
  const { entry: p, inj } = m;
  stage("memory", p);
  restoreThpDisable(inj, p); // decides how the pages written next are backed
  const asb = m.asb!; // emptied already
  asb.moveSpecials();
  asb.placeScratch();
  asb.createObjects(shares.objects);
  asb.createMappings();
  mark(`restore: mappings made ${p.pid}`);
  if (m.lazy) {
    // While the process still has the stub's credentials: a userfaultfd that serves faults from
    // kernel mode too (a read(2) into a missing page) needs privilege.
    const pidfd = pidfdOpen(m.pid);
    try {
      m.lazy.uffd = takeUserfaultfd(inj, pidfd, "never");
    } finally {
      close(pidfd);
    }
  }
  let eager = m.lazy?.plan.eager;
  if (eager && run.late) eager = await eagerPagesIn(eager, run.late, reader);
  const pageBytes = await asb.fillPages(
    reader,
    stagingBuffers(p.extents.reduce((most, e) => Math.max(most, e.length), 0)),
    progress,
    eager,
  );
  mark(`restore: pages in ${p.pid}`);
  asb.finish();
  asb.seal();
  return pageBytes;
}

/** Descriptors and process state of one process whose memory is in; threads are made, not resumed. */
function buildRest(m: Making, run: RestoreRun): Promise<void> {
  return m.inj.batch(() => buildTask(m, run));
}

async function buildTask(m: Making, run: RestoreRun): Promise<void> {
  const { shares, stage, made, warnings } = run;
  const { entry: p, inj, mem } = m;
  const asb = m.asb!;
  stage("files", p);
  // A table shared with a process made before (CLONE_FILES) is restored once, by that one.
  if (p.sharesFilesWith === undefined) {
    m.files = restoreFdTable(p, {
      inj,
      mem,
      objects: asb.objects,
      shared: shares.files,
      scope: shares.scope,
      tasks: shares.tasks,
      inherited: shares.inherited,
    });
  }

  stage("process", p);
  // Before the threads, which inherit them, and the credentials (CAP_AUDIT_CONTROL).
  restoreAudit(inj, p.audit);
  restoreAttributes(inj, p);
  restoreSigactions(inj, p.sigactions);
  m.timersArmedAt = performance.now();
  restoreItimers(inj, p.itimers);
  restoreMm(inj, p);
  inj.flush(); // what the steps above queued, made together

  stage("threads", p);
  const main = p.threads.find((t) => t.tid === p.pid) ?? p.threads[0];
  const others = p.threads.filter((t) => t !== main);
  const ids = others.map((t) => t.nestedTids ? NestedPlan.setTid(t.tid, t.nestedTids) : t.tid);
  for (const [i, tid] of cloneThreads(inj, ids).entries()) {
    made.push(tid);
    const t = others[i];
    shares.pids.set(t.tid, tid);
    run.cgroups.joinThread(p.pid, t.tid, tid, t.cgroups);
  }
  const injectors = m.injectors = new Map(
    p.threads.map((t) => [t.tid, t === main ? inj : inj.forThread(shares.pids.host(t.tid))]),
  );
  // Zombie children of the other threads, forked by their thread.
  for (const t of p.threads) {
    if (t === main) continue;
    restoreZombies(injectors.get(t.tid)!, p, t.tid, shares.pids);
  }
  // What is written into it names its threads as it sees them: in a nested pid namespace, by
  // their innermost ids.
  const seen = (id: number) => p.nestedPid ? innermostPid(shares.pids.host(id)) : id;
  // Every thread's state in one wait for each group of threads, which make it at once.
  const securebits = Injector.inEachThread(
    p.threads.map((t) => injectors.get(t.tid)!),
    (threadInj, i) =>
      queueThreadState(threadInj, p.threads[i], seen(p.pid), seen(p.threads[i].tid)),
  );
  m.securebits = new Map(p.threads.map((t, i) => [t.tid, securebits[i]]));
  // After the threads: a timer may notify one of them.
  restorePosixTimers(inj, p.posixTimers ?? [], seen);
  restoreSharedPending(inj, seen(p.pid), p.sharedPending); // its pid as it sees itself
  warnings.push(...await restoreRlimits(inj, p.rlimits));
}

/**
 * Makes process `p` of the tree from `maker` (its parent, or a sibling: `opts`) with its pid at
 * every level: the init of a nested pid namespace with CLONE_NEWPID, a process of a nested
 * namespace that is not its maker's own from inside it (the maker joins it for its children
 * for this one fork). Returns its host pid.
 */
function makeChild(maker: Making, p: ProcessEntry, opts: CloneOptions, shares: Shares): number {
  if (!p.nestedPid && !maker.entry.nestedPid) return forkWithPid(maker.inj, p.pid, opts);
  const how = shares.nested.makeFrom(maker.entry.pid, p);
  const ids = NestedPlan.setTid(p.pid, p.nestedPid?.pids);
  if (how.join === undefined) return forkWithPid(maker.inj, ids, { ...opts, flags: how.flags });
  setChildPidNamespace(maker.inj, shares.pids.host(how.join));
  const pid = forkWithPid(maker.inj, ids, opts);
  setChildPidNamespace(maker.inj, null);
  return pid;
}

/**
 * Once every process and thread of the tree exists: what names them in descriptors (pidfds),
 * then the fs state (a chroot would hide the host paths descriptors are opened by, and a shared
 * fs context is set once).
 */
function afterTasks(making: Making[], shares: Shares, warnings: string[]): void {
  for (const m of making) m.files?.afterTasks();
  for (const m of making) {
    if (m.entry.sharesFsWith !== undefined) continue;
    for (const w of restoreFsState(m.inj, m.entry, shares.scope)) {
      warnings.push(`process ${m.entry.pid}: ${w}`);
    }
    m.inj.flush(); // queued: made before anything reads it from outside
  }
}

/** Last steps inside one process, once every process of the tree is built. */
function seal(m: Making, shares: Shares): void {
  const { entry: p, inj } = m;
  m.asb!.restoreFileTimes();
  m.asb!.closeObjects();
  // Once its threads are made (a thread is made only while its children's pid namespace is its
  // own), and while it has the capabilities to: unshare --pid left it so.
  if (p.childPidNamespace !== undefined) {
    setChildPidNamespace(inj, shares.pids.host(p.childPidNamespace));
  }
  const seccomp = (first: boolean) => {
    for (const t of p.threads) {
      if (seccompBeforeCreds(t) !== first) continue;
      restoreSeccomp(m.injectors!.get(t.tid)!, t, p.seccompFilters ?? []);
    }
  };
  seccomp(true);
  // Credentials belong to each thread (a raw setresuid changes only its caller's): every thread,
  // the main one last. Images of older versions have the process's only.
  const threadsMainLast = [
    ...p.threads.filter((t) => t.tid !== p.pid),
    ...p.threads.filter((t) => t.tid === p.pid),
  ];
  for (const t of threadsMainLast) {
    const threadInj = m.injectors!.get(t.tid)!;
    restoreCredentials(threadInj, t.creds ?? p.creds, t.securebits, m.securebits?.get(t.tid));
  }
  // After every thread's credentials: a change of uid clears the parent-death signal and resets
  // the dumpable flag, and the kernel signals a file's owner as whoever set it may.
  restoreAttributesAfterCredentials(inj, p);
  m.files?.restoreOwners();
  // Late: an idle or pinned thread would make the steps before it slow.
  for (const t of p.threads) {
    if (t.scheduling) restoreScheduling(m.injectors!.get(t.tid)!, t.scheduling);
  }
  m.regs = new Map(p.threads.map((t) => [t.tid, finalRegs(m.injectors!.get(t.tid)!, t)]));
  // Last in each thread, the filters: they may forbid what came before. What is still injected
  // until the detach (the comparison's reads, the scratch's munmap) runs all the same, as
  // seccomp is suspended while traced.
  seccomp(false);
  // Nothing changes mappings after this but the scratch's munmap, of another range.
  m.asb!.sealMappings();
}

/** The last injected syscall: the restorer's scratch memory goes. */
function unmapScratch(m: Making): void {
  const scratch = m.inj.scratchRange!;
  m.inj.call("munmap", scratch.start, scratch.end - scratch.start);
  m.inj.dropScratch();
}

/**
 * Reads every restored process back from the kernel and compares it with its image (verify.ts);
 * throws naming the differences unless the options allow them.
 */
async function checkRestored(
  making: Making[],
  shares: Shares,
  opts: RestoreOptions,
  shellJob: boolean,
): Promise<Difference[]> {
  const diffs = await compareWithImage(making.map((m, i) => ({
    entry: m.entry,
    hostPid: m.pid,
    injectors: m.injectors!,
    hostId: (id: number) => shares.pids.host(id),
    imageId: (id: number) => shares.pids.image(id),
    ignore: m.inj.scratchRange ? [m.inj.scratchRange] : [],
    sessionChosen: shellJob && i === 0,
    diesWithTool: true,
    timersArmedAt: m.timersArmedAt,
  })));
  const allow = opts.allowDifferences;
  const refused = diffs.filter((d) =>
    !(allow === true || (typeof allow === "function" && allow(d)) ||
      opts.policy?.allowDifference?.(d))
  );
  if (refused.length) {
    const shown = refused.slice(0, 8).map(describeDifference);
    const more = refused.length > shown.length
      ? `\n(and ${refused.length - shown.length} more)`
      : "";
    throw new RestoreError(
      `the restored process does not match its image:\n${shown.join("\n")}${more}\n` +
        `(nothing was left running; allowDifferences (--allow-differences) restores it anyway)`,
    );
  }
  return diffs;
}

/** Lets every thread of one process run from its dumped registers. */
function resume(m: Making): void {
  const p = m.entry;
  const hostTid = (tid: number) => m.injectors!.get(tid)!.tid;
  for (const t of p.threads) {
    setSigMask(hostTid(t.tid), t.sigmask);
    setRegs(hostTid(t.tid), m.regs!.get(t.tid)!);
  }
  // A signal not blocked that arrived (or was queued) while we worked goes in on release.
  // Signals are queued while every thread is still held (a signal given with PTRACE_DETACH is
  // lost from an event stop): one that arrived while we worked, and SIGSTOP for a process that
  // was stopped, which it takes on its way out of the stop.
  for (const t of p.threads) {
    for (const s of m.injectors!.get(t.tid)!.deferred) tgkill(m.pid, hostTid(t.tid), s.signo);
  }
  restoreStop(p, m.pid);
  for (const t of [...p.threads].reverse()) detach(hostTid(t.tid));
  m.mem.close();
}

/**
 * Brings the processes in image `dir` back: the same pids and tids, each the child of the same
 * parent, running on from where they were frozen. Returns once they run; they live on without
 * the tool. With `shellJob` the root comes back as a job of this process's terminal. With
 * `pidNamespace` they get their pids and tids inside a new pid namespace, the root as the child of
 * its init, beside whatever runs with those pids on the host. The image of a container (dumped
 * from its init) comes back in fresh namespaces of the kinds it had, its init pid 1 again, in
 * its cgroups (made again with their limits when missing).
 */
export async function restore(dir: string, opts: RestoreOptions = {}): Promise<RestoreResult> {
  if (!opts.shellJob) return await restoreTree(dir, opts);
  const terminal = toolTerminal();
  // Before the stub starts: the stub is reparented to us, and the job's root after it.
  const stopAdopting = adoptOrphans();
  try {
    return await restoreTree(dir, opts, terminal);
  } finally {
    stopAdopting();
  }
}

/**
 * `restore` (not as a shell job) with its stub and page server started ahead (a migration's
 * receiver starts them while the memory streams in); `head` is used up either way.
 */
export function restoreWithHead(
  dir: string,
  opts: RestoreOptions,
  head: RestoreHead,
): Promise<RestoreResult> {
  if (opts.shellJob) {
    head.drop();
    return Promise.reject(new RestoreError("a restore started ahead is not a shell job"));
  }
  return restoreTree(dir, opts, undefined, head);
}

async function restoreTree(
  dir: string,
  opts: RestoreOptions,
  terminal?: ToolTerminal,
  head?: RestoreHead,
): Promise<RestoreResult> {
  const debug = Deno.env.get("TARDIGRADE_DEBUG")
    ? (msg: string) => console.error(`[restore] ${performance.now().toFixed(1)} ${msg}`)
    : () => {};
  // An interruption (interruptFrozen: Ctrl-C in the REPL) ends the restore at its next stage,
  // before anything is resumed: what was made is killed as on any failure.
  let interrupted = false;
  using _interruption = { [Symbol.dispose]: onInterrupt(() => interrupted = true) };
  const stage = (name: RestoreStage, p: ProcessEntry) => {
    if (interrupted) {
      throw new RestoreError(`interrupted before the ${name} stage of process ${p.pid}`);
    }
    debug(`${name} ${p.pid}`);
    mark(`restore: ${name} ${p.pid}`);
    opts.policy?.restoreStage?.(name, p);
  };
  // The stub starts meanwhile (a shell and an exec take as long as checking a small image), and
  // the page server of a lazy restore (a Deno takes longer still), unless started ahead.
  const { stub: starting, server } = (head ?? RestoreHead.start(opts.lazy === true))
    .take(opts.lazy === true);
  const dropStub = async () => {
    server?.abort();
    (await starting.catch(() => null))?.end();
  };
  let entries: ProcessEntry[];
  let inherited: ReadonlyMap<string, number>;
  let container: NamespacesEntry | undefined;
  let cgroups: CgroupRestore;
  let containerPid = false;
  let joinedFds: JoinedFds = {};
  let nested: NestedPlan;
  using reader = await ImageReader.open(dir).catch(async (err) => {
    await dropStub();
    throw err;
  });
  // The page data comes from the disk while the processes are made (a lazy restore reads little).
  if (!opts.lazy) reader.prefetch();
  try {
    entries = await readTree(reader);
    mark("restore: image read");
    container = entries[0]?.namespaces;
    containerPid = container?.kinds.includes("pid") ?? false;
    if (terminal) moveToTerminal(entries, terminal);
    if (opts.pidNamespace && opts.shellJob) {
      throw new RestoreError("a shell job cannot be restored into a new pid namespace");
    }
    if (container && (opts.pidNamespace || opts.shellJob)) {
      throw new RestoreError(
        `the image is of a container (${container.kinds.join(", ")} namespaces of its own), ` +
          `restored in fresh namespaces: not with ${
            opts.pidNamespace ? "a pid namespace of the restore's" : "a shell job"
          }`,
      );
    }
    if (containerPid && entries[0].pid !== 1) {
      throw new ImageError(
        `${PROCESS_META}.cbor: a container's root is not pid 1 of its namespace`,
      );
    }
    const userKind = (container?.kinds.includes("user") || container?.joined?.includes("user")) ??
      false;
    if (userKind !== (container?.user !== undefined) || (userKind && !containerPid)) {
      throw new ImageError(
        `${PROCESS_META}.cbor: a container's user namespace comes with its maps and a pid ` +
          `namespace`,
      );
    }
    const groups = container?.user && groupsProblem(container.user, entries);
    if (groups) throw new RestoreError(`cannot restore: ${groups}`);
    const given = checkJoined(container, opts.inheritFds ?? {});
    joinedFds = given.joined;
    inherited = checkInherited(entries, given.files);
    for (const [i, p] of entries.entries()) {
      const file = `${i === 0 ? PROCESS_META : processMetaName(p.pid)}.cbor`;
      await preflight(
        p,
        file,
        opts.pidNamespace === true || containerPid,
        container?.user !== undefined,
        opts.pidsFreedWithinMs,
        container?.kinds.includes("mnt"),
      );
    }
    if (opts.pidNamespace) checkNamespacePids(entries);
    nested = new NestedPlan(entries);
    checkNestedMounts(entries);
    if (opts.lazy) checkLazy(opts);
    cgroups = new CgroupRestore(entries[0].cgroupGroups ?? []);
    cgroups.check(entries);
    stage("preflight", entries[0]);
  } catch (err) {
    await dropStub();
    throw err;
  }

  const stub = await starting.catch((err) => {
    server?.abort();
    throw err;
  });
  // Every process and thread made from the stub inherits its options: suspend their filters.
  if (needsSeccompSuspended(entries)) {
    try {
      suspendSeccompFor(stub.pid, RESTORE_TRACE_OPTIONS);
    } catch (err) {
      stub.end();
      server?.abort();
      throw err;
    }
  }
  const made: number[] = [];
  const making: Making[] = [];
  const lateMounts: LateMounts[] = [];
  const mountedLate: Making[] = [];
  const shares: Shares = {
    objects: new SharedObjects(),
    files: new Map(),
    scope: {},
    pids: new PidMap(),
    tasks: tasksOf(entries, opts.pidNamespace === true || containerPid),
    inherited,
    containerIpc: container?.kinds.includes("ipc") ?? false,
    nested,
  };
  const warnings: string[] = [];
  let job: ShellJob | undefined;
  try {
    // Every process first, each forked by its parent so the tree is as it was; a session or
    // group leader leads it again before its children are made, so they join it.
    stage("stub", entries[0]); // seized, about to fork the tree
    const site = stub.injector.site;
    // Pseudo-terminals at their indexes, before a session leader takes one as its terminal.
    await makePtys(shares.scope, entries);
    if (opts.pidNamespace) {
      // Its init, made from the stub, forks the root.
      shares.namespace = PidNamespace.create(stub.injector);
      shares.namespace.mountProc();
    } else if (containerPid) {
      // Its user namespace first, which then owns the others, made inside it.
      if (container?.user) {
        enterUserNamespace(stub.injector, container.user, entries[0].creds.groups, joinedFds.user);
      }
      // A container's init is the restored root: pid 1 of the namespace the stub makes.
      shares.namespace = PidNamespace.createForContainer(stub.injector, entries[0]);
    }
    // The net namespace handed in, taken by the init through its pidfd of the tool.
    const joined = joinedFds.net === undefined
      ? undefined
      : { fd: joinedFds.net, toolPidfd: shares.namespace?.toolPidfdFd };
    const plans = new Map(
      opts.lazy ? entries.map((p) => [p.pid, planLazy(p, inheritedRanges(p, entries))]) : [],
    );
    const lazyBytes = [...plans.values()].reduce((n, plan) => n + plan.bytes, 0);
    const total = entries.reduce((n, p) => n + p.extents.reduce((k, e) => k + e.length, 0), 0) -
      lazyBytes;
    const run: RestoreRun = { reader, shares, stage, made, warnings, cgroups, late: opts.late };
    let pageBytes = 0;
    const memoryOf = async (m: Making) => {
      if (m.pageBytes !== undefined) return;
      const before = pageBytes;
      m.pageBytes = await buildMemory(m, run, (b) => opts.onProgress?.(before + b, total));
      pageBytes += m.pageBytes;
    };
    const ppidOf = (pid: number) => entries.find((e) => e.pid === pid)?.ppid;
    for (const p of entries) {
      // Made by its parent, or by the process it shares its descriptor table or fs context with.
      const plan = clonePlan(p, ppidOf);
      if (typeof plan === "string") throw new RestoreError(`cannot restore: ${plan}`);
      const maker = making.find((m) => m.entry.pid === plan.from);
      // It inherits memory it shares with its parent: forked once the parent's is in (cow.ts).
      if (inheritsMemory(p)) {
        if (!maker || maker.entry.pid !== p.ppid) {
          throw new ImageError(
            `${processMetaName(p.pid)}.cbor: it shares memory with process ${p.ppid}, ` +
              `which does not make it`,
          );
        }
        await memoryOf(maker);
      }
      const pid = maker
        ? makeChild(maker, p, plan.opts, shares)
        : shares.namespace?.forkRoot(p.pid) ?? stub.forkWithPid(p.pid);
      made.push(pid);
      shares.pids.set(p.pid, pid);
      // Before it forks its children, which start in its groups.
      cgroups.join(p.pid, pid, p.cgroups);
      const mem = new RemoteMemory(pid);
      const m: Making = {
        entry: p,
        pid,
        mem,
        // Its maker's layout: the stub's, or the parent's own once its memory is in.
        inj: new Injector(pid, pid, mem, maker?.inj.site ?? site, { diesWithTool: true }),
        ...(plans.has(p.pid) ? { lazy: { plan: plans.get(p.pid)! } } : {}),
      };
      making.push(m);
      // A mount namespace it made (unshare --mount-proc), before it forks into it.
      if (p.mountNamespace) {
        const late = makeNestedMountNamespace(m.inj, p);
        if (late) lateMounts.push(late);
      }
      // Before it forks the rest of the tree, which inherits them.
      if (container && p === entries[0]) {
        makeNamespaces(m.inj, container, joined);
        // Its files, found in the mount tree just made.
        if (container.kinds.includes("mnt")) {
          for (const e of entries) checkFiles(e, mountRoot(pid));
        }
      }
      if (terminal && p === entries[0]) joinAsJob(m.inj);
      else {
        restoreSession(m.inj, p);
        // Before it forks the rest of its session, which inherits its controlling terminal.
        takeControllingPty(m.inj, p, shares.scope);
      }
    }
    // Once every process exists: a zombie may be in the process group of another.
    for (const m of making) restoreZombies(m.inj, m.entry, undefined, shares.pids);
    stub.end();
    // Every address space emptied before any other is filled (but those filled already, for a
    // child to inherit their memory): a process holds copies of its maker's mappings and fds.
    for (const m of making) {
      if (m.asb) continue;
      m.asb = new AddressSpaceBuilder(m.pid, m.inj, m.entry, shares.containerIpc);
      m.asb.empty(shares.namespace?.keptFd(m.pid));
    }
    for (const m of making) {
      // A process outside a nested namespace opens /proc/self while built: before its /proc is
      // mounted in the mount namespace it lives in.
      for (const init of mountedLate) {
        const outside = m.entry.nestedPid?.init !== init.entry.pid &&
          shares.nested.depth(m.entry.pid) <= shares.nested.depth(init.entry.pid) &&
          Deno.readLinkSync(`/proc/${m.pid}/ns/mnt`) ===
            Deno.readLinkSync(`/proc/${init.pid}/ns/mnt`);
        if (outside) {
          throw new RestoreError(
            `cannot restore: process ${m.entry.pid} lives outside nested pid namespace ` +
              `${init.entry.pid} in the mount namespace its /proc is mounted in, and is built ` +
              `after that namespace's init (tardigrade builds such a process first)`,
          );
        }
      }
      await memoryOf(m);
      // The /proc of a nested namespace (and what is mounted after it), mounted by its init once
      // its memory is in, before its files and those of the processes inside (a directory open
      // on /proc is opened there).
      const late = lateMounts.findIndex((l) => l.init === m.entry.pid);
      if (late >= 0) {
        makeLateMounts(m.inj, lateMounts.splice(late, 1)[0]);
        mountedLate.push(m);
      }
      mark(`restore: memory ${m.entry.pid}`);
      await buildRest(m, run);
      mark(`restore: rest ${m.entry.pid}`);
    }
    // One page server for the tree (each process's faults and fill, and the children they fork)
    // takes the userfaultfds now, while the restore finishes: it serves once they are armed.
    const log = opts.lazyLog ??
      `${Deno.env.get("TMPDIR") ?? "/tmp"}/tardigrade-lazy-${making[0].pid}.log`;
    const lazy = making.filter((m) => m.lazy);
    const served = lazy.length
      ? server!.handOver({
        dir,
        processes: lazy.map((m) => ({
          pid: m.pid,
          from: { pid: Deno.pid, fd: m.lazy!.uffd! },
          pending: runsOfSpec(m.lazy!.plan.pending),
          extents: m.entry.extents,
        })),
        log,
        discard: opts.discardImage === true,
        ...(opts.late ? { late: opts.late.missing() } : {}),
      })
      : undefined;
    served?.catch(() => {}); // reported where it is awaited
    afterTasks(making, shares, warnings);
    if (lateMounts.length) {
      throw new RestoreError(`cannot restore: nested init ${lateMounts[0].init} was not made`);
    }
    for (const m of making) restoreForegroundGroup(m.inj, m.entry, shares.scope);
    releaseScope(shares.scope);
    // As CRIU: the network lock goes just before the connections leave repair mode, so their
    // window probes reach the peers. A restore that fails before this point leaves it in place
    // for the next try.
    const lock = entries[0].networkLock;
    const unlocked = lock && releaseNetworkLock(lock, dir);
    if (unlocked) warnings.push(unlocked);
    // Every end of every TCP connection exists now: they may talk.
    resumeScope(shares.scope);
    if (container) openNamespaces(container); // a container's veths were down until now
    for (const m of making) seal(m, shares);
    for (const m of making) m.files?.close();
    // Every descriptor table is made: a container's init lets go of the tool's pidfd.
    shares.namespace?.dropToolPidfd(making[0].inj);
    stage("verify", entries[0]);
    const nsDiffer = container &&
      namespacesDiffer(making[0].pid, making[0].inj, container, joined, joinedFds.user);
    if (nsDiffer) {
      throw new RestoreError(`the restored container does not match its image: ${nsDiffer}`);
    }
    for (const m of making) {
      if (!m.entry.mountNamespace) continue;
      const why = nestedMountsDiffer(m.pid, shares.pids.host(m.entry.ppid), m.entry);
      if (why) throw new RestoreError(`the restored tree does not match its image: ${why}`);
    }
    const differences = await checkRestored(making, shares, opts, terminal !== undefined);
    mark("restore: verified");
    for (const m of making) {
      const lost = stopWouldBeLost(m.entry, m.pid);
      if (lost) throw new RestoreError(`cannot restore: ${lost}`);
    }
    // Armed last, once nothing of the restore touches memory: the server takes over from here.
    for (const m of lazy) armLazyPages(m.pid, m.lazy!.uffd!, m.lazy!.plan);
    mark("restore: armed");
    if (served) {
      await served;
      await server!.go(opts.late !== undefined);
      mark("restore: page server serves");
    }
    for (const m of making) unmapScratch(m);
    // Its work is done (every fd table is made): the init lets go of the tool and runs alone.
    shares.namespace?.release();

    stage("resume", entries[0]);
    cgroups.freezeAgain(); // a group frozen at the dump: its processes stay frozen once let go
    if (terminal) {
      const tty = entries[0].tty;
      job = new ShellJob(making[0].pid, terminal, tty?.foreground ?? false, tty?.modes?.raw);
      job.takeTerminal(); // before it runs: its first read must not stop it (SIGTTIN)
    }
    // Children first; one stopped by job control has stopped before its parent runs.
    for (const m of [...making].reverse()) {
      resume(m);
      await awaitStop(m.entry, m.pid);
    }
    job?.started();
    mark("restore: resumed");
    for (const m of making) {
      if (m.lazy?.uffd !== undefined) close(m.lazy.uffd);
    }
    server?.release();
    // The processes run now: an image that cannot be removed is said, never their failure.
    if (opts.discardImage && !server) {
      try {
        Deno.removeSync(dir, { recursive: true });
      } catch (err) {
        warnings.push(`the image ${dir} could not be removed: ${(err as Error).message}`);
      }
    }
    return {
      pid: making[0].pid,
      namespacePid: entries[0].pid,
      processes: making.map((m) => m.pid),
      pidMap: shares.pids.toMap(),
      ...(shares.namespace ? { namespaceInit: shares.namespace.init } : {}),
      threads: entries.reduce((n, p) => n + p.threads.length, 0),
      pageBytes,
      warnings,
      differences,
      ...(job ? { job } : {}),
      ...(server ? { lazy: { server: server.pid, log, bytes: lazyBytes } } : {}),
    };
  } catch (err) {
    job?.giveBackTerminal();
    abortScope(shares.scope);
    cgroups.thawToEnd();
    // Every thread made, also one cloned but not yet recorded: each is our tracee and stays a
    // zombie until we wait for it, and a leader cannot be reaped before its threads.
    const threadsOf = new Map(making.map((m) => [m.pid, threadIds(m.pid)]));
    const tids = new Set([...made, ...[...threadsOf.values()].flat()]);
    for (const pid of [...made].reverse()) {
      try {
        kill(pid, SIG.SIGKILL);
      } catch { /* gone */ }
    }
    stub.end();
    for (const m of making) {
      m.files?.close();
      m.asb?.abort();
      m.mem.close();
      if (m.lazy?.uffd !== undefined) close(m.lazy.uffd);
    }
    server?.abort();
    // Threads of no process first, then each process, children first, its threads before it: a
    // container's init (the root) ends only once every other process of its namespace is reaped,
    // and the last of its threads to go waits for that.
    const known = new Set([...threadsOf.values()].flat());
    for (const tid of tids) if (!known.has(tid)) reap(tid);
    for (const m of [...making].reverse()) {
      for (const tid of threadsOf.get(m.pid)!) if (tid !== m.pid) reap(tid);
      reap(m.pid);
    }
    // A child its tracer (us) reaped before its parent died stays a zombie of that parent, then of
    // whoever adopts it: of us, when we are a subreaper (as a test or a script may be).
    for (const pid of made) {
      try {
        waitpid(pid, WAIT.WNOHANG);
      } catch { /* not ours */ }
    }
    // Last: a namespace's init finishes exiting only once every other process in it is reaped.
    await shares.namespace?.abort();
    cgroups.abort(); // once every process it put in them is gone
    throw err;
  }
}
