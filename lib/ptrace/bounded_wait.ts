/**
 * Waits for a tracee's stop with a time limit. A thread asleep in the kernel where signals do
 * not reach it (a vfork parent waiting for its child, uninterruptible I/O) takes its ptrace
 * interrupt only when it wakes, which may be never: a freeze must not hang on it, and must not
 * leave it stopped for ever once it wakes either.
 */
import { detach, SyscallError, WAIT, waitpid, type WaitStatus } from "../../ffi/mod.ts";
import { readProcText } from "../inspect/procfs.ts";

/**
 * Sleeps the tool's thread for `ms`, which may be a fraction of a millisecond: for the short
 * waits of synchronous code (a tracee's stop, a pid or a device being freed).
 */
export function pauseThread(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/**
 * The next state change of tracee `tid`, or null when none came within `ms`. Polls with a
 * pause that grows from 20 µs, so a thread that stops at once costs no more than a blocking wait.
 */
export function waitWithin(tid: number, ms: number): WaitStatus | null {
  const deadline = performance.now() + ms;
  for (let nap = 0.02;; nap = Math.min(nap * 2, 5)) {
    const st = waitpid(tid, WAIT.WNOHANG);
    if (st) return st;
    const left = deadline - performance.now();
    if (left <= 0) return null;
    pauseThread(Math.min(nap, left));
  }
}

/** Where thread `tid` of `pid` sleeps, in the user's terms, for an error message. */
export function whereItWaits(pid: number, tid: number): string {
  let state = "?", wchan = "";
  try {
    const stat = readProcText(pid, `task/${tid}/stat`);
    state = stat.slice(stat.lastIndexOf(")") + 2).split(" ")[0];
    wchan = readProcText(pid, `task/${tid}/wchan`).trim();
  } catch { /* gone meanwhile */ }
  const vfork = wchan === "kernel_clone" && state === "D"
    ? "; it is in vfork(), waiting for its child to exec or exit: dump again once it has"
    : "";
  return `it sleeps in the kernel where no signal reaches it (state ${state}` +
    `${wchan && wchan !== "0" ? `, in ${wchan}` : ""})${vfork}`;
}

/** Threads seized and interrupted that had not stopped when their freeze gave up. */
const late = new Set<number>();
let poller: ReturnType<typeof setInterval> | undefined;

/**
 * Lets `tid` go as soon as it stops: it was seized and interrupted, so on waking it would enter
 * a ptrace stop and wait there for as long as the tool runs (were the tool to exit first, the
 * kernel detaches it). A signal it stopped to take is handed back by the detach.
 */
export function releaseWhenStopped(tid: number): void {
  late.add(tid);
  if (poller !== undefined) return;
  poller = setInterval(() => {
    for (const t of late) {
      try {
        const st = waitpid(t, WAIT.WNOHANG);
        if (!st) continue;
        if (!st.exited && !st.signaled) detach(t, st.event === 0 ? st.stopSignal ?? 0 : 0);
      } catch (err) {
        if (!(err instanceof SyscallError)) throw err;
      }
      late.delete(t);
    }
    if (late.size === 0) {
      clearInterval(poller);
      poller = undefined;
    }
  }, 10);
  Deno.unrefTimer(poller);
}
