/**
 * A process stopped by job control (SIGSTOP, or ^Z's SIGTSTP, SIGTTIN, SIGTTOU) when it was
 * dumped. Its parent's wait reports the stop with that signal (a shell prints it and decides by it
 * how to resume the job), so the restore stops it again with the same signal: queued while every
 * thread is still held, taken on the way out. The restore waits until the stop has happened before
 * it lets the parent run (or returns): a parent must never see its stopped child running.
 *
 * The kernel does not stop a process for SIGTSTP, SIGTTIN or SIGTTOU when its process group is
 * orphaned (no member has a parent in another group of the same session), when the signal is
 * blocked or when it has a handler: it would run instead. Such a restore is refused.
 */
import { kill, SIG, SIG_DISPOSITION, sigBit, signalName } from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { readProcText, threadIds, tryReadStat } from "../inspect/procfs.ts";

/** How long a restored process may take to stop again (it must be scheduled: a busy machine). */
const STOP_TIMEOUT_MS = 5000;

/** The signal that stopped a dumped process (SIGSTOP for images that do not say). */
function stopSignalOf(entry: ProcessEntry): number {
  return entry.stopSignal ?? SIG.SIGSTOP;
}

/**
 * Whether process group `pgid` is orphaned, as the kernel decides it: none of its live members
 * has a parent (other than init) in another group of the same session.
 */
function orphanedGroup(pgid: number): boolean {
  for (const e of Deno.readDirSync("/proc")) {
    const pid = Number(e.name);
    if (!(pid > 0)) continue;
    const st = tryReadStat(pid);
    if (!st || st.pgrp !== pgid || st.state === "Z" || st.ppid <= 1) continue;
    const parent = tryReadStat(st.ppid);
    if (parent && parent.pgrp !== pgid && parent.session === st.session) return false;
  }
  return true;
}

/**
 * Why the restored process `pid` (the tool's pid for it) would not stop again with its dumped stop
 * signal, or undefined when it will. Ask once its tree is made, before it runs.
 */
export function stopWouldBeLost(entry: ProcessEntry, pid: number): string | undefined {
  const signo = stopSignalOf(entry);
  if (!entry.stopped || signo === SIG.SIGSTOP) return undefined;
  const what = `process ${entry.pid} was stopped by ${signalName(signo)}`;
  const action = entry.sigactions.find((s) => s.signo === signo);
  if (action && action.handler !== SIG_DISPOSITION.DFL) {
    return `${what}, which it now handles or ignores: it would not stop again`;
  }
  if (entry.threads.every((t) => (t.sigmask & sigBit(signo)) !== 0n)) {
    return `${what}, which all its threads block: it would not stop again`;
  }
  const pgid = tryReadStat(pid)?.pgrp;
  if (pgid !== undefined && orphanedGroup(pgid)) {
    return `${what}, and restored here its process group ${pgid} has no member with a parent ` +
      `in another group of its session (an orphaned group): the kernel drops that signal, and ` +
      `it would run instead of staying stopped (a job stopped with ^Z comes back stopped as a ` +
      `job of the restoring shell with --shell-job)`;
  }
  return undefined;
}

/** Queues the signal that stops the restored process `pid` again (its threads still held). */
export function restoreStop(entry: ProcessEntry, pid: number): void {
  if (entry.stopped) kill(pid, stopSignalOf(entry));
}

/** The state letter of thread `tid` of `pid` ("" once it is gone). */
function threadState(pid: number, tid: number): string {
  try {
    return readProcText(pid, `task/${tid}/stat`).replace(/^.*\) /s, "")[0];
  } catch {
    return "";
  }
}

/**
 * Waits until the restored process `pid`, once let go, has stopped again (every thread in
 * group stop, so its parent's wait reports it); throws when it does not.
 */
export async function awaitStop(entry: ProcessEntry, pid: number): Promise<void> {
  if (!entry.stopped) return;
  const deadline = Date.now() + STOP_TIMEOUT_MS;
  for (;;) {
    const states = threadIds(pid).map((tid) => threadState(pid, tid));
    // A thread that has exited (a leader waiting for the others: Z) takes no part in the stop.
    if (states.includes("T") && states.every((s) => s === "T" || s === "Z")) return;
    if (Date.now() > deadline || states.length === 0) {
      throw new RestoreError(
        `process ${entry.pid} was stopped by ${signalName(stopSignalOf(entry))} and did not ` +
          `stop again (threads ${states.join("") || "gone"})`,
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
}
