/**
 * Job control for `restore --shell-job`: waiting for the restored job like a shell's `fg`,
 * stopping along with it, and giving the terminal back when it ends. Handing the terminal over
 * is the SDK's part (`ShellJob`).
 */
import { processes, type ShellJob } from "../mod.ts";

/** How a shell job ended. */
export interface ShellJobEnd {
  /** Its exit code, or null when a signal ended it. */
  exitCode: number | null;
  /** The signal that ended it, or null. */
  signal: number | null;
  /** What a shell's `$?` would be: the exit code, or 128 + the signal. */
  status: number;
}

/** A stop of the job while `waitLikeFg` waits (^Z, SIGSTOP, reading the terminal in the background). */
export interface ShellJobStop {
  /** The signal that stopped it. */
  signal: number;
  /**
   * True when the tool stops too, with the same signal, so that the shell it runs in sees its
   * job stopped (`fg` and `bg` then continue both); false when no shell above the tool has job
   * control, and the tool waits on (`kill -CONT PID` continues the job).
   */
  withTool: boolean;
}

const POLL_MS = 20;

/** Stop signals by number: the tool stops itself with the job's. */
const STOPS: Record<number, Deno.Signal> = {
  19: "SIGTSTP", // SIGSTOP cannot be sent to oneself with a handler; ^Z's signal does the same
  20: "SIGTSTP",
  21: "SIGTTIN",
  22: "SIGTTOU",
};

/** Whether process group `pgrp` is orphaned: no member has a parent in another group of its
 * session, so no shell would continue it (and the kernel ignores ^Z in it). */
async function groupOrphaned(pgrp: number): Promise<boolean> {
  const stats = new Map<number, { pgrp: number; session: number; ppid: number }>();
  for await (const p of processes()) {
    try {
      stats.set(p.pid, await p.stat());
    } catch { /* exited meanwhile */ }
  }
  for (const member of stats.values()) {
    if (member.pgrp !== pgrp) continue;
    const parent = stats.get(member.ppid);
    if (parent && parent.pgrp !== pgrp && parent.session === member.session) return false;
  }
  return true;
}

/**
 * Waits until the job exits, like a shell's `fg`, and takes the terminal back. While the job
 * runs, the tool stands in for it: whenever the tool's group has the terminal (from the start,
 * or after the shell's `fg`), the job gets it. When the job stops, the tool takes the terminal
 * back and, if a shell with job control runs the tool, stops with the same signal, as `sudo`
 * does: the shell shows it stopped, `fg` continues both with the terminal, `bg` without. The
 * tool does not exit then: the kernel kills (SIGHUP) a stopped job whose process group its
 * parent's exit orphans. `onStop` is told of each stop first.
 */
export async function waitLikeFg(
  job: ShellJob,
  onStop?: (stop: ShellJobStop) => void,
): Promise<ShellJobEnd> {
  let stopped = false;
  for (;;) {
    let st;
    try {
      st = job.poll();
    } catch (err) {
      job.giveBackTerminal();
      throw err;
    }
    switch (st.state) {
      case "running":
      case "continued":
        if (st.state === "continued") stopped = false; // continued from elsewhere (kill -CONT)
        if (!stopped) job.give();
        if (st.state === "running") await new Promise((r) => setTimeout(r, POLL_MS));
        break;
      case "stopped":
        stopped = !await jobStopped(job, st.signal, onStop);
        break;
      case "exited":
        job.giveBackTerminal();
        return { exitCode: st.exitCode, signal: null, status: st.exitCode };
      case "killed":
        job.giveBackTerminal();
        return { exitCode: null, signal: st.signal, status: 128 + st.signal };
    }
  }
}

/** The job stopped: true once it is continued, false while it stays stopped. */
async function jobStopped(
  job: ShellJob,
  signal: number,
  onStop?: (stop: ShellJobStop) => void,
): Promise<boolean> {
  const ttyStop = STOPS[signal] === "SIGTTIN" || STOPS[signal] === "SIGTTOU";
  if (ttyStop && job.toolHasTerminal()) {
    // It used the terminal a moment before the tool passed it on (just after `fg`).
    job.give();
    job.continue();
    return true;
  }
  job.giveBackTerminal();
  const withTool = !await groupOrphaned(job.terminal.pgrp);
  onStop?.({ signal, withTool });
  if (!withTool) return false; // the job waits for a SIGCONT from elsewhere
  // Returns once the shell continues the tool: the stop is taken on the way out of kill.
  Deno.kill(Deno.pid, STOPS[signal] ?? "SIGTSTP");
  job.give(); // `fg` gave the tool the terminal; `bg` did not
  job.continue();
  return true;
}
