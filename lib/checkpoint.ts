/**
 * Checkpoint: freeze a process, write everything needed to bring it back into an image, then end
 * it (its life now lives in the image) or let it run on. Any failure removes the partial image
 * and leaves the target running as it was, detached.
 */
import { close, pidfdOpen } from "../ffi/mod.ts";
import { DumpError, explain, NoSuchProcess } from "./errors.ts";
import type { Fd } from "./fds.ts";
import type { FileDumpContext } from "./files/types.ts";
import { freeze, onInterrupt } from "./freeze.ts";
import { ImageWriter } from "./image/mod.ts";
import { listMappings } from "./mappings.ts";
import { dumpFdTable } from "./parts/fdtable.ts";
import { dumpMemory, MemoryObjects } from "./parts/memory_dump.ts";
import { PageCollector } from "./parts/page_collector.ts";
import { dumpPosixTimers } from "./parts/posix_timers.ts";
import { dumpTask } from "./parts/task.ts";
import { dumpThread } from "./parts/threads.ts";
import type { MappingDecision, Policy } from "./policy.ts";
import { Process } from "./process.ts";
import { PROCESS_META, type ProcessEntry } from "./schema.ts";

/** Options of `checkpoint`. */
export interface CheckpointOptions {
  /** Directory to write the image to (must not exist, or be empty). */
  dir: string;
  /** Let the process run on after the dump instead of ending it. */
  leaveRunning?: boolean;
  /** Hooks that decide what is dumped. */
  policy?: Policy;
  /** Called as page data is written. */
  onProgress?: (bytes: number) => void;
}

/** What a checkpoint wrote. */
export interface CheckpointResult {
  /** The image directory. */
  dir: string;
  /** The process dumped. */
  pid: number;
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
}

/** Whether `pid` exists and is neither a zombie nor dead. */
function isRunning(pid: number): boolean {
  try {
    const stat = Deno.readTextFileSync(`/proc/${pid}/stat`);
    return !"ZX".includes(stat.slice(stat.lastIndexOf(")") + 2)[0]);
  } catch {
    return false;
  }
}

/** Waits until `pid` is gone or a zombie. */
async function waitGone(pid: number, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    try {
      const stat = await Deno.readTextFile(`/proc/${pid}/stat`);
      if (stat.slice(stat.lastIndexOf(")") + 2)[0] === "Z") return;
    } catch {
      return;
    }
    await new Promise((r) => setTimeout(r, 5));
  }
}

/**
 * Dumps process `pid` into an image directory. By default the process is ended once the image
 * is complete; with `leaveRunning` it runs on unharmed.
 */
export async function checkpoint(pid: number, opts: CheckpointOptions): Promise<CheckpointResult> {
  const policy = opts.policy ?? {};
  const proc = await Process.open(pid);
  await policy.beforeFreeze?.(proc);
  await using writer = await ImageWriter.create(opts.dir);
  // SIGINT or SIGTERM while frozen releases the process and ends the tool: no partial image then.
  const unhook = onInterrupt(() => void writer.abort().catch(() => {}));
  let pidfd = -1;
  try {
    pidfd = pidfdOpen(pid);
  } catch (err) {
    throw explain(err, pid, "pidfd");
  }
  let killed = false;
  const started = performance.now();
  let frozenMs = 0;
  let result: CheckpointResult;
  try {
    await using frozen = await freeze(pid);
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

    const pages = new PageCollector(writer.pages(), undefined, opts.onProgress);
    const objects = new MemoryObjects(pages);
    const fdCtx: FileDumpContext = {
      pid,
      frozen,
      pidfd,
      storeObject: (fd: Fd) =>
        objects.storeFile(
          `file:${fd.dev}:${fd.inode}`,
          fd.kind === "memfd" ? "memfd" : "deleted-file",
          fd.target.replace(/^\/memfd:/, "").replace(/ \(deleted\)$/, ""),
          `/proc/${pid}/fd/${fd.fd}`,
        ),
    };
    const { files, fds } = await dumpFdTable(fdCtx, policy);
    // Nothing below runs syscalls in the process: unmap the scratch page now, so that should the
    // tool be killed during the long copy, the process runs on without a page of ours.
    inj.release();
    const memory = await dumpMemory(
      pid,
      layout,
      (m) => decisions.get(m.start) ?? "dump",
      pages,
      objects,
    );
    pages.flush();

    const entry: ProcessEntry = {
      ...task,
      posixTimers,
      threads,
      mappings: memory.mappings,
      special: memory.special,
      objects: objects.entries,
      files,
      fds,
      extents: pages.extents,
    };
    await writer.writeMeta(PROCESS_META, entry);
    if (opts.leaveRunning) {
      // Everything is captured: let it run while the image is checked and made durable.
      await frozen.release();
      frozenMs = performance.now() - started;
    }
    await policy.afterDump?.({ dir: opts.dir, process: entry, pageBytes: pages.bytes });
    await writer.commit();
    if (!opts.leaveRunning) {
      // End it while still frozen (only once the image is safe), so it cannot run a single
      // instruction past the image.
      frozen.kill();
      killed = true;
      frozenMs = performance.now() - started;
    }
    result = {
      dir: opts.dir,
      pid,
      threads: threads.length,
      mappings: memory.mappings.length,
      fds: fds.length,
      pageBytes: pages.bytes,
      frozenMs,
      killed,
    };
  } catch (err) {
    if (err instanceof NoSuchProcess || err instanceof DumpError) throw err;
    // Whatever failed first (pagemap, /proc/PID/mem, an fd), the reason is that it ended.
    if (!killed && !isRunning(pid)) {
      throw new NoSuchProcess(pid, "it ended during the dump", { cause: err });
    }
    throw explain(err, pid, "state");
  } finally {
    unhook();
    close(pidfd);
  }
  if (killed) await waitGone(pid);
  return result;
}
