/**
 * Shell jobs (CRIU's `--shell-job`): a program run from an interactive shell comes back on the
 * terminal of the tool that restores it. The dump records its controlling terminal
 * (lib/task/terminal.ts). The restore opens its descriptors on that terminal on the tool's own
 * instead, keeps it in the tool's session as the leader of its own process group, and, when it
 * was the foreground job, hands it the terminal with the modes it had. Waiting for it like a
 * shell's `fg` (stops, continues) is the CLI's part (cli/job_control.ts), built on `ShellJob`.
 */
import {
  Errno,
  fstat,
  isChildSubreaper,
  kill,
  setChildSubreaper,
  SIG,
  SyscallError,
  tcgetpgrp,
  tcsetattr,
  tcsetpgrp,
  TERMIOS_SIZE,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { ProcessEntry } from "../image/schema.ts";
import { tryReadStat } from "../inspect/procfs.ts";
import type { Injector } from "../ptrace/inject.ts";
import { onControllingTerminal, readModes, sameDevice } from "../task/terminal.ts";

/** What became of a shell job since it was last asked (`ShellJob.poll`). */
export type ShellJobStatus =
  | { state: "running" }
  | { state: "continued" }
  | { state: "stopped"; signal: number }
  | { state: "exited"; exitCode: number }
  | { state: "killed"; signal: number };

/** What waitpid reports for a child continued by SIGCONT (WIFCONTINUED). */
const CONTINUED_STATUS = 0xffff;

/** The terminal of the restoring tool: its stdin, which must be its controlling terminal. */
export interface ToolTerminal {
  /** The descriptor the tool talks to the terminal through (its stdin). */
  fd: number;
  /** Its path, `/dev/pts/N`. */
  path: string;
  /** Its device number. */
  rdev: bigint;
  /** The tool's own process group, to give the terminal back to. */
  pgrp: number;
}

const STDIN = 0;

/** The terminal's foreground process group, or null when it cannot be read (hung up). */
export function foregroundGroup(fd: number): number | null {
  try {
    return tcgetpgrp(fd);
  } catch {
    return null;
  }
}

/**
 * Sets the terminal's modes. Failures are ignored, as a shell ignores them: a terminal hung up
 * meanwhile has no modes to keep, and the job or the tool runs on either way.
 */
function setModes(fd: number, raw: Uint8Array): void {
  if (raw.length !== TERMIOS_SIZE) return;
  try {
    tcsetattr(fd, raw);
  } catch { /* hung up */ }
}

/**
 * The tool's own terminal, checked before anything is made: stdin must be a terminal, the tool's
 * controlling one, and the tool its foreground job (else it could not hand the terminal on).
 */
export function toolTerminal(): ToolTerminal {
  const fd = STDIN;
  let path = "";
  try {
    path = Deno.readLinkSync(`/proc/self/fd/${fd}`);
  } catch { /* no stdin at all */ }
  if (!path || !Deno.stdin.isTerminal()) {
    throw new RestoreError("--shell-job needs a terminal: run restore from one");
  }
  const rdev = fstat(fd).rdev;
  const self = tryReadStat(Deno.pid)!;
  if (!sameDevice(rdev, self.ttyNr)) {
    throw new RestoreError(
      `--shell-job needs a terminal: run restore from one (stdin ${path} is not the ` +
        `controlling terminal of tardigrade)`,
    );
  }
  if (foregroundGroup(fd) !== self.pgrp) {
    throw new RestoreError(
      `--shell-job: tardigrade is not the foreground job of ${path}; run restore in the foreground`,
    );
  }
  return { fd, path, rdev, pgrp: self.pgrp };
}

/**
 * Points every descriptor that was open on a process's controlling terminal at the tool's
 * terminal instead: the old one may be gone, and the process will live on this one.
 */
export function moveToTerminal(entries: ProcessEntry[], terminal: ToolTerminal): void {
  for (const p of entries) {
    p.files = p.files.map((f) =>
      onControllingTerminal(p, f) ? { ...f, path: terminal.path, rdev: terminal.rdev } : f
    );
  }
}

/**
 * The root of a shell job, just forked: it stays in the tool's session (which has the terminal)
 * even if it led its own, and leads a process group of its own, as a shell makes each job.
 */
export function joinAsJob(inj: Injector): void {
  inj.call("setpgid", 0, 0);
}

/**
 * Makes this process a child subreaper until the returned function runs: the job's root, forked
 * by the stub, becomes the tool's child when the stub ends, so the tool can wait for it (its exit
 * status, its stops) as a shell waits for its jobs.
 */
export function adoptOrphans(): () => void {
  const was = isChildSubreaper();
  setChildSubreaper(true);
  return () => setChildSubreaper(was);
}

/**
 * A restored process brought back as a job of the tool's terminal. It is the tool's child and
 * leads its own process group, which has the terminal when `foreground`. Whenever it gets the
 * terminal, the terminal gets the job's modes, and the tool's come back when the tool takes it
 * back (the job ends or stops), as a shell keeps them for its jobs.
 */
export class ShellJob {
  /** Its process group (it leads it). */
  readonly pgid: number;
  /** The job's modes for its next turn: the dumped ones, then those it had when it stopped. */
  #jobModes: Uint8Array | null;
  /** The tool's modes while the job's are set, to put back; null while the tool's are set. */
  #toolModes: Uint8Array | null = null;

  /**
   * `pid` is the restored process, `terminal` the tool's, `foreground` whether it was the
   * terminal's foreground job when dumped (it gets the terminal then), `modes` its terminal's
   * modes when dumped (`TerminalModes.raw`; without them the terminal keeps the tool's).
   */
  constructor(
    readonly pid: number,
    readonly terminal: ToolTerminal,
    readonly foreground: boolean,
    modes?: Uint8Array,
  ) {
    this.pgid = pid;
    this.#jobModes = modes ?? null;
  }

  /** Hands the terminal to the job (before it runs), when it was the foreground job. */
  takeTerminal(): void {
    if (!this.foreground) return;
    this.#setJobModes();
    tcsetpgrp(this.terminal.fd, this.pgid);
  }

  /** Just before the job gets the terminal: keep the tool's modes, set the job's. */
  #setJobModes(): void {
    const fd = this.terminal.fd;
    this.#toolModes ??= readModes(fd);
    if (this.#jobModes && this.#toolModes) setModes(fd, this.#jobModes);
  }

  /** After it runs: a full-screen program redraws for this terminal's size. */
  started(): void {
    try {
      kill(-this.pgid, SIG.SIGWINCH);
    } catch { /* already gone */ }
  }

  /** Whether the job's group has the terminal. */
  hasTerminal(): boolean {
    return foregroundGroup(this.terminal.fd) === this.pgid;
  }

  /** Whether the tool's group has the terminal (it can hand it to the job). */
  toolHasTerminal(): boolean {
    return foregroundGroup(this.terminal.fd) === this.terminal.pgrp;
  }

  /**
   * Takes the terminal back for the tool, if the job has it, keeping the job's modes for its next
   * turn; then the tool's modes are set again.
   */
  giveBackTerminal(): void {
    const fd = this.terminal.fd;
    if (this.hasTerminal()) {
      this.#jobModes = readModes(fd) ?? this.#jobModes;
      try {
        tcsetpgrp(fd, this.terminal.pgrp);
      } catch { /* hung up */ }
    }
    if (this.#toolModes) setModes(fd, this.#toolModes);
    this.#toolModes = null;
  }

  /** Gives the terminal to the job, with its modes, if the tool's group has it. */
  give(): void {
    if (!this.toolHasTerminal()) return;
    this.#setJobModes();
    try {
      tcsetpgrp(this.terminal.fd, this.pgid);
    } catch { /* hung up */ }
  }

  /**
   * What became of the job since the last call (waitpid with WNOHANG, WUNTRACED, WCONTINUED: it
   * is the tool's child). Throws a `RestoreError` when another process reaped it.
   */
  poll(): ShellJobStatus {
    let st;
    try {
      st = waitpid(this.pid, WAIT.WNOHANG | WAIT.WUNTRACED | WAIT.WCONTINUED);
    } catch (err) {
      if (err instanceof SyscallError && err.errno === Errno.ECHILD) {
        throw new RestoreError(`shell job ${this.pid} was reaped by another process`);
      }
      throw err;
    }
    if (!st) return { state: "running" };
    if (st.raw === CONTINUED_STATUS) return { state: "continued" };
    if (st.stopped) return { state: "stopped", signal: st.stopSignal ?? SIG.SIGTSTP };
    if (st.signaled) return { state: "killed", signal: st.termSignal! };
    return { state: "exited", exitCode: st.exitCode! };
  }

  /** Continues the job's process group (SIGCONT). */
  continue(): void {
    try {
      kill(-this.pgid, SIG.SIGCONT);
    } catch { /* it ended meanwhile: the next wait says so */ }
  }
}
