/**
 * Shell jobs (CRIU's `--shell-job`): a program run from an interactive shell comes back on the
 * terminal of the tool that restores it. The dump records its controlling terminal and whether it
 * was the terminal's foreground job. The restore opens its descriptors on that terminal on the
 * tool's own instead, keeps it in the tool's session as the leader of its own process group, and
 * makes that group the terminal's foreground; `ShellJob.wait` is then the shell's `fg`.
 */
import {
  addressOf,
  Errno,
  fstat,
  ioctl,
  kill,
  libc,
  SIG,
  syscall,
  SyscallError,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { DeviceEntry } from "../files/device.ts";
import type { Injector } from "../inject.ts";
import { parseStat, type ProcStat } from "../process.ts";
import type { FileEntry, ProcessEntry, TerminalEntry } from "../schema.ts";

const TIOCGPGRP = 0x540fn;
const TIOCSPGRP = 0x5410n;
/** makedev(5, 0): /dev/tty, "my controlling terminal". */
const DEV_TTY = 0x500n;
const PR_SET_CHILD_SUBREAPER = 36;
const PR_GET_CHILD_SUBREAPER = 37;
/** What waitpid reports for a child continued by SIGCONT (WIFCONTINUED). */
const CONTINUED_STATUS = 0xffff;
const POLL_MS = 20;
const SIG_BLOCK = 0;
const SIG_SETMASK = 2;
const STDIN = 0;

/**
 * Whether two device numbers name the same device. `tty_nr` (the kernel's new_encode_dev) and
 * `st_rdev` (glibc's makedev) encode major and minor the same way below 2^32, where ttys are.
 */
function sameDevice(a: bigint | number, b: bigint | number): boolean {
  return BigInt(a) === BigInt(b);
}

function isTtyFile(f: FileEntry): f is DeviceEntry {
  return f.kind === "device" && (f as DeviceEntry).tty;
}

/** Dump side: the controlling terminal of a frozen process, or undefined when it has none. */
export function dumpTerminal(stat: ProcStat, files: FileEntry[]): TerminalEntry | undefined {
  if (stat.ttyNr === 0) return undefined;
  const open = files.find((f) => isTtyFile(f) && sameDevice(f.rdev, stat.ttyNr)) as
    | DeviceEntry
    | undefined;
  return {
    dev: stat.ttyNr,
    path: open?.path ?? null,
    foreground: stat.tpgid > 0 && stat.tpgid === stat.pgrp,
  };
}

/** Whether `f` is open on the controlling terminal of process `p` (by its device or /dev/tty). */
export function onControllingTerminal(p: ProcessEntry, f: FileEntry): boolean {
  if (!isTtyFile(f) || !p.tty) return false;
  return sameDevice(f.rdev, p.tty.dev) || f.rdev === DEV_TTY || f.path === "/dev/tty";
}

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

function selfStat(): ProcStat {
  return parseStat(Deno.readTextFileSync("/proc/self/stat"));
}

/** The terminal's foreground process group, or null when it cannot be read (hung up). */
function foregroundGroup(fd: number): number | null {
  const pgrp = new Int32Array(1);
  try {
    ioctl(fd, TIOCGPGRP, new Uint8Array(pgrp.buffer), "ioctl(TIOCGPGRP)");
    return pgrp[0];
  } catch {
    return null;
  }
}

/**
 * tcsetpgrp. SIGTTOU is blocked meanwhile: a process group that is not in the foreground (the
 * tool, once the job has the terminal) would otherwise be stopped for taking it back.
 */
function setForegroundGroup(fd: number, pgrp: number): void {
  const ttou = new BigUint64Array([1n << BigInt(SIG.SIGTTOU - 1)]);
  const old = new BigUint64Array(1);
  syscall("rt_sigprocmask", SIG_BLOCK, addressOf(ttou), addressOf(old), 8);
  try {
    ioctl(fd, TIOCSPGRP, new Uint8Array(new Int32Array([pgrp]).buffer), "ioctl(TIOCSPGRP)");
  } finally {
    syscall("rt_sigprocmask", SIG_SETMASK, addressOf(old), 0, 8);
  }
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
  const self = selfStat();
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
  const was = new Int32Array(1);
  libc.prctl(PR_GET_CHILD_SUBREAPER, addressOf(was), 0n, 0n, 0n);
  libc.prctl(PR_SET_CHILD_SUBREAPER, 1n, 0n, 0n, 0n);
  return () => void libc.prctl(PR_SET_CHILD_SUBREAPER, BigInt(was[0]), 0n, 0n, 0n);
}

/** How a shell job ended. */
export interface ShellJobEnd {
  /** Its exit code, or null when a signal ended it. */
  exitCode: number | null;
  /** The signal that ended it, or null. */
  signal: number | null;
  /** What a shell's `$?` would be: the exit code, or 128 + the signal. */
  status: number;
}

/** A stop of the job while `wait` waits (^Z, SIGSTOP, reading the terminal in the background). */
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

/** Whether process group `pgrp` is orphaned: no member has a parent in another group of its
 * session, so no shell would continue it (and the kernel ignores ^Z in it). */
function groupOrphaned(pgrp: number): boolean {
  const stat = (pid: number | string): ProcStat | null => {
    try {
      return parseStat(Deno.readTextFileSync(`/proc/${pid}/stat`));
    } catch {
      return null;
    }
  };
  for (const e of Deno.readDirSync("/proc")) {
    if (!/^\d+$/.test(e.name)) continue;
    const member = stat(e.name);
    if (!member || member.pgrp !== pgrp) continue;
    const parent = stat(member.ppid);
    if (parent && parent.pgrp !== pgrp && parent.session === member.session) return false;
  }
  return true;
}

/**
 * A restored process brought back as a job of the tool's terminal. It is the tool's child and
 * leads its own process group, which has the terminal when `foreground`.
 */
export class ShellJob {
  /** Its process group (it leads it). */
  readonly pgid: number;

  /**
   * `pid` is the restored process, `terminal` the tool's, `foreground` whether it was the
   * terminal's foreground job when dumped (it gets the terminal then).
   */
  constructor(
    readonly pid: number,
    readonly terminal: ToolTerminal,
    readonly foreground: boolean,
  ) {
    this.pgid = pid;
  }

  /** Hands the terminal to the job (before it runs), when it was the foreground job. */
  takeTerminal(): void {
    if (this.foreground) setForegroundGroup(this.terminal.fd, this.pgid);
  }

  /** After it runs: a full-screen program redraws for this terminal's size. */
  started(): void {
    try {
      kill(-this.pgid, SIG.SIGWINCH);
    } catch { /* already gone */ }
  }

  /** Takes the terminal back for the tool, if the job has it. */
  giveBackTerminal(): void {
    this.#move(this.pgid, this.terminal.pgrp);
  }

  /** Moves the terminal's foreground from group `from` to `to`, if `from` has it. */
  #move(from: number, to: number): void {
    if (foregroundGroup(this.terminal.fd) !== from) return;
    try {
      setForegroundGroup(this.terminal.fd, to);
    } catch { /* hung up */ }
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
  async wait(onStop?: (stop: ShellJobStop) => void): Promise<ShellJobEnd> {
    let stopped = false;
    for (;;) {
      let st;
      try {
        st = waitpid(this.pid, WAIT.WNOHANG | WAIT.WUNTRACED | WAIT.WCONTINUED);
      } catch (err) {
        if (err instanceof SyscallError && err.errno === Errno.ECHILD) {
          this.giveBackTerminal();
          throw new RestoreError(`shell job ${this.pid} was reaped by another process`);
        }
        throw err;
      }
      if (!st || st.raw === CONTINUED_STATUS) {
        if (st) stopped = false; // continued from elsewhere (kill -CONT)
        if (!stopped) this.#move(this.terminal.pgrp, this.pgid);
        if (!st) await new Promise((r) => setTimeout(r, POLL_MS));
      } else if (st.stopped) {
        stopped = !this.#stopped(st.stopSignal ?? SIG.SIGTSTP, onStop);
      } else {
        this.giveBackTerminal();
        const signal = st.signaled ? st.termSignal! : null;
        const exitCode = st.exited ? st.exitCode! : null;
        return { exitCode, signal, status: signal !== null ? 128 + signal : exitCode! };
      }
    }
  }

  /** The job stopped: returns true once it is continued, false while it stays stopped. */
  #stopped(signal: number, onStop?: (stop: ShellJobStop) => void): boolean {
    const ttyStop = signal === SIG.SIGTTIN || signal === SIG.SIGTTOU;
    if (ttyStop && foregroundGroup(this.terminal.fd) === this.terminal.pgrp) {
      // It used the terminal a moment before the tool passed it on (just after `fg`).
      this.#move(this.terminal.pgrp, this.pgid);
      this.#continue();
      return true;
    }
    this.giveBackTerminal();
    const withTool = !groupOrphaned(this.terminal.pgrp);
    onStop?.({ signal, withTool });
    if (!withTool) return false; // the job waits for a SIGCONT from elsewhere
    // Returns once the shell continues the tool: the stop is taken on the way out of kill.
    kill(Deno.pid, signal === SIG.SIGSTOP ? SIG.SIGTSTP : signal);
    this.#move(this.terminal.pgrp, this.pgid); // `fg` gave the tool the terminal; `bg` did not
    this.#continue();
    return true;
  }

  #continue(): void {
    try {
      kill(-this.pgid, SIG.SIGCONT);
    } catch { /* it ended meanwhile: the next wait says so */ }
  }
}
