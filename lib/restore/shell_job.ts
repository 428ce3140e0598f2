/**
 * Shell jobs (CRIU's `--shell-job`): a program run from an interactive shell comes back on the
 * terminal of the tool that restores it. The dump records its controlling terminal and whether it
 * was the terminal's foreground job. The restore opens its descriptors on that terminal on the
 * tool's own instead, keeps it in the tool's session as the leader of its own process group, and
 * makes that group the terminal's foreground; `ShellJob.wait` is then the shell's `fg`. As a shell
 * does around a foreground job, the terminal's modes (raw, no echo …) go with the job: the dumped
 * ones are set while it has the terminal, and the tool's are put back whenever it takes it back.
 */
import {
  addressOf,
  close,
  Errno,
  fstat,
  ioctl,
  kill,
  libc,
  O,
  open,
  SIG,
  syscall,
  SyscallError,
  WAIT,
  waitpid,
} from "../../ffi/mod.ts";
import { RestoreError } from "../errors.ts";
import type { DeviceEntry } from "../files/device.ts";
import type { Injector } from "../ptrace/inject.ts";
import { parseStat, type ProcStat } from "../inspect/process.ts";
import type {
  FileEntry,
  ProcessEntry,
  TerminalEntry,
  TerminalModes,
  WindowSize,
} from "../image/schema.ts";

const TCGETS = 0x5401n;
/** TCSETSW: set once the output written so far is sent, as a shell does (tcsetattr TCSADRAIN). */
const TCSETSW = 0x5403n;
const TIOCGWINSZ = 0x5413n;
const TIOCGPGRP = 0x540fn;
const TIOCSPGRP = 0x5410n;
/** sizeof(struct termios) as the kernel's TCGETS/TCSETS* take it on x86_64 (NCCS 19). */
const TERMIOS_SIZE = 36;
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

/** The terminal's modes (TCGETS), or null when they cannot be read (hung up, not a tty). */
function readModes(fd: number): Uint8Array | null {
  const raw = new Uint8Array(TERMIOS_SIZE);
  try {
    ioctl(fd, TCGETS, raw, "ioctl(TCGETS)");
    return raw;
  } catch {
    return null;
  }
}

/** Runs `fn` with SIGTTOU blocked: a group not in the terminal's foreground may then change it. */
function withoutTtou<T>(fn: () => T): T {
  const ttou = new BigUint64Array([1n << BigInt(SIG.SIGTTOU - 1)]);
  const old = new BigUint64Array(1);
  syscall("rt_sigprocmask", SIG_BLOCK, addressOf(ttou), addressOf(old), 8);
  try {
    return fn();
  } finally {
    syscall("rt_sigprocmask", SIG_SETMASK, addressOf(old), 0, 8);
  }
}

/**
 * Sets the terminal's modes (TCSETSW). Failures are ignored, as a shell ignores them: a terminal
 * hung up meanwhile has no modes to keep, and the job or the tool runs on either way.
 */
function setModes(fd: number, raw: Uint8Array): void {
  if (raw.length !== TERMIOS_SIZE) return;
  try {
    withoutTtou(() => ioctl(fd, TCSETSW, raw, "ioctl(TCSETSW)"));
  } catch { /* hung up */ }
}

/** `struct termios` decoded, for `inspect` and scripts; `raw` is what a restore sets. */
function decodeModes(raw: Uint8Array): TerminalModes {
  const dv = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  return {
    raw,
    iflag: dv.getUint32(0, true),
    oflag: dv.getUint32(4, true),
    cflag: dv.getUint32(8, true),
    lflag: dv.getUint32(12, true),
    line: raw[16],
    cc: [...raw.subarray(17, TERMIOS_SIZE)],
  };
}

function readWindowSize(fd: number): WindowSize | null {
  const ws = new Uint16Array(4);
  try {
    ioctl(fd, TIOCGWINSZ, new Uint8Array(ws.buffer), "ioctl(TIOCGWINSZ)");
  } catch {
    return null;
  }
  return { rows: ws[0], cols: ws[1], xpixel: ws[2], ypixel: ws[3] };
}

/**
 * The modes and window size of terminal `path`, only read: it is opened without becoming anyone's
 * controlling terminal and without waiting. Empty when it cannot be opened or is not terminal
 * `dev` any more (the name was reused).
 */
function terminalState(path: string, dev: number): Pick<TerminalEntry, "modes" | "winsize"> {
  let fd;
  try {
    fd = open(path, O.RDONLY | O.NOCTTY | O.NONBLOCK);
  } catch {
    return {};
  }
  try {
    if (!sameDevice(fstat(fd).rdev, dev)) return {};
    const raw = readModes(fd);
    const winsize = readWindowSize(fd);
    return { ...(raw ? { modes: decodeModes(raw) } : {}), ...(winsize ? { winsize } : {}) };
  } finally {
    close(fd);
  }
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
    // A raw-mode program (an editor, a pager) needs them back to read keys as it did.
    ...(open?.path ? terminalState(open.path, stat.ttyNr) : {}),
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
  withoutTtou(() =>
    ioctl(fd, TIOCSPGRP, new Uint8Array(new Int32Array([pgrp]).buffer), "ioctl(TIOCSPGRP)")
  );
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
    setForegroundGroup(this.terminal.fd, this.pgid);
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

  /**
   * Takes the terminal back for the tool, if the job has it, keeping the job's modes for its next
   * turn; then the tool's modes are set again.
   */
  giveBackTerminal(): void {
    const fd = this.terminal.fd;
    if (foregroundGroup(fd) === this.pgid) {
      this.#jobModes = readModes(fd) ?? this.#jobModes;
      try {
        setForegroundGroup(fd, this.terminal.pgrp);
      } catch { /* hung up */ }
    }
    if (this.#toolModes) setModes(fd, this.#toolModes);
    this.#toolModes = null;
  }

  /** Gives the terminal to the job, with its modes, if the tool's group has it. */
  #give(): void {
    if (foregroundGroup(this.terminal.fd) !== this.terminal.pgrp) return;
    this.#setJobModes();
    try {
      setForegroundGroup(this.terminal.fd, this.pgid);
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
        if (!stopped) this.#give();
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
      this.#give();
      this.#continue();
      return true;
    }
    this.giveBackTerminal();
    const withTool = !groupOrphaned(this.terminal.pgrp);
    onStop?.({ signal, withTool });
    if (!withTool) return false; // the job waits for a SIGCONT from elsewhere
    // Returns once the shell continues the tool: the stop is taken on the way out of kill.
    kill(Deno.pid, signal === SIG.SIGSTOP ? SIG.SIGTSTP : signal);
    this.#give(); // `fg` gave the tool the terminal; `bg` did not
    this.#continue();
    return true;
  }

  #continue(): void {
    try {
      kill(-this.pgid, SIG.SIGCONT);
    } catch { /* it ended meanwhile: the next wait says so */ }
  }
}
