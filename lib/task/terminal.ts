/**
 * The controlling terminal of a process: which terminal it was, whether the process was its
 * foreground job, and the terminal's modes and window size, for a restore as a shell job
 * (lib/restore/shell_job.ts). The descriptors open on it are device files (lib/files/device.ts).
 */
import {
  AT_FDCWD,
  close,
  DEV_TTY,
  fstat,
  O,
  open,
  tcgetattr,
  tcgetwinsize,
  TTY_IOCTL,
} from "../../ffi/mod.ts";
import type { DeviceEntry } from "../files/device.ts";
import { foregroundOf, ptyOfSession } from "../files/pty.ts";
import { ptySlavePath } from "../files/pty_names.ts";
import type { Injector } from "../ptrace/inject.ts";
import type {
  FileEntry,
  ProcessEntry,
  TerminalEntry,
  TerminalModes,
  WindowSize,
} from "../image/schema.ts";
import type { ProcStat } from "../inspect/process.ts";

/**
 * Whether two device numbers name the same device. `tty_nr` (the kernel's new_encode_dev) and
 * `st_rdev` (glibc's makedev) encode major and minor the same way below 2^32, where ttys are.
 */
export function sameDevice(a: bigint | number, b: bigint | number): boolean {
  return BigInt(a) === BigInt(b);
}

function isTtyFile(f: FileEntry): f is DeviceEntry {
  return f.kind === "device" && (f as DeviceEntry).tty;
}

/** The terminal's modes, or null when they cannot be read (hung up, not a tty). */
export function readModes(fd: number): Uint8Array | null {
  try {
    return tcgetattr(fd);
  } catch {
    return null;
  }
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
    cc: [...raw.subarray(17)],
  };
}

function readWindowSize(fd: number): WindowSize | null {
  try {
    return tcgetwinsize(fd);
  } catch {
    return null;
  }
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

/** Runs `fn` with `path` open in the process being restored (no new controlling terminal). */
function withOpen(inj: Injector, path: string, fn: (fd: number) => void): void {
  const name = inj.put(new TextEncoder().encode(path + "\0"), 0);
  const fd = Number(inj.call("openat", AT_FDCWD, name, O.RDWR | O.NOCTTY, 0));
  try {
    fn(fd);
  } finally {
    inj.call("close", fd);
  }
}

/**
 * Right after a session leader is forked and leads its session again: it takes the pty its
 * session had as controlling terminal (made by lib/files/pty.ts for the restore `scope`), before
 * it forks the processes of its session, which inherit it.
 */
export function takeControllingPty(inj: Injector, p: ProcessEntry, scope: object): void {
  if (p.sid !== p.pid) return;
  const index = ptyOfSession(scope, p.pid);
  if (index === undefined) return;
  withOpen(inj, ptySlavePath(index), (fd) => inj.call("ioctl", fd, TTY_IOCTL.TIOCSCTTY, 0));
}

/**
 * Once every process of the restore exists: a session leader gives its pty to the foreground
 * process group it had (through /dev/tty, its controlling terminal now; its own group is in the
 * foreground until then, so the change raises no SIGTTOU).
 */
export function restoreForegroundGroup(inj: Injector, p: ProcessEntry, scope: object): void {
  if (p.sid !== p.pid) return;
  const index = ptyOfSession(scope, p.pid);
  if (index === undefined) return;
  const group = foregroundOf(scope, index);
  if (group === 0 || group === p.pgid) return;
  withOpen(inj, "/dev/tty", (fd) => {
    const arg = inj.put(new Uint8Array(new Int32Array([group]).buffer), 64);
    inj.call("ioctl", fd, TTY_IOCTL.TIOCSPGRP, arg);
  });
}
